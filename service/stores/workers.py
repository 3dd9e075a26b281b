"""`refit worker`s: which worker holds which job (a lease renewed by heartbeats), and the
workers themselves (for the fleet's metrics and alerts)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import sqlalchemy as sa

from service.stores.db import Database
from service.stores.jobs import Job, insert_job, new_job_id, to_job
from service.stores.schema import ACTIVE_STATES, INTERRUPTED, QUEUED, RUNNING, jobs, workers


class WorkerStore:
    def __init__(self, db: Database, job_store: Any) -> None:
        self.db = db
        self.jobs = job_store

    def claim_job(self, worker: str) -> Job | None:
        """Claim the next queued job whose model has no older active job (one running job
        per model across the fleet, in submit order within a model). Fair across models: the
        model whose last job started longest ago goes first, so one model's retrain storm
        cannot starve another (then the oldest job). PostgreSQL: `FOR UPDATE SKIP LOCKED`,
        so workers never wait on each other; SQLite: the write lock serialises them."""
        j = jobs.alias("j")
        o = jobs.alias("o")
        r = jobs.alias("r")
        last_start = (
            sa.select(sa.func.coalesce(sa.func.max(r.c.started_at), 0.0))
            .where(r.c.model == j.c.model)
            .scalar_subquery()
        )
        older = (
            sa.select(sa.literal(1))
            .select_from(o)
            .where(
                o.c.model == j.c.model,
                o.c.state.in_(ACTIVE_STATES),
                sa.or_(
                    o.c.created_at < j.c.created_at,
                    sa.and_(o.c.created_at == j.c.created_at, o.c.id < j.c.id),
                ),
            )
        )
        query = (
            sa.select(j.c.id)
            .where(j.c.state == QUEUED, ~older.exists())
            .order_by(last_start, j.c.created_at, j.c.id)
            .limit(1)
            .with_for_update(skip_locked=True, of=j)
        )
        now = time.time()
        with self.db.tx() as db:
            job_id = db.execute(query).scalar()
            if job_id is None:
                return None
            db.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                .values(
                    state=RUNNING,
                    worker=worker,
                    heartbeat_at=now,
                    started_at=now,
                    phase="validating",
                    pid=None,
                )
            )
        return self.jobs.get_job(job_id)

    def heartbeat(self, job_id: str, worker: str, pid: int | None = None) -> bool:
        """Renew a worker's hold on its job; False when it lost it (reaped, cancelled)."""
        with self.db.tx() as db:
            cur = db.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.state == RUNNING)
                .values(heartbeat_at=time.time(), **({"pid": pid} if pid is not None else {}))
            )
            return cur.rowcount == 1

    def holds(self, job_id: str, worker: str) -> bool:
        """Whether `worker` still holds `job_id` and nobody asked to cancel it."""
        with self.db.read() as db:
            row = db.execute(
                sa.select(jobs.c.state, jobs.c.worker, jobs.c.cancel_requested).where(
                    jobs.c.id == job_id
                )
            ).first()
        return bool(row and row[0] == RUNNING and row[1] == worker and not row[2])

    def reap(
        self,
        *,
        timeout_s: float,
        retries: int,
        now: float | None = None,
        job_id: str | None = None,
    ) -> list[str]:
        """Jobs whose worker stopped heartbeating become `interrupted`; each is queued again
        (a new job in its place in line, `retry_of` set) while it has retries left."""
        now = time.time() if now is None else now
        reaped = []
        with self.db.tx() as db:
            stale = db.execute(
                sa.select(jobs)
                .where(
                    jobs.c.state == RUNNING,
                    jobs.c.worker.is_not(None),
                    jobs.c.heartbeat_at < now - timeout_s,
                    *([jobs.c.id == job_id] if job_id else []),
                )
                .with_for_update(skip_locked=True)
            ).mappings()
            for row in [to_job(r) for r in stale]:
                age = now - (row.heartbeat_at or now)
                error = (
                    f"worker {row.worker} stopped heartbeating {age:.0f} s ago during {row.phase};"
                    " nothing was published"
                )
                retry = row.attempt <= retries and not row.cancel_requested
                new_id = new_job_id()
                if retry:
                    error += f"; retried as job {new_id}"
                else:
                    error += f"; retry it with POST /jobs/{row.id}/retry"
                db.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == row.id, jobs.c.state == RUNNING)
                    .values(state=INTERRUPTED, finished_at=now, error=error)
                )
                if retry:
                    insert_job(
                        db,
                        id=new_id,
                        model=row.model,
                        request={**row.request, "retry_of": row.id},
                        batch_id=row.batch_id,
                        created_at=row.created_at,  # keeps its place in line
                        source=(row.request.get("trigger") and "trigger") or "http",
                        attempt=row.attempt + 1,
                    )
                reaped.append(row.id)
        return reaped

    def worker_seen(self, worker: str, *, job_id: str | None, state: str) -> None:
        now = time.time()
        with self.db.tx() as db:
            db.execute(
                sa.text(
                    "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, job_id, state) "
                    "VALUES (:id, :host, :pid, :now, :now, :job, :state) ON CONFLICT (id) DO UPDATE "
                    "SET heartbeat_at=excluded.heartbeat_at, job_id=excluded.job_id,"
                    " state=excluded.state"
                ),
                {
                    "id": worker,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "now": now,
                    "job": job_id,
                    "state": state,
                },
            )

    def forget(self, ids: list[str], silent_since: float) -> int:
        """Delete these worker rows if they are still silent since `silent_since`."""
        if not ids:
            return 0
        with self.db.tx() as db:
            cur = db.execute(
                sa.delete(workers).where(
                    workers.c.id.in_(ids), workers.c.heartbeat_at < silent_since
                )
            )
            return cur.rowcount

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as db:
            rows = db.execute(sa.select(workers).order_by(workers.c.started_at)).mappings()
            return [dict(r) for r in rows]
