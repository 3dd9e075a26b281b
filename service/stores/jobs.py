"""Retrain jobs: one row per job with its phase, progress, result and error (BentoML's task
store is not a durable history). Jobs of one model run one at a time, in submit order."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from models import pid_alive
from service.stores.db import Database
from service.stores.examples import add_batch
from service.stores.schema import (
    ACTIVE_STATES,
    FINAL_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    jobs,
)


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    state: str
    request: dict[str, Any]
    batch_id: int | None
    phase: str
    fraction: float
    message: str
    result: dict[str, Any] | None
    error: str | None
    pid: int | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None = None
    heartbeat_at: float | None = None
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state,
            "phase": self.phase,
            "fraction": round(self.fraction, 4),
            "message": self.message,
            "request": self.request,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker": self.worker,
            "attempt": self.attempt,
        }


def to_job(row: Any) -> Job:
    return Job(
        id=row["id"],
        model=row["model"],
        state=row["state"],
        request=json.loads(row["request"]),
        batch_id=row["batch_id"],
        phase=row["phase"],
        fraction=row["fraction"],
        message=row["message"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        pid=row["pid"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker=row["worker"],
        heartbeat_at=row["heartbeat_at"],
        attempt=row["attempt"],
    )


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def insert_job(db: sa.Connection, **values: Any) -> None:
    """A queued job, inside the caller's transaction."""
    row = {"pid": None, "source": "http", "attempt": 1, **values, "state": QUEUED}
    row["request"] = json.dumps(values["request"])
    db.execute(sa.insert(jobs).values(**row))


def queue_with_batch(
    db: sa.Connection,
    model: str,
    request: dict[str, Any],
    rows: Sequence[tuple[str, str]],
    *,
    mode: str,
    source: str,
    owner_pid: int | None = None,
    now: float | None = None,
) -> str:
    """A batch of examples (maybe none) and the queued job that trains on it, inside the
    caller's transaction; returns the job's id."""
    job_id = new_job_id()
    now = time.time() if now is None else now
    batch_id = add_batch(db, model, rows, mode, source, job_id, now)
    insert_job(
        db,
        id=job_id,
        model=model,
        request=request,
        batch_id=batch_id,
        pid=owner_pid,
        created_at=now,
        source=source,
    )
    return job_id


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_job(
        self,
        model: str,
        request: dict[str, Any],
        rows: Sequence[tuple[str, str]],
        *,
        mode: str,
        source: str,
        owner_pid: int | None = None,
    ) -> Job:
        """Store the examples and a queued job in one transaction: both or neither."""
        with self.db.tx() as db:
            job_id = queue_with_batch(
                db, model, request, rows, mode=mode, source=source, owner_pid=owner_pid
            )
        return self._get(job_id)

    def create_task(self, model: str, request: dict[str, Any], *, owner_pid: int | None) -> Job:
        """A queued job that trains on nothing (batch scoring): no examples batch, so it
        never counts as having consumed the model's pending feedback."""
        job_id = new_job_id()
        with self.db.tx() as db:
            insert_job(
                db,
                id=job_id,
                model=model,
                request=request,
                batch_id=None,
                pid=owner_pid,
                created_at=time.time(),
            )
        return self._get(job_id)

    def retry_job(self, job: Job, *, owner_pid: int | None = None) -> Job:
        """A new queued job with the same request on the same data as `job` (no new batch)."""
        new_id = new_job_id()
        with self.db.tx() as db:
            insert_job(
                db,
                id=new_id,
                model=job.model,
                request={**job.request, "retry_of": job.id},
                batch_id=job.batch_id,
                pid=owner_pid,
                created_at=time.time(),
            )
        return self._get(new_id)

    def get_job(self, job_id: str) -> Job | None:
        with self.db.read() as db:
            row = db.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return to_job(row) if row else None

    def _get(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        assert job is not None
        return job

    def list_jobs(self, model: str | None = None, limit: int = 50) -> list[Job]:
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(jobs.c.model == model)
        with self.db.read() as db:
            return [to_job(r) for r in db.execute(query).mappings()]

    def next_in_line(self, model: str) -> str | None:
        """The oldest active job of a model: jobs run one at a time, in submit order."""
        with self.db.read() as db:
            return db.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.model == model, jobs.c.state.in_(ACTIVE_STATES))
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
            ).scalar()

    def mark_running(self, job_id: str, pid: int) -> None:
        with self.db.tx() as db:
            db.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                .values(state=RUNNING, pid=pid, started_at=time.time(), phase="validating")
            )

    def set_progress(self, job_id: str, phase: str, fraction: float, message: str) -> None:
        with self.db.tx() as db:
            db.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == RUNNING)
                .values(phase=phase, fraction=fraction, message=message)
            )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        worker: str | None = None,
    ) -> bool:
        """Record a final state; with `worker`, only while that worker still holds the job.
        False when the job was already final (or another worker holds it)."""
        if state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")
        done = state == SUCCEEDED
        query = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE_STATES))
            .values(
                state=state,
                result=json.dumps(result) if result is not None else None,
                error=error,
                finished_at=time.time(),
                **({"phase": "done", "fraction": 1.0} if done else {}),
            )
        )
        if worker is not None:
            query = query.where(jobs.c.worker == worker)
        with self.db.tx() as db:
            return db.execute(query).rowcount == 1

    def request_cancel(self, job_id: str) -> bool:
        with self.db.tx() as db:
            cur = db.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE_STATES))
                .values(cancel_requested=1)
            )
            return cur.rowcount == 1

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.read() as db:
            return bool(
                db.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
            )

    def reconcile(self, *, owner_alive=pid_alive) -> list[str]:
        """Mark active jobs of the embedded trainer whose owner died as interrupted.

        The owner is the worker that queued the job until the trainer starts, then the
        trainer process; after a restart no old owner is alive. Jobs held by a `refit worker`
        are left to `reap` (their pids belong to other hosts).
        """
        interrupted = []
        with self.db.tx() as db:
            rows = db.execute(
                sa.select(jobs.c.id, jobs.c.pid).where(
                    jobs.c.state.in_(ACTIVE_STATES), jobs.c.worker.is_(None)
                )
            ).all()
            for job_id, pid in rows:
                if owner_alive(pid):
                    continue
                db.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        state=INTERRUPTED,
                        finished_at=time.time(),
                        error="the service stopped before this job finished; nothing was"
                        f" published; retry it with POST /jobs/{job_id}/retry",
                    )
                )
                interrupted.append(job_id)
        return interrupted
