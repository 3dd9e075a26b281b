"""Live traffic, summed over every worker and replica: label counts and confidence per
served version (drift), low-confidence inputs, a bounded window of served predictions
(linked to feedback by id: live accuracy, shadow judging) and the last shadow decision."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from service.stores.db import Database

UNCERTAIN_KEPT = 1000  # rows of low-confidence inputs kept per model


_DECISIONS = {"shadow": "shadow_decision", "canary": "canary_decision"}  # fixed names


class TelemetryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_traffic(self, model: str, counts: dict[tuple[str, str], tuple[int, float]]) -> None:
        """Add `{(version, label): (count, confidence_sum)}` from one worker."""
        if not counts:
            return
        with self.db.tx() as db:
            db.execute(
                sa.text(
                    "INSERT INTO traffic (model, version, label, count, confidence_sum) "
                    "VALUES (:m, :v, :l, :n, :c) ON CONFLICT (model, version, label) DO UPDATE "
                    "SET count=traffic.count+excluded.count, "
                    "confidence_sum=traffic.confidence_sum+excluded.confidence_sum"
                ),
                [
                    {"m": model, "v": v, "l": label, "n": n, "c": c}
                    for (v, label), (n, c) in counts.items()
                ],
            )

    def traffic(self, model: str, version: str) -> tuple[dict[str, int], float]:
        with self.db.read() as db:
            rows = db.execute(
                sa.text(
                    "SELECT label, count, confidence_sum FROM traffic WHERE model=:m AND version=:v"
                ),
                {"m": model, "v": version},
            ).all()
        return {r[0]: int(r[1]) for r in rows}, float(sum(r[2] for r in rows))

    def add_uncertain(
        self, model: str, rows: Sequence[tuple[str, str, float, str, float]], *, keep_text: bool
    ) -> None:
        """`(version, label, score, text, created_at)` rows; the text itself only with
        `keep_text` (an operator's choice), its sha256 always. Keeps the newest rows."""
        if not rows:
            return
        with self.db.tx() as db:
            db.execute(
                sa.text(
                    "INSERT INTO uncertain (model, version, label, score, text_sha256, text,"
                    " created_at) VALUES (:m, :v, :l, :s, :h, :t, :at)"
                ),
                [
                    {
                        "m": model,
                        "v": v,
                        "l": label,
                        "s": score,
                        "h": hashlib.sha256(text.encode()).hexdigest(),
                        "t": text if keep_text else None,
                        "at": at,
                    }
                    for v, label, score, text, at in rows
                ],
            )
            db.execute(
                sa.text(
                    "DELETE FROM uncertain WHERE model=:m AND id <= "
                    "(SELECT COALESCE(MAX(id), 0) FROM uncertain WHERE model=:m) - :keep"
                ),
                {"m": model, "keep": UNCERTAIN_KEPT},
            )

    def uncertain(
        self, model: str, limit: int, *, out_of_scope_label: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest inputs worth a label, those answered `out_of_scope_label` first."""
        with self.db.read() as db:
            rows = db.execute(
                sa.text(
                    "SELECT version, label, score, text_sha256, text, created_at FROM uncertain "
                    "WHERE model=:m ORDER BY CASE WHEN label=:oos THEN 0 ELSE 1 END, id DESC"
                    " LIMIT :n"
                ),
                {"m": model, "n": limit, "oos": out_of_scope_label},
            ).mappings()
            return [
                {
                    **r,
                    "out_of_scope": out_of_scope_label is not None
                    and r["label"] == out_of_scope_label,
                }
                for r in rows
            ]

    def add_predictions(self, rows: Sequence[tuple[Any, ...]], *, keep: int) -> None:
        """`(id, model, version, label, score, created_at[, shadow_version, shadow_label,
        shadow_score])` of served predictions (the shadow's answer when one scored it); only
        the newest `keep` rows are kept (a bounded window, whatever the traffic)."""
        if not rows:
            return
        with self.db.tx() as db:
            db.execute(
                sa.text(
                    "INSERT INTO predictions (id, model, version, label, score, created_at,"
                    " shadow_version, shadow_label, shadow_score)"
                    " VALUES (:id, :m, :v, :l, :s, :at, :sv, :sl, :ss) ON CONFLICT (id) DO NOTHING"
                ),
                [
                    {
                        "id": row[0],
                        "m": row[1],
                        "v": row[2],
                        "l": row[3],
                        "s": row[4],
                        "at": row[5],
                        "sv": row[6] if len(row) > 6 else None,
                        "sl": row[7] if len(row) > 6 else None,
                        "ss": row[8] if len(row) > 6 else None,
                    }
                    for row in rows
                ],
            )
            db.execute(
                sa.text(
                    "DELETE FROM predictions WHERE seq <= "
                    "(SELECT COALESCE(MAX(seq), 0) FROM predictions) - :keep"
                ),
                {"keep": keep},
            )

    def shadow_report(self, model: str, production: str, shadow: str) -> dict[str, Any]:
        """Production and shadow side by side on the same served predictions (the window):
        how many the shadow scored, how often it agreed, and — on those with linked
        feedback — how many each got right."""
        with self.db.read() as db:
            scored, agreed = db.execute(
                sa.text(
                    "SELECT COUNT(*), SUM(CASE WHEN label = shadow_label THEN 1 ELSE 0 END)"
                    " FROM predictions WHERE model=:m AND version=:p AND shadow_version=:s"
                ),
                {"m": model, "p": production, "s": shadow},
            ).one()
            labeled, prod_ok, shadow_ok = db.execute(
                sa.text(
                    "SELECT COUNT(*), SUM(CASE WHEN p.label = e.label THEN 1 ELSE 0 END),"
                    " SUM(CASE WHEN p.shadow_label = e.label THEN 1 ELSE 0 END)"
                    " FROM examples e JOIN batches b ON e.batch_id = b.id"
                    " JOIN predictions p ON p.id = e.prediction_id"
                    " WHERE b.model = :m AND b.source = 'feedback' AND p.model = :m"
                    " AND p.version = :p AND p.shadow_version = :s"
                ),
                {"m": model, "p": production, "s": shadow},
            ).one()
        scored, labeled = int(scored or 0), int(labeled or 0)
        return {
            "scored": scored,
            "agreement": round(int(agreed or 0) / scored, 4) if scored else None,
            "labeled": labeled,
            "production_correct": int(prod_ok or 0),
            "shadow_correct": int(shadow_ok or 0),
            "production_accuracy": round(int(prod_ok or 0) / labeled, 4) if labeled else None,
            "shadow_accuracy": round(int(shadow_ok or 0) / labeled, 4) if labeled else None,
        }

    def first_served(self, model: str, version: str) -> float | None:
        """When `version` answered first within the kept window of predictions."""
        with self.db.read() as db:
            first = db.execute(
                sa.text("SELECT MIN(created_at) FROM predictions WHERE model=:m AND version=:v"),
                {"m": model, "v": version},
            ).scalar()
        return float(first) if first is not None else None

    def shadow_decision(self, model: str, alias: str = "shadow") -> dict[str, Any] | None:
        """The last decision about a shadow (or canary) version, if any."""
        column = _DECISIONS[alias]
        with self.db.read() as db:
            raw = db.execute(
                sa.text(f"SELECT {column} FROM aliases WHERE model=:m"), {"m": model}
            ).scalar()
        return json.loads(raw) if raw else None

    def record_shadow_decision(
        self, model: str, decision: dict[str, Any], alias: str = "shadow"
    ) -> None:
        column = _DECISIONS[alias]
        with self.db.tx() as db:
            db.execute(
                sa.text(f"UPDATE aliases SET {column}=:d WHERE model=:m"),
                {"m": model, "d": json.dumps(decision)},
            )

    def live_accuracy(self, model: str, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Per served version: feedback examples linked to a served prediction by its id
        (served at `since` or later), and how many of those predictions the label confirms."""
        with self.db.read() as db:
            rows = db.execute(
                sa.text(
                    "SELECT p.version, COUNT(*), SUM(CASE WHEN p.label = e.label THEN 1 ELSE 0 END)"
                    " FROM examples e JOIN batches b ON e.batch_id = b.id"
                    " JOIN predictions p ON p.id = e.prediction_id"
                    " WHERE b.model = :m AND b.source = 'feedback' AND p.model = :m"
                    " AND p.created_at >= :since GROUP BY p.version"
                ),
                {"m": model, "since": since or 0.0},
            ).all()
        return {
            version: {"labeled": int(n), "correct": int(k), "accuracy": round(int(k) / int(n), 4)}
            for version, n, k in rows
        }
