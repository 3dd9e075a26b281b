"""A named model is automated like the default one: its shadow scores its own traffic and is
judged on its linked feedback, its live accuracy and drift reach /metrics, and its feedback
fires its retrain trigger — while the default model, which gets none of it, starts nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import Server, make_server, submit, wait_job, wait_until

pytestmark = pytest.mark.slow

FIVE = sorted({label for _, label in read_banking77("train")})[50:55]
NAME = "intents"
PENDING = 90
MIN_LABELED = 30


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Server]:
    server = make_server(
        tmp_path_factory.mktemp("named"),
        REFIT_TRIGGER_POLL_S="1",
        REFIT_RETRAIN_MIN_PENDING=str(PENDING),
        REFIT_DRIFT_THRESHOLD="0",  # the pending trigger is tested here (drift: unit tests)
        REFIT_DRIFT_MIN_PREDICTIONS="20",
        REFIT_SHADOW_FRACTION="1",
        REFIT_SHADOW_MIN_LABELED=str(MIN_LABELED),
    )
    server.start()
    yield server
    server.stop()


def train(client: httpx.Client, per_class: int, seed: int, **options: str) -> dict:
    rows = banking77_slice("train", FIVE, per_class=per_class, seed=seed)
    body = {
        "model": NAME,
        "examples": [{"text": t, "label": y} for t, y in rows],
        "strategy": "feature_extraction",
        **options,
    }
    r = submit(client, body)
    assert r.status_code == 200, r.text
    job, _ = wait_job(client, r.headers["X-Refit-Job-Id"])
    assert job["state"] == "succeeded" and job["model"] == NAME, job
    return job["result"]


def shadow_everywhere(srv: Server, version: str) -> bool:
    """Both workers serve the model and have its shadow loaded (a request per worker)."""
    seen = {}
    for _ in range(12):
        headers = {"Connection": "close"}
        body = {"texts": ["card arrival"], "model": NAME}
        httpx.post(f"{srv.url}/predict", json=body, headers=headers, timeout=60)
        view = httpx.get(f"{srv.url}/models/{NAME}", headers=headers, timeout=60).json()
        seen[view["serving"]["worker_pid"]] = view["shadow"]["loaded_here"]
    return len(seen) == 2 and set(seen.values()) == {version}


def test_a_named_models_shadow_drift_and_trigger_run_by_themselves(srv: Server) -> None:
    with srv.client() as c:
        v1 = train(c, per_class=8, seed=0)["version"]
        result = train(c, per_class=16, seed=1, promote="shadow")
        v2 = result["version"]
        assert result["shadow"] is True, result
        view = c.get(f"/models/{NAME}").json()
        assert view["production"] == v1 and view["shadow"]["version"] == v2
        assert view["retrain_policy"]["auto_retrain"] is True
        wait_until(lambda: shadow_everywhere(srv, v2), 120, "the shadow loaded by both workers")

        # live traffic on the named model: answered by production, scored by its shadow
        rows = banking77_slice("test", FIVE, per_class=None)[: MIN_LABELED + 10]
        feedback = []
        for i in range(0, len(rows), 4):
            chunk = rows[i : i + 4]
            r = c.post("/predict", json={"texts": [t for t, _ in chunk], "model": NAME})
            assert r.status_code == 200 and r.json()["version"] == v1, r.text
            for p, (text, label) in zip(r.json()["predictions"], chunk, strict=True):
                feedback.append({"text": text, "label": label, "prediction_id": p["id"]})
        wait_until(
            lambda: (
                (c.get(f"/models/{NAME}").json()["shadow"]["live"] or {}).get("scored", 0)
                >= len(rows)
            ),
            90,
            "the shadow scored the named model's traffic",
        )
        # (while v2 is the shadow: a dropped shadow's series leave /metrics with it)
        metrics = c.get("/metrics").text
        assert f'refit_shadow_scored_total{{model="{NAME}",version="{v2}"}}' in metrics

        # linked feedback: the shadow is judged, and live accuracy reaches /metrics
        r = c.post("/feedback", json={"model": NAME, "examples": feedback})
        assert r.status_code == 200, r.text
        decision = wait_until(
            lambda: c.get(f"/models/{NAME}").json()["shadow"]["last_decision"],
            90,
            "a decision on the named model's shadow",
        )
        assert decision["version"] == v2 and decision["report"]["labeled"] >= MIN_LABELED
        assert decision["outcome"] in ("promoted", "dropped")
        wait_until(
            lambda: f'refit_live_accuracy{{model="{NAME}"' in c.get("/metrics").text,
            90,
            "the named model's live accuracy gauge",
        )
        assert f'refit_drift_live_mean_confidence{{model="{NAME}"' in c.get("/metrics").text

        # its feedback fires its own trigger; the default model starts nothing
        before = {j["id"] for j in c.get("/jobs", params={"model": NAME}).json()["jobs"]}
        more = [
            {"text": t, "label": y}
            for t, y in banking77_slice("train", FIVE, per_class=None, seed=2)
            if t not in {f["text"] for f in feedback}
        ][: PENDING - len(feedback)]
        r = c.post("/feedback", json={"model": NAME, "examples": more})
        assert r.status_code == 200 and r.json()["pending"] >= PENDING, r.text
        job = wait_until(
            lambda: next(
                (
                    j
                    for j in c.get("/jobs", params={"model": NAME}).json()["jobs"]
                    if j["id"] not in before
                ),
                None,
            ),
            120,
            "the named model's pending trigger",
        )
        assert job["request"]["trigger"] == "pending", job
        done, _ = wait_job(c, job["id"], timeout=600)
        assert done["state"] == "succeeded", done
        time.sleep(2)  # two more polls
        assert c.get("/jobs").json()["jobs"] == []  # the default model: nothing pending
