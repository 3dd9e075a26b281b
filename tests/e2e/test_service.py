"""End to end against a real service: 2 workers, a real trainer process, real SQLite."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import Server, db_state, production, submit, wait_job

pytestmark = pytest.mark.slow

FIVE = sorted({label for _, label in read_banking77("train")})[10:15]


def versions_by_worker(client: httpx.Client, text: str, rounds: int = 200) -> dict[str, str]:
    """Which version each worker pid answers with (requests spread over both workers; a
    busy machine may hand dozens of connections in a row to one of them)."""
    seen: dict[str, str] = {}
    with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
        for _ in range(rounds):
            r = fresh.post("/predict", json={"texts": [text]}, headers={"Connection": "close"})
            assert r.status_code == 200, r.text
            seen[r.headers["X-Refit-Worker"]] = r.json()["version"]
            if len(seen) == 2 and rounds > 10:
                break
    return seen


def test_first_start_serves_the_shipped_example_model(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            "/predict",
            json={
                "texts": ["Where is my parcel? It has not arrived", "I want my money back"],
                "top_k": 3,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "default"
        assert body["version"] == r.headers["X-Model-Version"] == production(c)
        assert [p["label"] for p in body["predictions"]] == ["order_status", "refund_request"]
        for p in body["predictions"]:
            assert len(p["top"]) == 3
            assert p["top"][0] == {"label": p["label"], "score": p["score"]}
            assert p["top"][0]["score"] >= p["top"][1]["score"] >= p["top"][2]["score"]
        models = c.get("/models").json()
        assert models["serving"]["provider"] == "CPUExecutionProvider"
        assert models["versions"][0]["strategy"] == "feature_extraction"
        assert len(models["versions"][0]["labels"]) == 6


def test_inference_workers_never_load_torch(server: Server) -> None:
    pids = versions_by_worker(server.client(), "hello")
    assert len(pids) == 2
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps, f"worker {pid} mapped libtorch"
        assert "onnxruntime" in maps


def test_feature_extraction_retrain_is_served_by_both_workers(server: Server) -> None:
    rows = banking77_slice("train", FIVE, per_class=8)
    with server.client() as c:
        before = production(c)
        r = submit(c, {"examples": [{"text": t, "label": y} for t, y in rows], "mode": "replace"})
        assert r.status_code == 200, r.text
        job_id = r.headers["X-Refit-Job-Id"]
        assert r.json()["status"] in ("in_progress", "success")
        job, seen = wait_job(c, job_id)
        assert job["state"] == "succeeded", job
        phases = [p for p, _ in seen]
        assert phases[-1] == "done" and "queued" not in phases[-1:]
        fractions = [f for _, f in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        result = job["result"]
        assert result["strategy"] == "feature_extraction"
        assert "p10 of examples per class is 8 < 16" in result["reason"]
        assert result["counts"] == {label: 8 for label in FIVE}
        assert result["champion_version"] == before and result["promoted"] is True
        assert result["challenger"]["count"] == result["champion"]["count"] == 5
        new = result["version"]
        assert production(c) == new
        # every worker follows the alias flip (how fast: bench/swap_under_load.py)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = versions_by_worker(c, "how old do I need to be")
            if len(workers) == 2 and set(workers.values()) == {new}:
                break
            time.sleep(0.2)
        assert len(workers) == 2 and set(workers.values()) == {new}, workers
        # BentoML's own task API agrees (the task ends just after the trainer process)
        task_id = r.json()["task_id"]
        deadline = time.monotonic() + 30
        while c.get("/retrain/status", params={"task_id": task_id}).json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        task = c.get("/retrain/get", params={"task_id": task_id})
        assert task.status_code == 200 and task.json()["id"] == job_id


def test_promotion_gate_refuses_a_model_trained_on_shuffled_labels(server: Server) -> None:
    rng = random.Random(7)
    noisy = banking77_slice("train", FIVE, per_class=40, seed=1)[:]
    stored = {t for t, _ in banking77_slice("train", FIVE, per_class=8)}
    noisy = [(t, rng.choice(FIVE)) for t, _ in noisy if t not in stored]
    with server.client() as c:
        champion = production(c)
        r = submit(c, {"examples": [{"text": t, "label": y} for t, y in noisy], "mode": "append"})
        assert r.status_code == 200, r.text
        job, _ = wait_job(c, r.headers["X-Refit-Job-Id"])
        result = job["result"]
        assert job["state"] == "succeeded", job
        assert result["promoted"] is False, result
        assert "kept as a candidate" in result["promotion_reason"]
        assert result["challenger"]["macro_f1"] < result["champion"]["macro_f1"]
        assert production(c) == champion
        assert set(versions_by_worker(c, "card payment").values()) == {champion}
        listed = {v["version"]: v for v in c.get("/models").json()["versions"]}
        assert result["version"] in listed and listed[result["version"]]["aliases"] == []


def test_promote_and_rollback_over_http(server: Server) -> None:
    with server.client() as c:
        models = c.get("/models").json()
        current = models["production"]
        candidate = next(v["version"] for v in models["versions"] if not v["aliases"])
        r = c.post("/models/promote", json={"version": candidate})
        assert r.status_code == 200 and r.json()["production"] == candidate
        r = c.post("/models/rollback")
        assert r.status_code == 200 and r.json() == {
            "model": "default",
            "production": current,
            "previous": candidate,
        }
        r = c.post("/models/promote", json={"version": "v20000101-000000-000000-dead"})
        assert (
            r.status_code == 404
            and "has no version 'v20000101-000000-000000-dead'" in r.json()["error"]
        )


def test_auth_is_required_for_writes_only(server: Server) -> None:
    with server.client(token=None) as anon, server.client(token="wrong-token-123") as wrong:
        for client in (anon, wrong):
            r = submit(
                client, {"examples": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}
            )
            assert r.status_code == 401 and r.json()["error"] == "missing or wrong bearer token"
            assert client.post("/models/rollback").status_code == 401
            assert client.post("/models/promote", json={"version": "x"}).status_code == 401
        assert anon.post("/predict", json={"texts": ["hi"]}).status_code == 200
        assert anon.get("/models").status_code == 200


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"texts": ["x"] * 257}}, 413, "257 texts in one request, the limit is 256"),
        (
            {"json": {"texts": ["x" * 10_001]}},
            413,
            "texts[0] has 10001 characters, the limit is 10000",
        ),
        ({"json": {"texts": []}}, 400, "texts must not be empty"),
        ({"json": {"texts": ["ok", "  "]}}, 400, "texts[1] is empty"),
        ({"json": {"texts": ["ok"], "top_k": 0}}, 400, "top_k must be between 1 and 100, got 0"),
        (
            {"json": {"texts": ["ok"], "top_k": 10_000}},
            400,
            "top_k must be between 1 and 100, got 10000",
        ),
        ({"json": {"texts": "not a list"}}, 400, "texts: Input should be a valid array"),
        (
            {
                "content": b"x" * (2 * 1024 * 1024 + 1),
                "headers": {"content-type": "application/json"},
            },
            413,
            "request body exceeds 2097152 bytes",
        ),
    ],
)
def test_predict_limits(server: Server, request_kwargs, status, message) -> None:
    r = httpx.post(f"{server.url}/predict", timeout=30, **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {
                "examples": [
                    {"text": "only one class", "label": "a"},
                    {"text": "still one", "label": "a"},
                ],
                "mode": "replace",
            },
            400,
            "need at least 2 classes, found 1 ('a')",
        ),
        (
            {
                "examples": [
                    {"text": "one", "label": "a"},
                    {"text": "two", "label": "a"},
                    {"text": "three", "label": "b"},
                ],
                "mode": "replace",
            },
            400,
            "class 'b' has 1 example after de-duplication",
        ),
        ({"examples": [{"text": "", "label": "a"}]}, 400, "examples[0]: empty text"),
        (
            {
                "examples": [
                    {"text": "same", "label": "a"},
                    {"text": "same", "label": "b"},
                    {"text": "x", "label": "a"},
                ]
            },
            400,
            "1 text(s) appear with different labels in this request ('same')",
        ),
        (
            {"examples": [{"text": "x", "label": 3}]},
            400,
            "examples.0.label: Input should be a valid string",
        ),
        ({"examples": []}, 400, "examples: List should have at least 1 item"),
        (
            {"examples": [{"text": "x", "label": "a"}], "mode": "merge"},
            400,
            "mode: Input should be 'append' or 'replace'",
        ),
        (
            {"examples": [{"text": "x", "label": "a"}], "extra": 1},
            400,
            "extra: Extra inputs are not permitted",
        ),
        (
            {"examples": [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(2001)]},
            413,
            "2001 examples in one request, the limit is 2000",
        ),
    ],
)
def test_bad_retrain_requests_are_refused_and_store_nothing(
    server: Server, body, status, message
) -> None:
    before = db_state(server)
    with server.client() as c:
        r = submit(c, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert db_state(server) == before


def test_csv_upload_wrong_type_and_bad_rows(server: Server) -> None:
    before = db_state(server)
    with server.client() as c:
        r = c.post("/retrain/submit", content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "unsupported content type 'text/plain'" in r.json()["error"]
        r = c.post(
            "/retrain/submit?mode=replace",
            content=b"text,label\nhi,a\n,b\n",
            headers={"content-type": "text/csv"},
        )
        assert r.status_code == 400 and "upload line 3: empty text" in r.json()["error"]
        r = c.post(
            "/retrain/submit?mode=sideways",
            content=b"text,label\nhi,a\n",
            headers={"content-type": "text/csv"},
        )
        assert (
            r.status_code == 400
            and "mode: Input should be 'append' or 'replace'" in r.json()["error"]
        )
    assert db_state(server) == before


def test_cancel_a_running_job_publishes_nothing(server: Server) -> None:
    rows = banking77_slice("train", FIVE, per_class=30, seed=5)
    with server.client() as c:
        versions = [v["version"] for v in c.get("/models").json()["versions"]]
        r = submit(
            c, {"examples": [{"text": t, "label": y} for t, y in rows], "strategy": "fine_tuning"}
        )
        job_id = r.headers["X-Refit-Job-Id"]
        deadline = time.monotonic() + 120
        while c.get(f"/jobs/{job_id}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.client(token=None).post(f"/jobs/{job_id}/cancel").status_code == 401
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
        job, _ = wait_job(c, job_id, timeout=120)
        assert job["state"] == "cancelled", job
        assert "nothing was published" in job["error"]
        assert [v["version"] for v in c.get("/models").json()["versions"]] == versions
        r = c.post(f"/jobs/{job_id}/cancel")
        assert (
            r.status_code == 409
            and r.json()["error"] == f"job {job_id} already cancelled; nothing to cancel"
        )


def test_metrics_expose_predictions_models_and_jobs(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    models = httpx.get(f"{server.url}/models", timeout=30).json()
    current = models["production"]
    f1 = next(v["metrics"]["macro_f1"] for v in models["versions"] if v["version"] == current)
    assert re.search(
        r'refit_predictions_total\{label="[^"]+",model="default",version="v[^"]+"\} \d+', text
    )
    assert (
        f'refit_model_info{{model="default",provider="CPUExecutionProvider",strategy="feature_extraction",version="{current}"}} 1.0'
        in text
    )
    assert 'refit_retrain_jobs_total{outcome="succeeded",strategy="feature_extraction"}' in text
    assert "refit_inference_latency_seconds_bucket" in text and "refit_batch_size_bucket" in text
    assert f'refit_model_validation_macro_f1{{model="default",version="{current}"}} {f1}' in text
    assert "bentoml_service_request_total" in text


def test_restart_keeps_jobs_and_production_and_marks_killed_job_interrupted(server: Server) -> None:
    rows = banking77_slice("train", FIVE, per_class=30, seed=3)
    with server.client() as c:
        jobs_before = {j["id"]: j["state"] for j in c.get("/jobs").json()["jobs"]}
        champion = production(c)
        r = submit(
            c, {"examples": [{"text": t, "label": y} for t, y in rows], "strategy": "fine_tuning"}
        )
        assert r.status_code == 200, r.text
        running = r.headers["X-Refit-Job-Id"]
        deadline = time.monotonic() + 120
        while c.get(f"/jobs/{running}").json()["phase"] not in ("embedding", "training"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        stored = db_state(server)
    import signal

    server.stop(signal.SIGKILL)  # the whole service, trainer included, dies mid-job
    server.start()
    with server.client() as c:
        jobs = {j["id"]: j for j in c.get("/jobs").json()["jobs"]}
        assert {k: jobs[k]["state"] for k in jobs_before} == jobs_before
        assert jobs[running]["state"] == "interrupted"
        assert f"retry it with POST /jobs/{running}/retry" in jobs[running]["error"]
        assert production(c) == champion
        assert not [p for p in (server.home / "default").iterdir() if p.name.startswith(".staging")]
        r = c.post("/predict", json={"texts": ["hello"]})
        assert r.status_code == 200 and r.json()["version"] == champion
        assert db_state(server) == stored  # examples, versions and aliases as before the kill
        r = c.post(f"/jobs/{running}/retry")
        assert r.status_code == 202, r.text
        job, _ = wait_job(c, r.json()["id"], timeout=300)
        assert job["state"] == "succeeded", job
        assert job["request"]["retry_of"] == running
        assert job["result"]["examples"] >= len(rows)  # the stored examples, with the new ones


def test_request_texts_and_training_examples_never_reach_the_logs(server: Server) -> None:
    marker = "zq-private-7781 please wire my rent to the landlord"
    with server.client() as c:
        assert c.post("/predict", json={"texts": [marker]}).status_code == 200
        r = submit(
            c, {"examples": [{"text": marker, "label": "a"}, {"text": marker, "label": "b"}]}
        )
        assert r.status_code == 400
    trained = banking77_slice("train", FIVE, per_class=8) + banking77_slice(
        "train", FIVE, per_class=30, seed=5
    )
    log = server.log_path.read_text(errors="replace")
    assert "zq-private-7781" not in log
    leaked = [t for t, _ in trained if t in log]
    assert leaked == []
    assert "e2e-secret-token" not in log
