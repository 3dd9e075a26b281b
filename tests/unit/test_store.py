from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from service.stores import Store, StoreUnavailable


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "refit.sqlite")


def test_append_builds_on_replace_and_latest_label_wins(store: Store) -> None:
    store.jobs.create_job("m", {}, [("a", "x"), ("b", "y")], mode="append", source="t")
    store.jobs.create_job("m", {}, [("c", "x"), ("a", "z")], mode="append", source="t")
    assert store.examples.dataset("m") == [("b", "y"), ("c", "x"), ("a", "z")]
    third = store.jobs.create_job("m", {}, [("d", "x"), ("e", "y")], mode="replace", source="t")
    store.jobs.create_job("m", {}, [("f", "y")], mode="append", source="t")
    assert store.examples.dataset("m") == [("d", "x"), ("e", "y"), ("f", "y")]
    # a job sees the data as of its own batch, not later submissions
    assert store.examples.dataset("m", upto_batch=third.batch_id) == [("d", "x"), ("e", "y")]
    assert store.examples.dataset("other") == []


def test_jobs_run_in_submit_order_one_at_a_time(store: Store) -> None:
    first = store.jobs.create_job("m", {"mode": "append"}, [("a", "x")], mode="append", source="t")
    second = store.jobs.create_job("m", {}, [("b", "x")], mode="append", source="t")
    assert store.jobs.next_in_line("m") == first.id
    store.jobs.mark_running(first.id, pid=1)
    store.jobs.set_progress(first.id, "training", 0.5, "epoch 1/2")
    job = store.jobs.get_job(first.id)
    assert (job.state, job.phase, job.fraction, job.message) == (
        "running",
        "training",
        0.5,
        "epoch 1/2",
    )
    store.jobs.finish(first.id, "succeeded", result={"version": "v1"})
    assert store.jobs.get_job(first.id).result == {"version": "v1"}
    assert store.jobs.get_job(first.id).phase == "done"
    assert store.jobs.next_in_line("m") == second.id
    store.jobs.finish(first.id, "failed", error="late")  # a final state is never overwritten
    assert store.jobs.get_job(first.id).state == "succeeded"


def test_failed_insert_stores_neither_examples_nor_job(store: Store) -> None:
    with pytest.raises(sa_exc.IntegrityError):
        store.jobs.create_job("m", {}, [("a", "x"), (None, "y")], mode="append", source="t")  # type: ignore[list-item]
    assert store.examples.example_count() == 0
    assert store.jobs.list_jobs() == []


def test_reconcile_marks_jobs_of_dead_owners_interrupted(store: Store) -> None:
    alive = store.jobs.create_job("m", {}, [("a", "x")], mode="append", source="t", owner_pid=10)
    dead_queued = store.jobs.create_job(
        "m", {}, [("b", "x")], mode="append", source="t", owner_pid=11
    )
    dead_running = store.jobs.create_job(
        "n", {}, [("c", "x")], mode="append", source="t", owner_pid=10
    )
    store.jobs.mark_running(dead_running.id, pid=12)
    interrupted = store.jobs.reconcile(owner_alive=lambda pid: pid == 10)
    assert sorted(interrupted) == sorted([dead_queued.id, dead_running.id])
    assert store.jobs.get_job(alive.id).state == "queued"
    job = store.jobs.get_job(dead_running.id)
    assert job.state == "interrupted"
    assert job.error == (
        "the service stopped before this job finished; nothing was published;"
        f" retry it with POST /jobs/{job.id}/retry"
    )


def test_cancel_flag(store: Store) -> None:
    job = store.jobs.create_job("m", {}, [("a", "x")], mode="append", source="t")
    assert not store.jobs.cancel_requested(job.id)
    assert store.jobs.request_cancel(job.id)
    assert store.jobs.cancel_requested(job.id)
    store.jobs.finish(job.id, "cancelled")
    assert not store.jobs.request_cancel(job.id)


def test_a_writer_locked_out_gets_store_busy_and_nothing_is_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite", busy_timeout_s=0.3)
    holder = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match=r"stayed locked by another writer for 0.3 s"):
            store.jobs.create_job("m", {}, [("a", "x"), ("b", "y")], mode="append", source="t")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.examples.example_count() == 0 and store.jobs.list_jobs() == []
    job = store.jobs.create_job("m", {}, [("a", "x"), ("b", "y")], mode="append", source="t")
    assert store.examples.example_count() == 2 and store.jobs.get_job(job.id).state == "queued"


def test_retry_runs_the_same_request_on_the_same_data(store: Store) -> None:
    first = store.jobs.create_job(
        "m", {"strategy": "auto"}, [("a", "x"), ("b", "y")], mode="replace", source="t"
    )
    store.jobs.create_job("m", {}, [("c", "x")], mode="append", source="t")  # newer data
    store.jobs.finish(first.id, "interrupted", error="killed")
    retry = store.jobs.retry_job(store.jobs.get_job(first.id), owner_pid=7)
    assert retry.id != first.id and retry.state == "queued"
    assert retry.request == {"strategy": "auto", "retry_of": first.id}
    assert retry.batch_id == first.batch_id
    assert store.examples.dataset("m", upto_batch=retry.batch_id) == [("a", "x"), ("b", "y")]
    assert store.examples.example_count() == 3


def test_a_worker_silent_past_worker_forget_s_is_aged_out_and_its_gauge_cleared(
    store: Store,
) -> None:
    import math
    import time
    from types import SimpleNamespace

    from service import metrics
    from service.monitor import Monitor
    from service.settings import Settings

    store.workers.worker_seen("alive", job_id=None, state="idle")
    store.workers.worker_seen("dead", job_id=None, state="idle")
    with store.db.tx() as db:  # "dead" last beat two hours ago
        db.execute(
            sa.text("UPDATE workers SET heartbeat_at=:t WHERE id='dead'"),
            {"t": time.time() - 7200},
        )
    ctx = SimpleNamespace(store=store, settings=Settings(worker_forget_s=3600))
    Monitor(ctx, runner=None).fleet_metrics()
    assert [w["id"] for w in store.workers.list()] == ["alive"]
    assert math.isnan(metrics.WORKER_HEARTBEAT_AGE.labels("dead")._value.get())
    assert metrics.WORKER_HEARTBEAT_AGE.labels("alive")._value.get() < 60
