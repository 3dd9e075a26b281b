"""Per-model overrides of REFIT_* settings (`PUT /models/{name}/settings`), shared by every
replica and trainer."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from service.stores.db import Database


class ModelSettingsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, model: str) -> dict[str, Any]:
        """The overrides stored for `model` (only the keys that were set)."""
        with self.db.read() as db:
            raw = db.execute(
                sa.text("SELECT settings FROM model_settings WHERE model=:m"), {"m": model}
            ).scalar()
        return json.loads(raw) if raw else {}

    def update(self, model: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` into the overrides of `model` (a None value removes the key);
        returns the overrides now stored."""
        with self.db.tx() as db:
            raw = db.execute(
                sa.text("SELECT settings FROM model_settings WHERE model=:m"), {"m": model}
            ).scalar()
            current = json.loads(raw) if raw else {}
            current.update(changes)
            current = {k: v for k, v in current.items() if v is not None}
            db.execute(
                sa.text(
                    "INSERT INTO model_settings (model, settings, updated_at) VALUES (:m, :s, :t)"
                    " ON CONFLICT (model) DO UPDATE SET settings=excluded.settings,"
                    " updated_at=excluded.updated_at"
                ),
                {"m": model, "s": json.dumps(current, sort_keys=True), "t": time.time()},
            )
        return current
