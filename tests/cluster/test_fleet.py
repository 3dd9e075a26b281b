"""Two replicas and two `refit worker`s on one PostgreSQL and one S3 bucket, all real
processes: promotion, load, failures of each component."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.harness.fleet import Fleet, launch_fleet, promotions_under_load
from tests.cluster.conftest import Postgres, SeaweedS3
from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import Server, submit, wait_job, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CLASSES = sorted({label for _, label in read_banking77("train")})[:3]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres: Postgres, s3: SeaweedS3) -> Iterator[Fleet]:
    with launch_fleet(tmp_path_factory.mktemp("fleet"), postgres, s3) as f:
        yield f


def serving(srv: Server) -> str | None:
    with srv.client() as c:
        return c.get("/models").json()["serving"]["version"]


def test_a_retrain_sent_to_a_is_run_by_a_worker_and_served_by_b(fleet: Fleet) -> None:
    """How fast B follows is bench/cluster_bench.py's `promote_to_all_replicas_s`."""
    a, b = fleet.replicas["a"], fleet.replicas["b"]
    rows = banking77_slice("train", CLASSES, per_class=6)
    body = {
        "examples": [{"text": t, "label": y} for t, y in rows],
        "mode": "replace",
        "strategy": "feature_extraction",
    }
    with a.client() as ca, b.client() as cb:
        r = submit(ca, body)
        assert r.status_code == 200, r.text
        job_id = r.headers["X-Refit-Job-Id"]
        job, _ = wait_job(ca, job_id, timeout=240)
        assert job["state"] == "succeeded", job
        assert job["worker"] and job["result"]["promoted"] is True
        version = job["result"]["version"]
        try:
            wait_until(
                lambda: (
                    cb.post("/predict", json={"texts": ["my card"]}).json()["version"] == version
                ),
                90,
                "replica B serves the new version",
            )
        finally:
            print("replica B:", cb.get("/models").json()["serving"])
        assert ca.get(f"/jobs/{job_id}").json() == cb.get(f"/jobs/{job_id}").json()
        # fleet gauges from the shared store, on every replica (dashboard, alerts)

        def fleet_gauges(client) -> bool:
            text = client.get("/metrics").text
            ages = {
                line.split('worker="')[1].split('"')[0]: float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("refit_worker_heartbeat_age_seconds{")
            }
            return (
                sum(age < 30 for age in ages.values()) >= len(fleet.workers)
                and 'refit_retrain_failures_in_a_row{model="default"} 0.0' in text
                and 'refit_retrain_last_duration_seconds{model="default",outcome="succeeded"}'
                in text
            )

        for client in (ca, cb):
            wait_until(lambda c=client: fleet_gauges(c), 90, "fleet gauges on each replica")


def test_16_clients_see_only_production_versions_through_promotions_and_a_rollback(
    fleet: Fleet,
) -> None:
    run = promotions_under_load(fleet, seconds=20)
    assert run.rolled_back_to == run.order[2]  # production was the second promotion
    assert run.failures == []
    for versions in run.seen:
        # each client's versions follow the production history in order (none skipped
        # back, except across the rollback)
        assert run.in_order(versions), (versions, run.order)
    assert {v[-1] for v in run.seen} == {run.order[2]}


def test_a_worker_killed_mid_fine_tuning_is_retried_elsewhere_and_publishes_once(
    fleet: Fleet,
) -> None:
    a = fleet.replicas["a"]
    before = set(fleet.registry().list_versions("default"))
    rows = banking77_slice("train", CLASSES, per_class=8, seed=3)
    body = {
        "examples": [{"text": t, "label": y} for t, y in rows],
        "mode": "append",
        "strategy": "fine_tuning",
        "promote": "never",
    }
    store = fleet.store()
    with a.client() as c:
        job_id = submit(c, body).headers["X-Refit-Job-Id"]
        job = wait_until(
            lambda: (j := c.get(f"/jobs/{job_id}").json())["phase"] == "training" and j,
            240,
            "the job reaches fine-tuning",
            step=0.2,
        )
        holder = next(
            w for w in fleet.workers if w.proc and job["worker"].split("-")[-2] == str(w.proc.pid)
        )
        holder.kill(signal.SIGKILL)  # its trainer dies with it (PR_SET_PDEATHSIG)
        interrupted = wait_until(
            lambda: (j := c.get(f"/jobs/{job_id}").json())["state"] == "interrupted" and j,
            60,
            "the job is marked interrupted",
        )
        assert "stopped heartbeating" in interrupted["error"]
        retry = next(
            j for j in store.jobs.list_jobs("default") if j.request.get("retry_of") == job_id
        )
        final, _ = wait_job(c, retry.id, timeout=400)
    assert final["state"] == "succeeded", final
    assert final["worker"] != job["worker"]
    after = set(fleet.registry().list_versions("default"))
    assert after - before == {final["result"]["version"]}  # exactly one version
    keys = fleet.s3.keys(fleet.bucket)
    complete = {k.split("/")[2] for k in keys if k.endswith("/metadata.json")}
    assert {k.split("/")[2] for k in keys} == complete  # no partial objects
    fleet.worker()  # back to two workers


def test_a_killed_replica_leaves_b_serving_and_a_new_replica_starts_from_s3(fleet: Fleet) -> None:
    a, b = fleet.replicas["a"], fleet.replicas["b"]
    production = fleet.store().aliases.read("default")[0]["production"]
    a.stop(signal.SIGKILL)
    with b.client() as c:
        for _ in range(20):
            r = c.post("/predict", json={"texts": ["top up failed"]})
            assert r.status_code == 200 and r.json()["version"] == production
    c_srv = fleet.replica("c")
    assert not (c_srv.home / "cache").exists()
    c_srv.start()
    assert serving(c_srv) == production
    cached = c_srv.home / "cache" / "default" / production
    assert (cached / "model.onnx").is_file()  # downloaded, verified, loaded


def test_postgres_down_for_10s_fails_no_prediction_and_writes_get_503(fleet: Fleet) -> None:
    b, c = fleet.replicas["b"], fleet.replicas["c"]
    store = fleet.store()
    examples_before = store.examples.example_count()
    stop = threading.Event()
    failures: list[str] = []
    counts = [0]

    def client(srv: Server) -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/predict", json={"texts": ["where is my card"]})
                counts[0] += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(s,)) for s in (b, c, b, c)]
    for t in threads:
        t.start()
    accepted = 0
    try:
        time.sleep(1)
        fleet.postgres.stop()
        outage = time.monotonic()
        with b.client() as http:
            r = http.post(
                "/feedback", json={"examples": [{"text": "lost card help", "label": CLASSES[0]}]}
            )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            assert "unavailable" in r.json()["error"]
            r = submit(
                http, {"examples": [{"text": "x y", "label": "a"}, {"text": "y z", "label": "b"}]}
            )
            assert r.status_code == 503, r.text
        time.sleep(max(0.0, 10 - (time.monotonic() - outage)))
        fleet.postgres.start()
        with c.client() as http:
            r = wait_until(
                lambda: (
                    (
                        resp := http.post(
                            "/feedback",
                            json={"examples": [{"text": "lost card help", "label": CLASSES[0]}]},
                        )
                    ).status_code
                    == 200
                    and resp
                ),
                90,
                "writes succeed again",
                step=0.5,
            )
            accepted = r.json()["accepted"]
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [] and counts[0] > 50
    assert store.examples.example_count() == examples_before + accepted


def test_s3_down_keeps_replicas_serving_and_a_promotion_applies_when_it_returns(
    fleet: Fleet,
) -> None:
    b, c = fleet.replicas["b"], fleet.replicas["c"]
    old = fleet.store().aliases.read("default")[0]["production"]
    candidate = fleet.copy_version(old)
    fleet.s3.stop()
    try:
        with b.client() as http:
            r = http.post("/models/promote", json={"version": candidate})
            assert r.status_code == 202, r.text
            assert "promoted without checking the files" in r.json()["warning"]
            listing = wait_until(
                lambda: (m := http.get("/models").json())["serving"]["fetch_error"] and m,
                60,
                "the replica reports the version it cannot fetch",
            )
            assert listing["serving"]["fetch_error"]["version"] == candidate
            assert listing["serving"]["version"] == old
            assert listing["registry"]["error"] and "unavailable" in listing["registry"]["error"]
            for _ in range(10):
                r = http.post("/predict", json={"texts": ["card declined"]})
                assert r.status_code == 200 and r.json()["version"] == old
    finally:
        fleet.s3.start()
    for srv in (b, c):
        wait_until(lambda srv=srv: serving(srv) == candidate, 90, "served once S3 is back")


def test_200_feedback_examples_across_two_replicas_start_exactly_one_job(fleet: Fleet) -> None:
    b, c = fleet.replicas["b"], fleet.replicas["c"]
    store = fleet.store()
    # the earlier tests left some pending feedback; top it up to the trigger's 200
    pending = store.triggers.trigger_state("default")["pending"]
    rows = [r for r in read_banking77("train") if r[1] in CLASSES][: 200 - pending]
    triggered_before = [
        j.id for j in store.jobs.list_jobs("default", 500) if j.request.get("trigger")
    ]
    for i in range(0, len(rows), 20):
        srv = b if (i // 20) % 2 == 0 else c
        with srv.client() as http:
            r = http.post(
                "/feedback",
                json={"examples": [{"text": t, "label": y} for t, y in rows[i : i + 20]]},
            )
            assert r.status_code == 200, r.text
    wait_until(
        lambda: any(
            j.request.get("trigger") and j.id not in triggered_before
            for j in store.jobs.list_jobs("default", 500)
        ),
        90,
        "a trigger fires",
    )
    time.sleep(4)  # several more trigger polls on both replicas
    new = [
        j
        for j in store.jobs.list_jobs("default", 500)
        if j.request.get("trigger") and j.id not in triggered_before
    ]
    assert len(new) == 1, [j.to_dict() for j in new]


def test_a_byte_changed_in_s3_is_refused_and_the_last_good_version_keeps_serving(
    fleet: Fleet,
) -> None:
    b = fleet.replicas["b"]
    good = serving(b)
    bad = fleet.copy_version(good)
    client = fleet.s3.client()
    key = f"models/default/{bad}/model.onnx"
    body = bytearray(client.get_object(Bucket=fleet.bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=fleet.bucket, Key=key, Body=bytes(body))
    with b.client() as http:
        r = http.post("/models/promote", json={"version": bad})
        assert r.status_code == 409 and "model.onnx: sha256" in r.json()["error"]
        # the alias pointing at it anyway (an operator's hand edit of the store)
        store = fleet.store()
        aliases, generation = store.aliases.read("default")
        assert store.aliases.compare_and_set(
            "default", generation, {"production": bad, "previous": good}
        )
        try:
            listing = wait_until(
                lambda: (m := http.get("/models").json())["serving"]["error"] and m,
                60,
                "the replica refuses the version",
            )
            assert "model.onnx: sha256" in listing["serving"]["error"]
            assert listing["serving"]["version"] == good
            r = http.post("/predict", json={"texts": ["card declined"]})
            assert r.status_code == 200 and r.json()["version"] == good
        finally:
            aliases, generation = store.aliases.read("default")
            store.aliases.compare_and_set("default", generation, {"production": good})
