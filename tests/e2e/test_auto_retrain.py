"""The retraining loop without a human, on Banking77 classes: a feature-extraction model
gets feedback in batches until the pending trigger fires, the job runs by itself and the
new version is promoted; then a batch with shuffled labels triggers a job whose challenger
the gate rejects while production keeps serving."""

from __future__ import annotations

import csv
import json
import random
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import Server, make_server, production, wait_job

pytestmark = pytest.mark.slow

TEN = sorted({label for _, label in read_banking77("train")})[20:30]
PENDING = 150


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("loop")
    first = tmp / "first.csv"
    with first.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(banking77_slice("train", TEN, per_class=8, seed=0))
    srv = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first),
        REFIT_RETRAIN_MIN_PENDING=str(PENDING),
        REFIT_TRIGGER_POLL_S="1",
        REFIT_FINE_TUNING_AT="20",  # so that 23 per class moves the model to fine-tuning
        REFIT_DRIFT_THRESHOLD="0",  # this test is about the pending trigger (drift: unit tests)
        REFIT_STORE_UNCERTAIN_TEXTS="true",
        REFIT_UNCERTAIN_BELOW="0.6",
    )
    srv.start()
    yield srv
    srv.stop()


def feedback_rows(
    seed: int, per_class: int, exclude: set[str] = frozenset()
) -> list[tuple[str, str]]:
    """Train texts not in the first model's data (nor in `exclude`), `per_class` per class."""
    used = {t for t, _ in banking77_slice("train", TEN, per_class=8, seed=0)} | exclude
    pool = [r for r in banking77_slice("train", TEN, per_class=None) if r[0] not in used]
    rng = random.Random(seed)
    rng.shuffle(pool)
    out: list[tuple[str, str]] = []
    for label in TEN:
        out += [r for r in pool if r[1] == label][:per_class]
    return out


def accuracy_on_test(client: httpx.Client) -> tuple[float, str]:
    rows = banking77_slice("test", TEN, per_class=None)
    right, versions = 0, set()
    for i in range(0, len(rows), 200):
        chunk = rows[i : i + 200]
        r = client.post("/predict", json={"texts": [t for t, _ in chunk]})
        assert r.status_code == 200, r.text
        versions.add(r.json()["version"])
        right += sum(
            p["label"] == y for p, (_, y) in zip(r.json()["predictions"], chunk, strict=True)
        )
    assert len(versions) == 1
    return right / len(rows), versions.pop()


def wait_for_trigger(client: httpx.Client, known: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in client.get("/jobs").json()["jobs"] if j["id"] not in known]
        if jobs:
            (job,) = jobs  # one job, though both workers poll the trigger
            return job
        time.sleep(0.3)
    raise AssertionError("no job was triggered")


def serving_everywhere(client: httpx.Client, version: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        r = httpx.post(
            f"{client.base_url}/predict", json={"texts": ["hi"]}, headers={"Connection": "close"}
        )
        seen[r.headers["X-Refit-Worker"]] = r.json()["version"]
        if len(seen) == 2 and set(seen.values()) == {version}:
            return
        time.sleep(0.1)
    raise AssertionError(f"workers serve {seen}, expected {version}")


def test_feedback_triggers_a_retrain_that_is_promoted_then_shuffled_labels_are_rejected(
    loop_server: Server,
) -> None:
    steps = []
    with loop_server.client() as c:
        accuracy, first = accuracy_on_test(c)
        steps.append(
            {"step": "first model (8 per class, feature extraction)", "accuracy": accuracy}
        )
        assert c.get("/jobs").json()["jobs"] == []
        batches = [feedback_rows(seed=0, per_class=15)[i::3] for i in range(3)]  # disjoint thirds
        for n, batch in enumerate(batches, start=1):
            r = c.post(
                "/feedback",
                json={
                    "examples": [
                        {"text": t, "label": y, "prediction_id": f"p{n}"} for t, y in batch
                    ]
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == 50 and r.json()["pending"] == 50 * n
            if n < 3:
                time.sleep(2.5)  # more than two trigger polls: nothing may start
                assert c.get("/jobs").json()["jobs"] == []
                policy = c.get("/models").json()["retrain_policy"]
                assert policy["min_pending"] == PENDING and policy["state"]["pending"] == 50 * n
        job = wait_for_trigger(c, set())
        assert job["request"]["trigger"] == "pending"
        assert job["request"]["cause"] == f"150 new labeled examples pending (threshold {PENDING})"
        job, _ = wait_job(c, job["id"], timeout=600)
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["examples"] == 230 and result["promoted"] is True, result
        assert result["policy_inputs"]["plan"] == "fine_tuning"
        assert result["previous_strategy"] == "feature_extraction"
        assert result["strategy_changed"] is (result["strategy"] == "fine_tuning")
        serving_everywhere(c, result["version"])
        accuracy, second = accuracy_on_test(c)
        steps.append(
            {
                "step": f"after 150 feedback examples: automatic job, {result['strategy']}",
                "accuracy": accuracy,
            }
        )
        assert second == result["version"] != first
        assert accuracy >= steps[0]["accuracy"]
        models = c.get("/models").json()
        assert models["retrain_policy"]["state"]["pending"] == 0
        drift = models["drift"]
        assert drift["version"] == second and drift["reference"] == "validation predictions"
        uncertain = c.get("/feedback/uncertain", params={"limit": 5}).json()
        assert uncertain["texts_stored"] is True
        # low-confidence answers, and out-of-scope ones (listed first, whatever their score)
        assert all(u["text"] for u in uncertain["inputs"])
        assert all(u["score"] < 0.6 or u["out_of_scope"] for u in uncertain["inputs"])

        # A batch of wrong labels: the trigger fires, the gate refuses the challenger.
        rng = random.Random(3)
        given = {t for b in batches for t, _ in b}
        noisy = [(t, rng.choice(TEN)) for t, _ in feedback_rows(9, per_class=30, exclude=given)]
        known = {j["id"] for j in c.get("/jobs").json()["jobs"]}
        r = c.post("/feedback", json={"examples": [{"text": t, "label": y} for t, y in noisy]})
        assert r.status_code == 200, r.text
        assert r.json()["pending"] == len(noisy) >= PENDING
        job = wait_for_trigger(c, known)
        job, _ = wait_job(c, job["id"], timeout=600)
        assert job["state"] == "succeeded", job
        assert job["result"]["promoted"] is False, job["result"]
        assert "kept as a candidate" in job["result"]["promotion_reason"]
        assert production(c) == second
        accuracy, third = accuracy_on_test(c)
        steps.append(
            {"step": "after 300 shuffled labels: challenger rejected", "accuracy": accuracy}
        )
        assert third == second and accuracy == steps[1]["accuracy"]
        print("AUTO_RETRAIN_STEPS " + json.dumps(steps))
        # the worker counts the outcome once the trainer process has exited, which can be a
        # moment after the job's result is visible in the store
        rejected = r'refit_challengers_rejected_total\{model="default",source="trigger"\} 1\.0'
        deadline = time.monotonic() + 90
        while True:
            text = httpx.get(f"{loop_server.url}/metrics").text
            if re.search(rejected, text) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert re.search(rejected, text)
        assert re.search(r'refit_auto_retrains_total\{cause="pending",model="default"\} 2\.0', text)


def test_prediction_ids_link_feedback_to_what_was_served(loop_server: Server) -> None:
    with loop_server.client() as c:
        r = c.post("/predict", json={"texts": ["my card has not arrived", "refund please"]})
        assert r.status_code == 200
        request_id = r.headers["X-Request-Id"]
        served = r.json()
        ids = [p["id"] for p in served["predictions"]]
        assert ids == [f"{request_id}.0", f"{request_id}.1"]
        first, second = served["predictions"]
        wrong = next(label for label in TEN if label != second["label"])
        r = c.post(
            "/feedback",
            json={
                "examples": [
                    {
                        "text": "my card has not arrived",
                        "label": first["label"],
                        "prediction_id": ids[0],
                    },
                    {"text": "refund please", "label": wrong, "prediction_id": ids[1]},
                ]
            },
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 90  # the ids reach the store at the next flush (1 s)
        while True:
            live = c.get("/models").json()["live_accuracy"].get(served["version"])
            if live or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert live == {"labeled": 2, "correct": 1, "accuracy": 0.5}
        metrics = c.get("/metrics").text
        assert (
            f'refit_live_accuracy{{model="default",version="{served["version"]}"}} 0.5' in metrics
        )
