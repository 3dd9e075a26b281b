"""Labeled examples, in batches: every accepted example; a `replace` batch starts a new
dataset, an `append` batch adds to the current one. Feedback is an append batch that stays
pending until a job that succeeded trained on it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from service.stores.db import Database
from service.stores.schema import SUCCEEDED, batches, examples, jobs


class ExampleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def dataset(self, model: str, *, upto_batch: int | None = None) -> list[tuple[str, str]]:
        """The current dataset: the latest `replace` batch and every batch after it.

        A text labeled twice keeps its latest label (a correction), in first-seen order.
        """
        limit = upto_batch if upto_batch is not None else 2**62
        with self.db.read() as db:
            start = db.execute(
                sa.select(sa.func.coalesce(sa.func.max(batches.c.id), 0)).where(
                    batches.c.model == model, batches.c.mode == "replace", batches.c.id <= limit
                )
            ).scalar_one()
            rows = db.execute(
                sa.select(examples.c.text, examples.c.label)
                .join(batches, examples.c.batch_id == batches.c.id)
                .where(batches.c.model == model, batches.c.id >= start, batches.c.id <= limit)
                .order_by(examples.c.id)
            ).all()
        latest: dict[str, str] = {}
        for text, label in rows:
            latest.pop(text, None)
            latest[text] = label
        return list(latest.items())

    def feedback_since(self, model: str, texts: Sequence[str], since: float) -> dict[str, str]:
        """The latest feedback label of each of `texts` stored after `since`."""
        if not texts:
            return {}
        with self.db.read() as db:
            rows = db.execute(
                sa.select(examples.c.text, examples.c.label)
                .join(batches, examples.c.batch_id == batches.c.id)
                .where(
                    batches.c.model == model,
                    batches.c.source == "feedback",
                    batches.c.created_at > since,
                    examples.c.text.in_(list(texts)),
                )
                .order_by(examples.c.id)
            ).all()
        return dict(rows)

    def example_count(self) -> int:
        with self.db.read() as db:
            return int(db.execute(sa.select(sa.func.count()).select_from(examples)).scalar_one())

    def add_examples(
        self,
        model: str,
        rows: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str | None]],
        *,
        mode: str,
        source: str,
    ) -> int:
        """Store a batch of examples without a job; returns its id."""
        with self.db.tx() as db:
            return add_batch(db, model, rows, mode, source)

    def add_feedback(
        self, model: str, rows: Sequence[tuple[str, str, str | None]]
    ) -> tuple[int, int]:
        """Labeled examples from users, pending until a job trains on them. Returns the
        batch id and how many examples are pending now."""
        with self.db.tx() as db:
            batch_id = add_batch(db, model, rows, "append", "feedback")
            return batch_id, pending(db, model)


def add_batch(
    db: sa.Connection,
    model: str,
    rows: Sequence[Any],
    mode: str,
    source: str,
    job_id: str | None = None,
    now: float | None = None,
) -> int:
    """One batch and its `(text, label[, prediction_id])` rows, inside the caller's transaction."""
    batch_id = db.execute(
        sa.insert(batches)
        .values(
            model=model,
            mode=mode,
            job_id=job_id,
            source=source,
            created_at=time.time() if now is None else now,
        )
        .returning(batches.c.id)
    ).scalar_one()
    values = [
        {
            "batch_id": batch_id,
            "text": e[0],
            "label": e[1],
            "prediction_id": e[2] if len(e) > 2 else None,
        }
        for e in rows
    ]
    if values:
        db.execute(sa.insert(examples), values)
    return int(batch_id)


def consumed_batch(model: str) -> sa.ScalarSelect:
    """The newest batch a job that succeeded trained on (0: none)."""
    return (
        sa.select(sa.func.coalesce(sa.func.max(jobs.c.batch_id), 0))
        .where(jobs.c.model == model, jobs.c.state == SUCCEEDED)
        .scalar_subquery()
    )


def pending(db: sa.Connection, model: str) -> int:
    """Feedback examples newer than the data of the last job that succeeded."""
    return int(
        db.execute(
            sa.select(sa.func.count())
            .select_from(examples.join(batches, examples.c.batch_id == batches.c.id))
            .where(
                batches.c.model == model,
                batches.c.source == "feedback",
                batches.c.id > consumed_batch(model),
            )
        ).scalar_one()
    )
