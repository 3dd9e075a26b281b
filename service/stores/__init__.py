"""Durable state shared by every worker, replica, trainer and `refit worker`: one database,
one store per domain on its one engine.

`REFIT_DATABASE_URL` picks it: SQLite in `$REFIT_HOME` (one node, the default) or PostgreSQL
(a fleet); the same code serves both. The schema is `schema.metadata`, versioned by Alembic
(`service/migrations/`); opening a store migrates it to the current revision.

- `store.examples`: labeled examples in batches (`examples.py`)
- `store.jobs`: retrain jobs and their progress (`jobs.py`)
- `store.workers`: which `refit worker` holds which job, and the workers (`workers.py`)
- `store.triggers`: the state automatic retrains are decided on (`triggers.py`)
- `store.telemetry`: live traffic, low-confidence inputs, served predictions (`telemetry.py`)
- `store.aliases`: production/previous/shadow per model, compare-and-set (`aliases.py`)
- `store.model_settings`: per-model overrides of REFIT_* settings (`model_settings.py`)
- `store.queue`: the labeling queue, leases and answers (`queue.py`)

Every transaction is short. Read-then-write transactions that must not interleave across
processes (a trigger firing, a job being claimed, an alias moving) lock the model's row in
`model_locks` (`SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` already serialises them).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from service.stores.aliases import AliasTable
from service.stores.db import Database, StoreUnavailable
from service.stores.examples import ExampleStore
from service.stores.jobs import Job, JobStore
from service.stores.model_settings import ModelSettingsStore
from service.stores.queue import QueueStore
from service.stores.schema import ACTIVE_STATES, FINAL_STATES, batches, examples, metadata
from service.stores.telemetry import TelemetryStore
from service.stores.triggers import TriggerStore
from service.stores.workers import WorkerStore

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "Job", "Store", "StoreUnavailable"]


class Store:
    """The domain stores on one database."""

    def __init__(
        self, url: str | Path, *, busy_timeout_s: float = 30.0, migrate: bool = True
    ) -> None:
        self.db = Database(url, busy_timeout_s=busy_timeout_s, migrate=migrate)
        self.engine, self.name = self.db.engine, self.db.name
        self.examples = ExampleStore(self.db)
        self.jobs = JobStore(self.db)
        self.workers = WorkerStore(self.db, self.jobs)
        self.triggers = TriggerStore(self.db, self.jobs)
        self.telemetry = TelemetryStore(self.db)
        self.aliases = AliasTable(self.db)
        self.model_settings = ModelSettingsStore(self.db)
        self.queue = QueueStore(self.db)

    def delete_model(self, model: str) -> dict[str, int]:
        """Everything stored about `model` (examples, jobs, traffic, predictions, aliases,
        overrides) in one transaction; the caller checked that no job runs. Returns the
        rows removed per table."""
        removed: dict[str, int] = {}
        of_model = sa.select(batches.c.id).where(batches.c.model == model)
        with self.db.tx() as db:
            removed["examples"] = db.execute(
                sa.delete(examples).where(examples.c.batch_id.in_(of_model))
            ).rowcount
            for name in (
                "batches",
                "jobs",
                "traffic",
                "uncertain",
                "predictions",
                "model_settings",
                "queue",
                "model_locks",
                "aliases",
            ):
                table = metadata.tables[name]
                removed[name] = db.execute(sa.delete(table).where(table.c.model == model)).rowcount
        return removed
