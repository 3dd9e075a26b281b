"""The store and the registry behave the same on every backend: SQLite and PostgreSQL, a
folder and S3 (real servers from conftest); migrations upgrade an old home in place."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from models import CorruptVersionError, Registry, RegistryError, VersionNotFoundError
from models._s3 import S3Storage
from service.database import current_revision, head_revision
from service.settings import Settings
from service.state import open_state
from service.stores import Store, StoreUnavailable
from service.triggers import RetrainPolicy
from tests.conftest import REPO
from tests.unit.test_registry import make_metadata

FIXTURE_HOME = REPO / "tests" / "fixtures" / "home-v0.1"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'refit.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


def publish(registry: Registry, name: str = "m", payload: bytes = b"onnx") -> str:
    staging = registry.stage(name)
    (staging.path / "model.onnx").write_bytes(payload)
    (staging.path / "tokenizer.json").write_text("{}")
    return registry.publish(staging, make_metadata(name, staging.version)).version


# -- store ---------------------------------------------------------------------------------
def test_an_empty_database_is_migrated_on_open_and_by_refit_db_upgrade(postgres, tmp_path) -> None:
    url = postgres.new_database()
    cli = [sys.executable, "-m", "service.cli", "--database-url", url, "--home", str(tmp_path)]
    current = subprocess.run([*cli, "db", "current"], capture_output=True, text=True, cwd=REPO)
    assert current.returncode == 1 and "revision none" in current.stdout
    upgraded = subprocess.run([*cli, "db", "upgrade"], capture_output=True, text=True, cwd=REPO)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"empty -> {head_revision()}" in upgraded.stdout
    again = subprocess.run([*cli, "db", "upgrade"], capture_output=True, text=True, cwd=REPO)
    assert f"{head_revision()} -> {head_revision()}" in again.stdout
    fresh = postgres.new_database()
    store = Store(fresh)  # a service's first start
    assert current_revision(store.engine) == head_revision()
    assert store.jobs.list_jobs() == []


def test_a_home_from_the_previous_release_upgrades_in_place(tmp_path) -> None:
    home = tmp_path / "home"
    shutil.copytree(FIXTURE_HOME, home)
    old = sqlite3.connect(home / "refit.sqlite")
    before = {
        t: old.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        for t in ("batches", "examples", "jobs", "traffic", "uncertain")
    }
    old.close()
    old_aliases = json.loads((home / "default" / "aliases.json").read_text())

    store, registry = open_state(Settings(home=home))

    assert current_revision(store.engine) == head_revision()
    db = sqlite3.connect(home / "refit.sqlite")
    for table, rows in before.items():
        columns = len(rows[0]) if rows else 0
        after = [r[:columns] for r in db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()]
        assert after == rows, table  # nothing lost, nothing changed
    db.close()
    assert registry.aliases("default") == old_aliases
    assert not (home / "default" / "aliases.json").exists()
    assert (home / "default" / "aliases.json.imported").exists()
    assert registry.list_versions("default") == sorted(old_aliases.values())
    jobs = {j.state for j in store.jobs.list_jobs()}
    assert jobs == {"succeeded", "failed"}
    assert store.triggers.trigger_state("default")["pending"] == 2  # the feedback survived
    assert store.telemetry.traffic("default", old_aliases["production"])[0] == {"a": 7, "b": 3}
    # and it works on: a rollback moves the imported aliases
    assert registry.rollback("default")["production"] == old_aliases["previous"]


def test_model_settings_merge_and_clear_per_model(db_url) -> None:
    store = Store(db_url)
    assert store.model_settings.get("a") == {}
    assert store.model_settings.update("a", {"fine_tuning_at": 32, "drift_threshold": 0.1}) == {
        "drift_threshold": 0.1,
        "fine_tuning_at": 32,
    }
    # a later change merges; None goes back to the service-wide value
    store.model_settings.update("a", {"drift_threshold": None, "promotion_tolerance": 0.01})
    assert Store(db_url).model_settings.get("a") == {
        "fine_tuning_at": 32,
        "promotion_tolerance": 0.01,
    }
    assert store.model_settings.get("b") == {}  # per model


def test_claims_are_one_per_model_in_submit_order(db_url) -> None:
    store = Store(db_url)
    a1 = store.jobs.create_job("a", {}, [("x", "1")], mode="append", source="http")
    a2 = store.jobs.create_job("a", {}, [("y", "1")], mode="append", source="http")
    b1 = store.jobs.create_job("b", {}, [("z", "1")], mode="append", source="http")
    first = store.workers.claim_job("w1")
    second = store.workers.claim_job("w2")
    assert (first.id, second.id) == (a1.id, b1.id)  # a2 waits for a1
    assert store.workers.claim_job("w3") is None
    assert first.state == "running" and first.worker == "w1"
    assert store.jobs.finish(a1.id, "succeeded", result={}, worker="w1")
    assert store.workers.claim_job("w3").id == a2.id


def test_one_models_retrain_storm_does_not_starve_another(db_url) -> None:
    store = Store(db_url)
    storm = [
        store.jobs.create_job("a", {}, [(f"x{i}", "1")], mode="append", source="http")
        for i in range(4)
    ]
    b1 = store.jobs.create_job("b", {}, [("z", "1")], mode="append", source="http")
    ran = []
    while (job := store.workers.claim_job("w1")) is not None:  # one worker
        ran.append(job.id)
        assert store.jobs.finish(job.id, "succeeded", result={}, worker="w1")
        time.sleep(0.01)  # distinct start times
    assert ran == [storm[0].id, b1.id, *(j.id for j in storm[1:])]


def test_a_silent_worker_is_reaped_and_its_job_retried_once(db_url) -> None:
    store = Store(db_url)
    job = store.jobs.create_job(
        "a", {"strategy": "auto"}, [("x", "1")], mode="append", source="http"
    )
    assert store.workers.claim_job("w1").id == job.id
    assert store.workers.heartbeat(job.id, "w1")
    assert store.workers.reap(timeout_s=30, retries=1) == []  # fresh heartbeat
    assert store.workers.reap(timeout_s=30, retries=1, now=time.time() + 60) == [job.id]
    old = store.jobs.get_job(job.id)
    assert old.state == "interrupted" and "stopped heartbeating" in old.error
    assert not store.workers.heartbeat(job.id, "w1")  # the old worker lost it
    assert not store.jobs.finish(job.id, "succeeded", result={}, worker="w1")  # cannot publish
    retry = store.workers.claim_job("w2")
    assert retry.request["retry_of"] == job.id and retry.attempt == 2
    assert retry.created_at == job.created_at  # keeps its place in line
    assert store.workers.reap(timeout_s=30, retries=1, now=time.time() + 60) == [retry.id]
    assert store.workers.claim_job("w3") is None  # retried once, not forever
    assert "retry it with POST" in store.jobs.get_job(retry.id).error


def _claim_many(url: str, worker: str, out) -> None:
    store = Store(url, migrate=False)
    got = []
    while (job := store.workers.claim_job(worker)) is not None:
        got.append(job.id)
        store.jobs.finish(job.id, "succeeded", result={}, worker=worker)
    out.put(got)


def test_concurrent_workers_never_claim_a_job_twice(db_url) -> None:
    store = Store(db_url)
    ids = {
        store.jobs.create_job(f"m{i % 5}", {}, [("x", "1")], mode="append", source="http").id
        for i in range(40)
    }
    out = multiprocessing.get_context("spawn").Queue()
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=_claim_many, args=(db_url, f"w{i}", out)
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


def _trigger(url: str, n: int, out) -> None:
    store = Store(url, migrate=False)
    policy = RetrainPolicy(min_pending=10)
    fired = [store.triggers.maybe_trigger("m", policy) is not None for _ in range(n)]
    out.put(sum(fired))


def test_one_trigger_starts_one_job_across_processes(db_url) -> None:
    store = Store(db_url)
    store.examples.add_feedback("m", [(f"text {i}", "a", None) for i in range(10)])
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_trigger, args=(db_url, 5, out)) for _ in range(4)]
    for p in procs:
        p.start()
    assert sum(out.get(timeout=120) for _ in procs) == 1
    for p in procs:
        p.join(30)
    assert len(store.jobs.list_jobs("m")) == 1


def test_concurrent_promotions_never_interleave(db_url, tmp_path) -> None:
    store = Store(db_url)
    registry = Registry(tmp_path / "reg", aliases=store.aliases)
    versions = [publish(registry) for _ in range(8)]
    registry.promote("m", versions[0])
    errors: list[BaseException] = []

    def promote(v: str) -> None:
        try:
            Registry(tmp_path / "reg", aliases=Store(db_url, migrate=False).aliases).promote("m", v)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    aliases, generation = store.aliases.read("m")
    assert generation == 8  # 1 + 7 promotions, each applied on its own
    assert aliases["production"] in versions[1:] and aliases["previous"] in versions
    assert aliases["production"] != aliases["previous"]


def test_shadow_alias_report_and_one_decision(db_url, tmp_path) -> None:
    store = Store(db_url)
    registry = Registry(tmp_path / "reg", aliases=store.aliases)
    v1, v2, v3 = (publish(registry) for _ in range(3))
    with pytest.raises(RegistryError, match="no production version"):
        registry.shadow("m", v2)
    registry.promote("m", v1)
    assert registry.shadow("m", v2) == {"production": v1, "shadow": v2}
    assert registry.promote("m", v3) == {"production": v3, "previous": v1, "shadow": v2}
    assert registry.rollback("m") == {"production": v1, "previous": v3, "shadow": v2}
    # served predictions, some scored by the shadow, and feedback linked to four of them
    now = time.time()
    rows = [
        ("r1.0", "m", v1, "a", 0.9, now, v2, "a", 0.8),
        ("r1.1", "m", v1, "b", 0.9, now, v2, "a", 0.7),
        ("r2.0", "m", v1, "a", 0.9, now, v2, "b", 0.6),
        ("r3.0", "m", v1, "b", 0.9, now),  # not sampled
        ("r4.0", "m", v1, "b", 0.9, now, v2, "b", 0.9),
    ]
    store.telemetry.add_predictions(rows, keep=100)
    store.examples.add_feedback(
        "m", [("t1", "a", "r1.0"), ("t2", "a", "r1.1"), ("t3", "b", "r2.0")]
    )
    store.examples.add_feedback("m", [("t4", "b", "r3.0"), ("t5", "b", "r4.0")])
    report = store.telemetry.shadow_report("m", v1, v2)
    assert report == {
        "scored": 4,
        "agreement": 0.5,
        "labeled": 4,
        "production_correct": 2,  # r1.0, r4.0
        "shadow_correct": 4,
        "production_accuracy": 0.5,
        "shadow_accuracy": 1.0,
    }
    assert store.telemetry.live_accuracy("m")[v1] == {"labeled": 5, "correct": 3, "accuracy": 0.6}
    # two replicas judging at once: exactly one moves the aliases
    other = Registry(tmp_path / "reg", aliases=Store(db_url, migrate=False).aliases)
    first = registry.end_shadow("m", v2, promote=True)
    second = other.end_shadow("m", v2, promote=True)
    assert first == {"production": v2, "previous": v1} and second is None
    assert store.aliases.read("m")[0] == {"production": v2, "previous": v1}
    store.telemetry.record_shadow_decision("m", {"version": v2, "outcome": "promoted"})
    assert store.telemetry.shadow_decision("m") == {"version": v2, "outcome": "promoted"}
    registry.shadow("m", v3)
    assert registry.end_shadow("m", v3, promote=False) == {"production": v2, "previous": v1}


def test_a_stopped_database_gives_store_unavailable_then_recovers(postgres) -> None:
    store = Store(postgres.new_database())
    store.examples.add_examples("m", [("a", "x")], mode="replace", source="http")
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="is unavailable .* nothing was stored"):
            store.examples.add_examples("m", [("b", "x")], mode="append", source="http")
        assert time.monotonic() - started < 10
    finally:
        postgres.start()
    store.examples.add_examples(
        "m", [("b", "x")], mode="append", source="http"
    )  # reconnects by itself
    assert store.examples.dataset("m") == [("a", "x"), ("b", "x")]


# -- registry on S3 --------------------------------------------------------------------------
def test_s3_registry_publishes_metadata_last_and_verifies_downloads(s3, tmp_path) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/models"
    publisher = Registry(storage=S3Storage(url, tmp_path / "a", endpoint_url=s3.endpoint))
    version = publish(publisher, payload=b"x" * 5000)
    assert s3.keys(bucket)[-1] == f"models/m/{version}/tokenizer.json"
    assert f"models/m/{version}/metadata.json" in s3.keys(bucket)

    replica = Registry(storage=S3Storage(url, tmp_path / "b", endpoint_url=s3.endpoint))
    assert replica.list_versions("m") == [version]
    mv = replica.verify("m", version)  # downloaded once into the cache, every sha256 checked
    assert mv.path == tmp_path / "b" / "m" / version and (mv.path / "model.onnx").is_file()

    # an upload that never got its metadata does not exist, and is cleaned up
    s3.client().put_object(
        Bucket=bucket, Key="models/m/v20260101-000000-000000-abcd/model.onnx", Body=b"half"
    )
    assert replica.list_versions("m") == [version]
    with pytest.raises(VersionNotFoundError):
        replica.get("m", "v20260101-000000-000000-abcd")
    assert replica.storage.clean_incomplete("m", older_than_s=0) == ["v20260101-000000-000000-abcd"]
    assert all(version in k for k in s3.keys(bucket))

    # one byte changed in S3: a new replica refuses it by its sha256, naming the file
    body = bytearray(
        s3.client().get_object(Bucket=bucket, Key=f"models/m/{version}/model.onnx")["Body"].read()
    )
    body[10] ^= 1
    s3.client().put_object(Bucket=bucket, Key=f"models/m/{version}/model.onnx", Body=bytes(body))
    fresh = Registry(storage=S3Storage(url, tmp_path / "c", endpoint_url=s3.endpoint))
    with pytest.raises(CorruptVersionError, match="model.onnx: sha256"):
        fresh.verify("m", version)
    assert not (tmp_path / "c" / "m" / version).exists()  # nothing unverified in the cache

    # cached versions nothing points to are removed
    assert replica.prune_cache("m", keep=set()) == [version]


def test_migrations_build_exactly_the_schema_the_stores_query(db_url: str) -> None:
    """One schema: Alembic's autogenerate compares a freshly migrated database with
    `service.stores.schema.metadata` (what every query is built from) and finds nothing —
    no table, column, type, nullability, index, key or server default differs."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.stores.schema import metadata

    store = Store(db_url)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, metadata)
    if store.engine.dialect.name == "sqlite":
        # SQLite reflects the empty-string default of jobs.message as a difference that is
        # not one ('' vs "''"); everything else must match exactly.
        differences = [
            d for d in differences if not (d[0][0] == "modify_default" and d[0][3] == "message")
        ]
    assert differences == []
    assert set(metadata.tables) == set(sa.inspect(store.engine).get_table_names()) - {
        "alembic_version"
    }
