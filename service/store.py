"""Durable state shared by every worker, replica, trainer and `refit worker`: one database.

`REFIT_DATABASE_URL` picks it: SQLite in `$REFIT_HOME` (one node, the default) or PostgreSQL
(a fleet). The schema is versioned by Alembic (`service/migrations/`); opening a store
migrates it to the current revision.

- `examples` in `batches`: every accepted labeled example; a `replace` batch starts a new
  dataset, an `append` batch adds to the current one.
- `jobs`: one row per retrain job with its phase, progress, result and error, the worker that
  claimed it and its heartbeat (BentoML's task store is not a durable history).
- `aliases`: production/previous per model with a generation number for compare-and-set.
- `traffic`, `uncertain`: live label counts (drift) and low-confidence inputs, summed over
  every replica.

Every transaction is short. Read-then-write transactions that must not interleave across
processes (a trigger firing, a job being claimed, an alias moving) lock the model's row in
`model_locks` (`SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` already serialises them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from models import pid_alive
from service.database import display, make_engine, normalize_url, upgrade

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")


UNCERTAIN_KEPT = 1000  # rows of low-confidence inputs kept per model


@dataclass(frozen=True)
class RetrainPolicy:
    """When a model retrains by itself; every trigger needs new labeled examples."""

    min_pending: int = 200  # (a) this many new labeled examples; 0: off
    interval_s: float = 0.0  # (b) this long since the last successful job; 0: off
    drift_threshold: float = 0.2  # (c) label-distribution JS divergence at or above; 0: off
    backoff_s: float = 600.0  # after a failed automatic job; doubles per consecutive failure

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _job(row: Any) -> Job:
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


class StoreUnavailable(Exception):
    """The database could not be reached, or stayed locked: nothing was stored."""


StoreBusy = StoreUnavailable  # the name the single-node release used

_jobs = sa.table(
    "jobs",
    sa.column("id"),
    sa.column("model"),
    sa.column("state"),
    sa.column("created_at"),
    sa.column("worker"),
    sa.column("heartbeat_at"),
)
_locks = sa.table("model_locks", sa.column("model"))


def _q(sql: str) -> sa.TextClause:
    return sa.text(sql)


class Store:
    def __init__(
        self, url: str | Path, *, busy_timeout_s: float = 30.0, migrate: bool = True
    ) -> None:
        self.url = normalize_url(url)
        self.busy_timeout_s = busy_timeout_s
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.name = Path(self.url.database or "").name if self.sqlite else display(self.url)
        self.engine = make_engine(self.url, busy_timeout_s=busy_timeout_s)
        if migrate:
            with self._guard():
                upgrade(self.engine)

    @property
    def path(self) -> Path | None:
        """The SQLite file (None for a server database)."""
        return Path(self.url.database) if self.sqlite and self.url.database else None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            text = str(getattr(exc, "orig", None) or exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            if self.sqlite and ("locked" in text or "busy" in text):
                raise StoreUnavailable(
                    f"the job store {self.name} stayed locked by another writer for"
                    f" {self.busy_timeout_s:g} s ({first}); nothing was stored, retry later"
                ) from exc
            raise StoreUnavailable(
                f"the store {self.name} is unavailable ({first}); nothing was stored, retry later"
            ) from exc

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE)."""
        with (
            self._guard(),
            self.engine.connect().execution_options(write=True) as db,
            db.begin(),
        ):
            yield db

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._guard(), self.engine.connect() as db:
            yield db

    @staticmethod
    def _lock_model(db: sa.Connection, model: str) -> None:
        """Serialise read-then-write transactions about one model across processes."""
        db.execute(
            _q("INSERT INTO model_locks (model) VALUES (:m) ON CONFLICT (model) DO NOTHING"),
            {"m": model},
        )
        db.execute(sa.select(_locks.c.model).where(_locks.c.model == model).with_for_update())

    # -- examples --------------------------------------------------------------------------
    def dataset(self, model: str, *, upto_batch: int | None = None) -> list[tuple[str, str]]:
        """The current dataset: the latest `replace` batch and every batch after it.

        A text labeled twice keeps its latest label (a correction), in first-seen order.
        """
        limit = upto_batch if upto_batch is not None else 2**62
        with self._read() as db:
            start = db.execute(
                _q(
                    "SELECT COALESCE(MAX(id), 0) FROM batches "
                    "WHERE model=:m AND mode='replace' AND id<=:lim"
                ),
                {"m": model, "lim": limit},
            ).scalar_one()
            rows = db.execute(
                _q(
                    "SELECT e.text, e.label FROM examples e JOIN batches b ON e.batch_id=b.id "
                    "WHERE b.model=:m AND b.id>=:start AND b.id<=:lim ORDER BY e.id"
                ),
                {"m": model, "start": start, "lim": limit},
            ).all()
        latest: dict[str, str] = {}
        for text, label in rows:
            latest.pop(text, None)
            latest[text] = label
        return list(latest.items())

    def example_count(self) -> int:
        with self._read() as db:
            return int(db.execute(_q("SELECT COUNT(*) FROM examples")).scalar_one())

    @staticmethod
    def _add_batch(
        db: sa.Connection,
        model: str,
        examples,
        mode: str,
        source: str,
        job_id: str | None = None,
        now: float | None = None,
    ) -> int:
        batch_id = db.execute(
            _q(
                "INSERT INTO batches (model, mode, job_id, source, created_at) "
                "VALUES (:m, :mode, :job, :source, :at) RETURNING id"
            ),
            {
                "m": model,
                "mode": mode,
                "job": job_id,
                "source": source,
                "at": time.time() if now is None else now,
            },
        ).scalar_one()
        rows = [
            {"b": batch_id, "t": e[0], "l": e[1], "p": e[2] if len(e) > 2 else None}
            for e in examples
        ]
        if rows:
            db.execute(
                _q(
                    "INSERT INTO examples (batch_id, text, label, prediction_id) "
                    "VALUES (:b, :t, :l, :p)"
                ),
                rows,
            )
        return int(batch_id)

    @staticmethod
    def _insert_job(db: sa.Connection, **values: Any) -> None:
        values = {
            "pid": None,
            "source": "http",
            "attempt": 1,
            **values,
            "request": json.dumps(values["request"]),
        }
        db.execute(
            _q(
                "INSERT INTO jobs (id, model, state, request, batch_id, pid, created_at, source,"
                " attempt) VALUES (:id, :model, 'queued', :request, :batch_id, :pid,"
                " :created_at, :source, :attempt)"
            ),
            values,
        )

    # -- jobs ------------------------------------------------------------------------------
    def create_job(
        self,
        model: str,
        request: dict[str, Any],
        examples: Sequence[tuple[str, str]],
        *,
        mode: str,
        source: str,
        owner_pid: int | None = None,
    ) -> Job:
        """Store the examples and a queued job in one transaction: both or neither."""
        job_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self._tx() as db:
            batch_id = self._add_batch(db, model, examples, mode, source, job_id, now)
            self._insert_job(
                db,
                id=job_id,
                model=model,
                request=request,
                batch_id=batch_id,
                pid=owner_pid,
                created_at=now,
                source=source,
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    # -- feedback, triggers ----------------------------------------------------------------
    def add_examples(
        self,
        model: str,
        examples: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str | None]],
        *,
        mode: str,
        source: str,
    ) -> int:
        """Store a batch of examples without a job; returns its id."""
        with self._tx() as db:
            return self._add_batch(db, model, examples, mode, source)

    def add_feedback(
        self, model: str, examples: Sequence[tuple[str, str, str | None]]
    ) -> tuple[int, int]:
        """Labeled examples from users, pending until a job trains on them. Returns the
        batch id and how many examples are pending now."""
        with self._tx() as db:
            batch_id = self._add_batch(db, model, examples, "append", "feedback")
            pending = self._pending(db, model)
        return batch_id, pending

    @staticmethod
    def _pending(db: sa.Connection, model: str) -> int:
        """Feedback examples newer than the data of the last job that succeeded."""
        consumed = db.execute(
            _q("SELECT COALESCE(MAX(batch_id), 0) FROM jobs WHERE model=:m AND state='succeeded'"),
            {"m": model},
        ).scalar_one()
        return int(
            db.execute(
                _q(
                    "SELECT COUNT(*) FROM examples e JOIN batches b ON e.batch_id=b.id "
                    "WHERE b.model=:m AND b.source='feedback' AND b.id>:c"
                ),
                {"m": model, "c": consumed},
            ).scalar_one()
        )

    def trigger_state(self, model: str) -> dict[str, Any]:
        """What the triggers look at; all of it derived from durable rows, so it survives
        restarts and is the same on every replica."""
        with self._read() as db:
            return self._trigger_state(db, model)

    def _trigger_state(self, db: sa.Connection, model: str) -> dict[str, Any]:
        m = {"m": model}
        last_success = db.execute(
            _q("SELECT MAX(finished_at) FROM jobs WHERE model=:m AND state='succeeded'"), m
        ).scalar_one()
        failures, last_failure = 0, None
        for state, finished_at in db.execute(
            _q(
                "SELECT state, finished_at FROM jobs WHERE model=:m AND source='trigger' "
                "AND state NOT IN ('queued', 'running') ORDER BY created_at DESC, id DESC"
            ),
            m,
        ):
            if state == "succeeded":
                break
            failures += 1
            last_failure = last_failure or finished_at
        first_pending = db.execute(
            _q(
                "SELECT MIN(b.created_at) FROM batches b WHERE b.model=:m AND b.source='feedback' "
                "AND b.id > (SELECT COALESCE(MAX(batch_id), 0) FROM jobs WHERE model=:m"
                " AND state='succeeded')"
            ),
            m,
        ).scalar_one()
        active = db.execute(
            _q("SELECT id FROM jobs WHERE model=:m AND state IN ('queued', 'running') LIMIT 1"), m
        ).scalar()
        return {
            "pending": self._pending(db, model),
            "first_pending_at": first_pending,
            "last_success_at": last_success,
            "consecutive_failures": failures,
            "last_failure_at": last_failure,
            "active_job": active,
        }

    def maybe_trigger(
        self,
        model: str,
        policy: RetrainPolicy,
        *,
        drift: float | None = None,
        now: float | None = None,
        owner_pid: int | None = None,
    ) -> Job | None:
        """Queue an automatic retrain when a trigger fires; atomic (the model's row is locked),
        so concurrent callers — every worker of every replica polls — start one job."""
        now = time.time() if now is None else now
        with self._tx() as db:
            self._lock_model(db, model)
            state = self._trigger_state(db, model)
            fired = trigger_cause(policy, state, drift, now)
            if fired is None:
                return None
            kind, cause = fired
            job_id = uuid.uuid4().hex[:16]
            batch_id = self._add_batch(db, model, [], "append", "trigger", job_id, now)
            request = {
                "strategy": "auto",
                "mode": "append",
                "promote": "auto",
                "trigger": kind,
                "cause": cause,
                "pending": state["pending"],
            }
            self._insert_job(
                db,
                id=job_id,
                model=model,
                request=request,
                batch_id=batch_id,
                pid=owner_pid,
                created_at=now,
                source="trigger",
            )
        return self.get_job(job_id)

    # -- live traffic: drift statistics and low-confidence inputs ----------------------------
    def add_traffic(self, model: str, counts: dict[tuple[str, str], tuple[int, float]]) -> None:
        """Add `{(version, label): (count, confidence_sum)}` from one worker."""
        if not counts:
            return
        with self._tx() as db:
            db.execute(
                _q(
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
        with self._read() as db:
            rows = db.execute(
                _q(
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
        with self._tx() as db:
            db.execute(
                _q(
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
                _q(
                    "DELETE FROM uncertain WHERE model=:m AND id <= "
                    "(SELECT COALESCE(MAX(id), 0) FROM uncertain WHERE model=:m) - :keep"
                ),
                {"m": model, "keep": UNCERTAIN_KEPT},
            )

    def uncertain(self, model: str, limit: int) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(
                _q(
                    "SELECT version, label, score, text_sha256, text, created_at FROM uncertain "
                    "WHERE model=:m ORDER BY id DESC LIMIT :n"
                ),
                {"m": model, "n": limit},
            ).mappings()
            return [dict(r) for r in rows]

    def retry_job(self, job: Job, *, owner_pid: int | None = None) -> Job:
        """A new queued job with the same request on the same data as `job` (no new batch)."""
        new_id = uuid.uuid4().hex[:16]
        with self._tx() as db:
            self._insert_job(
                db,
                id=new_id,
                model=job.model,
                request={**job.request, "retry_of": job.id},
                batch_id=job.batch_id,
                pid=owner_pid,
                created_at=time.time(),
            )
        retried = self.get_job(new_id)
        assert retried is not None
        return retried

    def get_job(self, job_id: str) -> Job | None:
        with self._read() as db:
            row = db.execute(_q("SELECT * FROM jobs WHERE id=:id"), {"id": job_id}).mappings()
            first = row.first()
        return _job(first) if first else None

    def list_jobs(self, model: str | None = None, limit: int = 50) -> list[Job]:
        with self._read() as db:
            if model is None:
                rows = db.execute(
                    _q("SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT :n"),
                    {"n": limit},
                )
            else:
                rows = db.execute(
                    _q(
                        "SELECT * FROM jobs WHERE model=:m ORDER BY created_at DESC, id DESC"
                        " LIMIT :n"
                    ),
                    {"m": model, "n": limit},
                )
            return [_job(r) for r in rows.mappings()]

    def next_in_line(self, model: str) -> str | None:
        """The oldest active job of a model: jobs run one at a time, in submit order."""
        with self._read() as db:
            return db.execute(
                _q(
                    "SELECT id FROM jobs WHERE model=:m AND state IN ('queued', 'running') "
                    "ORDER BY created_at, id LIMIT 1"
                ),
                {"m": model},
            ).scalar()

    def mark_running(self, job_id: str, pid: int) -> None:
        with self._tx() as db:
            db.execute(
                _q(
                    "UPDATE jobs SET state='running', pid=:pid, started_at=:now, phase='validating' "
                    "WHERE id=:id AND state='queued'"
                ),
                {"pid": pid, "now": time.time(), "id": job_id},
            )

    def set_progress(self, job_id: str, phase: str, fraction: float, message: str) -> None:
        with self._tx() as db:
            db.execute(
                _q(
                    "UPDATE jobs SET phase=:p, fraction=:f, message=:msg "
                    "WHERE id=:id AND state='running'"
                ),
                {"p": phase, "f": fraction, "msg": message, "id": job_id},
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
        with self._tx() as db:
            cur = db.execute(
                _q(
                    "UPDATE jobs SET state=:s, result=:r, error=:e, finished_at=:now, "
                    "phase=CASE WHEN :s='succeeded' THEN 'done' ELSE phase END, "
                    "fraction=CASE WHEN :s='succeeded' THEN 1.0 ELSE fraction END "
                    "WHERE id=:id AND state IN ('queued', 'running')"
                    + (" AND worker=:w" if worker is not None else "")
                ),
                {
                    "s": state,
                    "r": json.dumps(result) if result is not None else None,
                    "e": error,
                    "now": time.time(),
                    "id": job_id,
                    "w": worker,
                },
            )
            return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                _q(
                    "UPDATE jobs SET cancel_requested=1 WHERE id=:id AND state IN ('queued', 'running')"
                ),
                {"id": job_id},
            )
            return cur.rowcount == 1

    def cancel_requested(self, job_id: str) -> bool:
        with self._read() as db:
            return bool(
                db.execute(
                    _q("SELECT cancel_requested FROM jobs WHERE id=:id"), {"id": job_id}
                ).scalar()
            )

    def reconcile(self, *, owner_alive=pid_alive) -> list[str]:
        """Mark active jobs of the embedded trainer whose owner died as interrupted.

        The owner is the worker that queued the job until the trainer starts, then the
        trainer process; after a restart no old owner is alive. Jobs held by a `refit worker`
        are left to `reap` (their pids belong to other hosts).
        """
        interrupted = []
        with self._tx() as db:
            rows = db.execute(
                _q(
                    "SELECT id, pid FROM jobs WHERE state IN ('queued', 'running') AND worker IS NULL"
                )
            ).all()
            for job_id, pid in rows:
                if owner_alive(pid):
                    continue
                db.execute(
                    _q(
                        "UPDATE jobs SET state='interrupted', finished_at=:now, error=:e WHERE id=:id"
                    ),
                    {
                        "now": time.time(),
                        "e": "the service stopped before this job finished; nothing was published;"
                        f" retry it with POST /jobs/{job_id}/retry",
                        "id": job_id,
                    },
                )
                interrupted.append(job_id)
        return interrupted

    # -- served predictions, linked to feedback by id ----------------------------------------
    def add_predictions(self, rows: Sequence[tuple[Any, ...]], *, keep: int) -> None:
        """`(id, model, version, label, score, created_at[, shadow_version, shadow_label,
        shadow_score])` of served predictions (the shadow's answer when one scored it); only
        the newest `keep` rows are kept (a bounded window, whatever the traffic)."""
        if not rows:
            return
        with self._tx() as db:
            db.execute(
                _q(
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
                _q(
                    "DELETE FROM predictions WHERE seq <= "
                    "(SELECT COALESCE(MAX(seq), 0) FROM predictions) - :keep"
                ),
                {"keep": keep},
            )

    def shadow_report(self, model: str, production: str, shadow: str) -> dict[str, Any]:
        """Production and shadow side by side on the same served predictions (the window):
        how many the shadow scored, how often it agreed, and — on those with linked
        feedback — how many each got right."""
        with self._read() as db:
            scored, agreed = db.execute(
                _q(
                    "SELECT COUNT(*), SUM(CASE WHEN label = shadow_label THEN 1 ELSE 0 END)"
                    " FROM predictions WHERE model=:m AND version=:p AND shadow_version=:s"
                ),
                {"m": model, "p": production, "s": shadow},
            ).one()
            labeled, prod_ok, shadow_ok = db.execute(
                _q(
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

    def delete_model(self, model: str) -> dict[str, int]:
        """Everything stored about `model` (examples, jobs, traffic, predictions, aliases,
        overrides) in one transaction; StoreBusy-free: the caller checked no job runs.
        Returns the rows removed per table."""
        m = {"m": model}
        removed: dict[str, int] = {}
        with self._tx() as db:
            removed["examples"] = db.execute(
                _q(
                    "DELETE FROM examples WHERE batch_id IN (SELECT id FROM batches WHERE model=:m)"
                ),
                m,
            ).rowcount
            for table in (
                "batches",
                "jobs",
                "traffic",
                "uncertain",
                "predictions",
                "model_settings",
                "model_locks",
                "aliases",
            ):
                removed[table] = db.execute(_q(f"DELETE FROM {table} WHERE model=:m"), m).rowcount
        return removed

    def model_settings(self, model: str) -> dict[str, Any]:
        """The overrides stored for `model` (only the keys that were set)."""
        with self._read() as db:
            raw = db.execute(
                _q("SELECT settings FROM model_settings WHERE model=:m"), {"m": model}
            ).scalar()
        return json.loads(raw) if raw else {}

    def set_model_settings(self, model: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` into the overrides of `model` (a None value removes the key);
        returns the overrides now stored."""
        with self._tx() as db:
            raw = db.execute(
                _q("SELECT settings FROM model_settings WHERE model=:m"), {"m": model}
            ).scalar()
            current = json.loads(raw) if raw else {}
            current.update(changes)
            current = {k: v for k, v in current.items() if v is not None}
            db.execute(
                _q(
                    "INSERT INTO model_settings (model, settings, updated_at) VALUES (:m, :s, :t)"
                    " ON CONFLICT (model) DO UPDATE SET settings=excluded.settings,"
                    " updated_at=excluded.updated_at"
                ),
                {"m": model, "s": json.dumps(current, sort_keys=True), "t": time.time()},
            )
        return current

    def shadow_decision(self, model: str) -> dict[str, Any] | None:
        """The last decision about a shadow version (promoted or dropped), if any."""
        with self._read() as db:
            raw = db.execute(
                _q("SELECT shadow_decision FROM aliases WHERE model=:m"), {"m": model}
            ).scalar()
        return json.loads(raw) if raw else None

    def record_shadow_decision(self, model: str, decision: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                _q("UPDATE aliases SET shadow_decision=:d WHERE model=:m"),
                {"m": model, "d": json.dumps(decision)},
            )

    def live_accuracy(self, model: str) -> dict[str, dict[str, Any]]:
        """Per served version: feedback examples linked to a served prediction by its id,
        and how many of those predictions the label confirms."""
        with self._read() as db:
            rows = db.execute(
                _q(
                    "SELECT p.version, COUNT(*), SUM(CASE WHEN p.label = e.label THEN 1 ELSE 0 END)"
                    " FROM examples e JOIN batches b ON e.batch_id = b.id"
                    " JOIN predictions p ON p.id = e.prediction_id"
                    " WHERE b.model = :m AND b.source = 'feedback' AND p.model = :m"
                    " GROUP BY p.version"
                ),
                {"m": model},
            ).all()
        return {
            version: {"labeled": int(n), "correct": int(k), "accuracy": round(int(k) / int(n), 4)}
            for version, n, k in rows
        }

    # -- trainer workers (REFIT_TRAINER=external) -------------------------------------------
    def claim_job(self, worker: str) -> Job | None:
        """Claim the oldest queued job whose model has no older active job (one running job
        per model across the fleet, in submit order). PostgreSQL: `FOR UPDATE SKIP LOCKED`,
        so workers never wait on each other; SQLite: the write lock serialises them."""
        j = _jobs.alias("j")
        o = _jobs.alias("o")
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
            .where(j.c.state == "queued", ~older.exists())
            .order_by(j.c.created_at, j.c.id)
            .limit(1)
            .with_for_update(skip_locked=True, of=j)
        )
        now = time.time()
        with self._tx() as db:
            job_id = db.execute(query).scalar()
            if job_id is None:
                return None
            db.execute(
                _q(
                    "UPDATE jobs SET state='running', worker=:w, heartbeat_at=:now, started_at=:now,"
                    " phase='validating', pid=NULL WHERE id=:id AND state='queued'"
                ),
                {"w": worker, "now": now, "id": job_id},
            )
        return self.get_job(job_id)

    def heartbeat(self, job_id: str, worker: str, pid: int | None = None) -> bool:
        """Renew a worker's hold on its job; False when it lost it (reaped, cancelled)."""
        with self._tx() as db:
            cur = db.execute(
                _q(
                    "UPDATE jobs SET heartbeat_at=:now, pid=COALESCE(:pid, pid) "
                    "WHERE id=:id AND worker=:w AND state='running'"
                ),
                {"now": time.time(), "pid": pid, "id": job_id, "w": worker},
            )
            return cur.rowcount == 1

    def holds(self, job_id: str, worker: str) -> bool:
        """Whether `worker` still holds `job_id` and nobody asked to cancel it."""
        with self._read() as db:
            row = db.execute(
                _q("SELECT state, worker, cancel_requested FROM jobs WHERE id=:id"),
                {"id": job_id},
            ).first()
        return bool(row and row[0] == "running" and row[1] == worker and not row[2])

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
        with self._tx() as db:
            stale = db.execute(
                sa.select(sa.text("*"))
                .select_from(_jobs)
                .where(
                    _jobs.c.state == "running",
                    _jobs.c.worker.is_not(None),
                    _jobs.c.heartbeat_at < now - timeout_s,
                    *([_jobs.c.id == job_id] if job_id else []),
                )
                .with_for_update(skip_locked=True)
            ).mappings()
            for row in [_job(r) for r in stale]:
                age = now - (row.heartbeat_at or now)
                error = (
                    f"worker {row.worker} stopped heartbeating {age:.0f} s ago during {row.phase};"
                    " nothing was published"
                )
                retry = row.attempt <= retries and not row.cancel_requested
                if retry:
                    new_id = uuid.uuid4().hex[:16]
                    error += f"; retried as job {new_id}"
                else:
                    error += f"; retry it with POST /jobs/{row.id}/retry"
                db.execute(
                    _q(
                        "UPDATE jobs SET state='interrupted', finished_at=:now, error=:e "
                        "WHERE id=:id AND state='running'"
                    ),
                    {"now": now, "e": error, "id": row.id},
                )
                if retry:
                    self._insert_job(
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
        with self._tx() as db:
            db.execute(
                _q(
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

    def workers(self) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = db.execute(_q("SELECT * FROM workers ORDER BY started_at")).mappings()
            return [dict(r) for r in rows]

    # -- aliases: one source of truth, compare-and-set ----------------------------------------
    def aliases(self, model: str) -> tuple[dict[str, str], int]:
        """`({"production": V, "previous": V, "shadow": V}, generation)`; generation 0:
        never set."""
        with self._read() as db:
            row = db.execute(
                _q("SELECT production, previous, shadow, generation FROM aliases WHERE model=:m"),
                {"m": model},
            ).first()
        if row is None:
            return {}, 0
        found = {"production": row[0], "previous": row[1], "shadow": row[2]}
        return {k: v for k, v in found.items() if v}, int(row[3])

    def alias_generation(self, model: str) -> int:
        with self._read() as db:
            return int(
                db.execute(
                    _q("SELECT generation FROM aliases WHERE model=:m"), {"m": model}
                ).scalar()
                or 0
            )

    def set_aliases(self, model: str, expected: int, aliases: dict[str, str]) -> bool:
        """Write `aliases` if the generation is still `expected`; False if another writer
        moved them first (read again and retry)."""
        values = {
            "m": model,
            "p": aliases.get("production"),
            "v": aliases.get("previous"),
            "s": aliases.get("shadow"),
            "g": expected,
            "now": time.time(),
        }
        with self._tx() as db:
            if expected == 0:
                cur = db.execute(
                    _q(
                        "INSERT INTO aliases (model, production, previous, shadow, generation,"
                        " updated_at) VALUES (:m, :p, :v, :s, 1, :now)"
                        " ON CONFLICT (model) DO NOTHING"
                    ),
                    values,
                )
            else:
                cur = db.execute(
                    _q(
                        "UPDATE aliases SET production=:p, previous=:v, shadow=:s,"
                        " generation=generation+1, updated_at=:now"
                        " WHERE model=:m AND generation=:g"
                    ),
                    values,
                )
            return cur.rowcount == 1


def trigger_cause(
    policy: RetrainPolicy, state: dict[str, Any], drift: float | None, now: float
) -> tuple[str, str] | None:
    """Why an automatic retrain should start now, or None. Pure: the unit tests' subject."""
    pending = state["pending"]
    if pending == 0 or state["active_job"] is not None:
        return None
    failures = state["consecutive_failures"]
    if failures and state["last_failure_at"] is not None:
        wait = policy.backoff_s * 2 ** (failures - 1)
        if now < state["last_failure_at"] + wait:
            return None
    if policy.min_pending and pending >= policy.min_pending:
        return "pending", f"{pending} new labeled examples pending (threshold {policy.min_pending})"
    if policy.interval_s:
        since = state["last_success_at"] or state["first_pending_at"]
        if since is not None and now - since >= policy.interval_s:
            return (
                "schedule",
                f"{now - since:.0f} s since the last retrain (interval {policy.interval_s:g} s), {pending} new examples",
            )
    if policy.drift_threshold and drift is not None and drift >= policy.drift_threshold:
        return (
            "drift",
            f"label distribution JS divergence {drift:.3f} >= {policy.drift_threshold:g}, {pending} new examples",
        )
    return None
