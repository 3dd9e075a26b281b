"""What the automatic-retrain triggers look at, derived from durable rows (it survives
restarts and is the same on every replica), and the atomic "start a job if a trigger fires"
that every worker of every replica may call at once."""

from __future__ import annotations

import time
from typing import Any, Protocol

import sqlalchemy as sa

from service.stores.db import Database, lock_model
from service.stores.examples import consumed_batch, pending
from service.stores.jobs import Job, queue_with_batch
from service.stores.schema import ACTIVE_STATES, SUCCEEDED, batches, jobs


class Policy(Protocol):
    def fires(
        self, state: dict[str, Any], drift: float | None, now: float
    ) -> tuple[str, str] | None: ...


class TriggerStore:
    def __init__(self, db: Database, job_store: Any) -> None:
        self.db = db
        self.jobs = job_store

    def trigger_state(self, model: str) -> dict[str, Any]:
        with self.db.read() as db:
            return _state(db, model)

    def maybe_trigger(
        self,
        model: str,
        policy: Policy,
        *,
        drift: float | None = None,
        now: float | None = None,
        owner_pid: int | None = None,
    ) -> Job | None:
        """Queue an automatic retrain when `policy` fires; atomic (the model's row is locked),
        so concurrent callers — every worker of every replica polls — start one job."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            lock_model(db, model)
            state = _state(db, model)
            fired = policy.fires(state, drift, now)
            if fired is None:
                return None
            kind, cause = fired
            request = {
                "strategy": "auto",
                "mode": "append",
                "promote": "auto",
                "trigger": kind,
                "cause": cause,
                "pending": state["pending"],
            }
            job_id = queue_with_batch(
                db,
                model,
                request,
                [],
                mode="append",
                source="trigger",
                owner_pid=owner_pid,
                now=now,
            )
        return self.jobs.get_job(job_id)


def _state(db: sa.Connection, model: str) -> dict[str, Any]:
    last_success = db.execute(
        sa.select(sa.func.max(jobs.c.finished_at)).where(
            jobs.c.model == model,
            jobs.c.state == SUCCEEDED,
            jobs.c.batch_id.is_not(None),  # a retrain (a batch-scoring job trains on nothing)
        )
    ).scalar_one()
    failures, last_failure = 0, None
    for state, finished_at in db.execute(
        sa.select(jobs.c.state, jobs.c.finished_at)
        .where(
            jobs.c.model == model,
            jobs.c.source == "trigger",
            jobs.c.state.not_in(ACTIVE_STATES),
        )
        .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
    ):
        if state == SUCCEEDED:
            break
        failures += 1
        last_failure = last_failure or finished_at
    first_pending = db.execute(
        sa.select(sa.func.min(batches.c.created_at)).where(
            batches.c.model == model,
            batches.c.source == "feedback",
            batches.c.id > consumed_batch(model),
        )
    ).scalar_one()
    active = db.execute(
        sa.select(jobs.c.id).where(jobs.c.model == model, jobs.c.state.in_(ACTIVE_STATES)).limit(1)
    ).scalar()
    return {
        "pending": pending(db, model),
        "first_pending_at": first_pending,
        "last_success_at": last_success,
        "consecutive_failures": failures,
        "last_failure_at": last_failure,
        "active_job": active,
    }
