"""Durable state shared by every worker and the trainer process: one SQLite file.

- `examples`: every accepted labeled example, in batches; a `replace` batch starts a new
  dataset, an `append` batch adds to the current one.
- `jobs`: one row per retrain job with its phase, progress, result and error, so that job
  history survives restarts (BentoML's task store is not a durable history).

Writers use short transactions in WAL mode; readers never block writers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import pid_alive

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('append', 'replace')),
    job_id TEXT,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id INTEGER NOT NULL REFERENCES batches(id),
    text TEXT NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_batch ON examples(batch_id);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    batch_id INTEGER,
    phase TEXT NOT NULL DEFAULT 'queued',
    fraction REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    source TEXT NOT NULL DEFAULT 'http'
);
CREATE INDEX IF NOT EXISTS jobs_model_state ON jobs(model, state);
CREATE TABLE IF NOT EXISTS traffic (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    label TEXT NOT NULL,
    count INTEGER NOT NULL,
    confidence_sum REAL NOT NULL,
    PRIMARY KEY (model, version, label)
);
CREATE TABLE IF NOT EXISTS uncertain (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    text_sha256 TEXT NOT NULL,
    text TEXT,
    created_at REAL NOT NULL
);
"""

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
        }


def _job(row: sqlite3.Row) -> Job:
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
    )


class StoreBusy(Exception):
    """Another writer held the store's lock for longer than the busy timeout."""


class Store:
    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard(), closing(self._connect()) as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(examples)")}
            if "prediction_id" not in columns:  # stores created before feedback existed
                db.execute("ALTER TABLE examples ADD COLUMN prediction_id TEXT")
            if "source" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                db.execute("ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'http'")

    def _connect(self) -> sqlite3.Connection:
        # SQLite's busy handler retries a locked write until the timeout, then gives up.
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreBusy(
                    f"the job store {self.path.name} stayed locked by another writer for"
                    f" {self.busy_timeout_s:g} s ({text}); nothing was stored, retry later"
                ) from exc
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._guard(), closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- examples --------------------------------------------------------------------------
    def dataset(self, model: str, *, upto_batch: int | None = None) -> list[tuple[str, str]]:
        """The current dataset: the latest `replace` batch and every batch after it.

        A text labeled twice keeps its latest label (a correction), in first-seen order.
        """
        with closing(self._connect()) as db:
            limit = upto_batch if upto_batch is not None else 2**62
            start = db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM batches WHERE model=? AND mode='replace' AND id<=?",
                (model, limit),
            ).fetchone()[0]
            rows = db.execute(
                "SELECT e.text, e.label FROM examples e JOIN batches b ON e.batch_id=b.id "
                "WHERE b.model=? AND b.id>=? AND b.id<=? ORDER BY e.id",
                (model, start, limit),
            ).fetchall()
        latest: dict[str, str] = {}
        for text, label in rows:
            latest.pop(text, None)
            latest[text] = label
        return list(latest.items())

    def example_count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM examples").fetchone()[0])

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
            cur = db.execute(
                "INSERT INTO batches (model, mode, job_id, source, created_at) VALUES (?, ?, ?, ?, ?)",
                (model, mode, job_id, source, now),
            )
            batch_id = cur.lastrowid
            db.executemany(
                "INSERT INTO examples (batch_id, text, label) VALUES (?, ?, ?)",
                [(batch_id, t, label) for t, label in examples],
            )
            db.execute(
                "INSERT INTO jobs (id, model, state, request, batch_id, pid, created_at, source) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, model, json.dumps(request), batch_id, owner_pid, now, source),
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

    @staticmethod
    def _add_batch(db: sqlite3.Connection, model: str, examples, mode: str, source: str) -> int:
        cur = db.execute(
            "INSERT INTO batches (model, mode, job_id, source, created_at) VALUES (?, ?, NULL, ?, ?)",
            (model, mode, source, time.time()),
        )
        batch_id = cur.lastrowid
        assert batch_id is not None
        db.executemany(
            "INSERT INTO examples (batch_id, text, label, prediction_id) VALUES (?, ?, ?, ?)",
            [(batch_id, e[0], e[1], e[2] if len(e) > 2 else None) for e in examples],
        )
        return batch_id

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
    def _pending(db: sqlite3.Connection, model: str) -> int:
        """Feedback examples newer than the data of the last job that succeeded."""
        consumed = db.execute(
            "SELECT COALESCE(MAX(batch_id), 0) FROM jobs WHERE model=? AND state='succeeded'",
            (model,),
        ).fetchone()[0]
        return int(
            db.execute(
                "SELECT COUNT(*) FROM examples e JOIN batches b ON e.batch_id=b.id "
                "WHERE b.model=? AND b.source='feedback' AND b.id>?",
                (model, consumed),
            ).fetchone()[0]
        )

    def trigger_state(self, model: str) -> dict[str, Any]:
        """What the triggers look at; all of it derived from durable rows, so it survives
        restarts."""
        with closing(self._connect()) as db:
            return self._trigger_state(db, model)

    def _trigger_state(self, db: sqlite3.Connection, model: str) -> dict[str, Any]:
        last_success = db.execute(
            "SELECT MAX(finished_at) FROM jobs WHERE model=? AND state='succeeded'", (model,)
        ).fetchone()[0]
        failures, last_failure = 0, None
        for row in db.execute(
            "SELECT state, finished_at FROM jobs WHERE model=? AND source='trigger' "
            "AND state NOT IN ('queued', 'running') ORDER BY created_at DESC, rowid DESC",
            (model,),
        ):
            if row["state"] == "succeeded":
                break
            failures += 1
            last_failure = last_failure or row["finished_at"]
        first_pending = db.execute(
            "SELECT MIN(b.created_at) FROM batches b WHERE b.model=? AND b.source='feedback' "
            "AND b.id > (SELECT COALESCE(MAX(batch_id), 0) FROM jobs WHERE model=? AND state='succeeded')",
            (model, model),
        ).fetchone()[0]
        active = db.execute(
            "SELECT id FROM jobs WHERE model=? AND state IN ('queued', 'running') LIMIT 1",
            (model,),
        ).fetchone()
        return {
            "pending": self._pending(db, model),
            "first_pending_at": first_pending,
            "last_success_at": last_success,
            "consecutive_failures": failures,
            "last_failure_at": last_failure,
            "active_job": active[0] if active else None,
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
        """Queue an automatic retrain when a trigger fires; atomic, so concurrent callers
        (every inference worker polls) never start two jobs for one model."""
        now = time.time() if now is None else now
        with self._tx() as db:
            state = self._trigger_state(db, model)
            fired = trigger_cause(policy, state, drift, now)
            if fired is None:
                return None
            kind, cause = fired
            job_id = uuid.uuid4().hex[:16]
            cur = db.execute(
                "INSERT INTO batches (model, mode, job_id, source, created_at) VALUES (?, 'append', ?, 'trigger', ?)",
                (model, job_id, now),
            )
            request = {
                "strategy": "auto",
                "mode": "append",
                "promote": "auto",
                "trigger": kind,
                "cause": cause,
                "pending": state["pending"],
            }
            db.execute(
                "INSERT INTO jobs (id, model, state, request, batch_id, pid, created_at, source) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, 'trigger')",
                (job_id, model, json.dumps(request), cur.lastrowid, owner_pid, now),
            )
        return self.get_job(job_id)

    # -- live traffic: drift statistics and low-confidence inputs ----------------------------
    def add_traffic(self, model: str, counts: dict[tuple[str, str], tuple[int, float]]) -> None:
        """Add `{(version, label): (count, confidence_sum)}` from one worker."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO traffic (model, version, label, count, confidence_sum) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (model, version, label) DO UPDATE SET count=count+excluded.count, "
                "confidence_sum=confidence_sum+excluded.confidence_sum",
                [(model, v, label, n, c) for (v, label), (n, c) in counts.items()],
            )

    def traffic(self, model: str, version: str) -> tuple[dict[str, int], float]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT label, count, confidence_sum FROM traffic WHERE model=? AND version=?",
                (model, version),
            ).fetchall()
        return {r["label"]: r["count"] for r in rows}, float(sum(r["confidence_sum"] for r in rows))

    def add_uncertain(
        self, model: str, rows: Sequence[tuple[str, str, float, str, float]], *, keep_text: bool
    ) -> None:
        """`(version, label, score, text, created_at)` rows; the text itself only with
        `keep_text` (an operator's choice), its sha256 always. Keeps the newest rows."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO uncertain (model, version, label, score, text_sha256, text, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        model,
                        v,
                        label,
                        score,
                        hashlib.sha256(text.encode()).hexdigest(),
                        text if keep_text else None,
                        at,
                    )
                    for v, label, score, text, at in rows
                ],
            )
            db.execute(
                "DELETE FROM uncertain WHERE model=? AND id <= "
                "(SELECT COALESCE(MAX(id), 0) FROM uncertain WHERE model=?) - ?",
                (model, model, UNCERTAIN_KEPT),
            )

    def uncertain(self, model: str, limit: int) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT version, label, score, text_sha256, text, created_at FROM uncertain "
                "WHERE model=? ORDER BY id DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        return [dict(r) for r in rows]

    def retry_job(self, job: Job, *, owner_pid: int | None = None) -> Job:
        """A new queued job with the same request on the same data as `job` (no new batch)."""
        new_id = uuid.uuid4().hex[:16]
        request = {**job.request, "retry_of": job.id}
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, model, state, request, batch_id, pid, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (new_id, job.model, json.dumps(request), job.batch_id, owner_pid, time.time()),
            )
        retried = self.get_job(new_id)
        assert retried is not None
        return retried

    def get_job(self, job_id: str) -> Job | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, model: str | None = None, limit: int = 50) -> list[Job]:
        with closing(self._connect()) as db:
            if model is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
            else:
                rows = db.execute(
                    "SELECT * FROM jobs WHERE model=? ORDER BY created_at DESC LIMIT ?",
                    (model, limit),
                )
            return [_job(r) for r in rows.fetchall()]

    def next_in_line(self, model: str) -> str | None:
        """The oldest active job of a model: jobs run one at a time, in submit order."""
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE model=? AND state IN ('queued', 'running') "
                "ORDER BY created_at, rowid LIMIT 1",
                (model,),
            ).fetchone()
        return row[0] if row else None

    def mark_running(self, job_id: str, pid: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state='running', pid=?, started_at=?, phase='validating' WHERE id=? AND state='queued'",
                (pid, time.time(), job_id),
            )

    def set_progress(self, job_id: str, phase: str, fraction: float, message: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET phase=?, fraction=?, message=? WHERE id=? AND state='running'",
                (phase, fraction, message, job_id),
            )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state=?, result=?, error=?, finished_at=?, "
                "phase=CASE WHEN ?='succeeded' THEN 'done' ELSE phase END, "
                "fraction=CASE WHEN ?='succeeded' THEN 1.0 ELSE fraction END "
                "WHERE id=? AND state IN ('queued', 'running')",
                (
                    state,
                    json.dumps(result) if result is not None else None,
                    error,
                    time.time(),
                    state,
                    state,
                    job_id,
                ),
            )

    def request_cancel(self, job_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET cancel_requested=1 WHERE id=? AND state IN ('queued', 'running')",
                (job_id,),
            )
            return cur.rowcount == 1

    def cancel_requested(self, job_id: str) -> bool:
        with closing(self._connect()) as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def reconcile(self, *, owner_alive=pid_alive) -> list[str]:
        """Mark active jobs whose owner died as interrupted.

        The owner is the worker that queued the job until the trainer starts, then the
        trainer process; after a restart no old owner is alive.
        """
        interrupted = []
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, state, pid FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
            for row in rows:
                if owner_alive(row["pid"]):
                    continue
                db.execute(
                    "UPDATE jobs SET state='interrupted', finished_at=?, error=? WHERE id=?",
                    (
                        time.time(),
                        "the service stopped before this job finished; nothing was published;"
                        f" retry it with POST /jobs/{row['id']}/retry",
                        row["id"],
                    ),
                )
                interrupted.append(row["id"])
        return interrupted


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
