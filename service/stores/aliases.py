"""The aliases of every model (production, previous, shadow, canary): one row per model, the one
source of truth, moved by compare-and-set on a generation number so two promotions at the
same moment — on one machine or on two replicas — apply one after the other."""

from __future__ import annotations

import time

import sqlalchemy as sa

from service.stores.db import Database


class AliasTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, model: str) -> tuple[dict[str, str], int]:
        """`({"production": V, "previous": V, "shadow": V, "canary": V}, generation)`;
        generation 0: never set."""
        with self.db.read() as db:
            row = db.execute(
                sa.text(
                    "SELECT production, previous, shadow, canary, generation FROM aliases"
                    " WHERE model=:m"
                ),
                {"m": model},
            ).first()
        if row is None:
            return {}, 0
        found = {"production": row[0], "previous": row[1], "shadow": row[2], "canary": row[3]}
        return {k: v for k, v in found.items() if v}, int(row[4])

    def models(self) -> list[str]:
        """Every model with a production version (what the triggers watch)."""
        with self.db.read() as db:
            rows = db.execute(
                sa.text("SELECT model FROM aliases WHERE production IS NOT NULL ORDER BY model")
            ).all()
        return [r[0] for r in rows]

    def compare_and_set(self, model: str, expected: int, aliases: dict[str, str]) -> bool:
        """Write `aliases` if the generation is still `expected`; False if another writer
        moved them first (read again and retry)."""
        values = {
            "m": model,
            "p": aliases.get("production"),
            "v": aliases.get("previous"),
            "s": aliases.get("shadow"),
            "c": aliases.get("canary"),
            "g": expected,
            "now": time.time(),
        }
        with self.db.tx() as db:
            if expected == 0:
                cur = db.execute(
                    sa.text(
                        "INSERT INTO aliases (model, production, previous, shadow, canary,"
                        " generation, updated_at) VALUES (:m, :p, :v, :s, :c, 1, :now)"
                        " ON CONFLICT (model) DO NOTHING"
                    ),
                    values,
                )
            else:
                cur = db.execute(
                    sa.text(
                        "UPDATE aliases SET production=:p, previous=:v, shadow=:s, canary=:c,"
                        " generation=generation+1, updated_at=:now"
                        " WHERE model=:m AND generation=:g"
                    ),
                    values,
                )
            return cur.rowcount == 1
