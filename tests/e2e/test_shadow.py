"""Shadow scoring and bounded metrics on a real service (2 workers, Banking77 classes).

A challenger trained with `promote=shadow` passes the offline gate and is loaded beside
production: it scores live requests without changing a single response, its agreement
and live accuracy are reported, and once enough linked feedback arrived it is promoted
(or dropped) exactly as the report says. Versions that are neither aliased nor loaded
disappear from /metrics.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import banking77_slice
from tests.e2e.conftest import Server, make_server, production, submit, wait_job

pytestmark = pytest.mark.slow

CLASSES = [
    "activate_my_card",
    "age_limit",
    "apple_pay_or_google_pay",
    "atm_support",
    "balance_not_updated_after_bank_transfer",
    "beneficiary_not_allowed",
    "card_arrival",
    "card_linking",
    "change_pin",
    "country_support",
]
MIN_LABELED = 80


@pytest.fixture(scope="module")
def shadow_server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("shadow")
    first = tmp / "first.csv"
    with first.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(banking77_slice("train", CLASSES, per_class=4, seed=0))
    srv = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first),
        REFIT_AUTO_RETRAIN="false",
        REFIT_TRIGGER_POLL_S="1",
        REFIT_SHADOW_FRACTION="1.0",
        REFIT_SHADOW_MIN_LABELED=str(MIN_LABELED),
    )
    srv.start()
    yield srv
    srv.stop()


def versions_in_metrics(text: str) -> set[str]:
    return set(re.findall(r'version="(v[0-9a-f-]+)"', text))


def wait_for(check, timeout: float = 90, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def loaded_everywhere(server: Server, version: str) -> bool:
    seen = {}
    for _ in range(12):
        r = httpx.get(f"{server.url}/models", headers={"Connection": "close"}, timeout=30).json()
        seen[r["serving"]["worker_pid"]] = r["shadow"]["loaded_here"]
    return len(seen) == 2 and set(seen.values()) == {version}


def test_a_shadow_scores_live_traffic_then_is_judged_on_linked_feedback(
    shadow_server: Server,
) -> None:
    with shadow_server.client() as c:
        v1 = production(c)
        more = banking77_slice("train", CLASSES, per_class=30, seed=1)
        r = submit(
            c,
            {
                "examples": [{"text": t, "label": y} for t, y in more],
                "strategy": "feature_extraction",
                "promote": "shadow",
            },
        )
        assert r.status_code == 200, r.text
        job, _ = wait_job(c, r.headers["X-Refit-Job-Id"])
        assert job["state"] == "succeeded", job
        result = job["result"]
        assert result["promoted"] is False and result["shadow"] is True, result
        assert "in shadow" in result["promotion_reason"]
        v2 = result["version"]
        models = c.get("/models").json()
        assert models["production"] == v1 and models["shadow"]["version"] == v2
        assert wait_for(lambda: loaded_everywhere(shadow_server, v2)), "shadow not loaded"

        # live traffic: every answer comes from production, the shadow scores all of it
        rows = banking77_slice("test", CLASSES, per_class=None)[: MIN_LABELED + 40]
        feedback = []
        for i in range(0, len(rows), 3):
            chunk = rows[i : i + 3]
            r = c.post("/predict", json={"texts": [t for t, _ in chunk]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["version"] == v1 and r.headers["X-Model-Version"] == v1
            for p, (text, label) in zip(body["predictions"], chunk, strict=True):
                assert p["label"] in CLASSES or p["out_of_scope"]
                feedback.append({"text": text, "label": label, "prediction_id": p["id"]})

        def scored() -> dict | None:
            live = c.get("/models").json()["shadow"]["live"]
            return live if live and live["scored"] == len(rows) else None

        live = wait_for(scored)
        assert live, c.get("/models").json()["shadow"]
        assert 0 <= live["agreement"] <= 1 and live["labeled"] == 0
        metrics = c.get("/metrics").text
        assert f'refit_shadow_scored_total{{model="default",version="{v2}"}}' in metrics
        assert 'refit_shadow_latency_seconds_count{model="default",role="shadow"}' in metrics

        # linked feedback: the first batch stays under the bar, the second crosses it
        r = c.post("/feedback", json={"examples": feedback[: MIN_LABELED - 10]})
        assert r.status_code == 200, r.text
        time.sleep(3)  # three flushes: below the bar nothing is decided
        assert c.get("/models").json()["shadow"]["version"] == v2
        r = c.post("/feedback", json={"examples": feedback[MIN_LABELED - 10 :]})
        assert r.status_code == 200, r.text
        decision = wait_for(lambda: c.get("/models").json()["shadow"]["last_decision"])
        assert decision, c.get("/models").json()["shadow"]
        report = decision["report"]
        assert MIN_LABELED <= report["labeled"] <= len(rows)
        better = report["shadow_accuracy"] >= report["production_accuracy"]
        assert decision["outcome"] == ("promoted" if better else "dropped"), decision
        models = c.get("/models").json()
        assert models["shadow"]["version"] is None
        assert models["production"] == (v2 if better else v1)
        print(f"shadow decision: {decision['reason']}")  # noqa: T201 - shown with -s

        # two more promoted versions: the oldest ones fall out of the aliases and so out of
        # /metrics, whatever series they had
        before = versions_in_metrics(c.get("/metrics").text)
        assert {v1, v2} <= before
        for seed in (2, 3):
            data = banking77_slice("train", CLASSES, per_class=6, seed=seed)
            r = submit(
                c,
                {
                    "examples": [{"text": t, "label": y} for t, y in data],
                    "strategy": "feature_extraction",
                    "promote": "always",
                },
            )
            job, _ = wait_job(c, r.headers["X-Refit-Job-Id"])
            assert job["state"] == "succeeded", job
        aliases = c.get("/models").json()
        kept = {aliases["production"], aliases["previous"]}
        assert v1 not in kept and v2 not in kept

        def served_by_all() -> bool:
            seen = {}
            for _ in range(12):
                r = httpx.post(
                    f"{shadow_server.url}/predict",
                    json={"texts": ["my card has not arrived"]},
                    headers={"Connection": "close"},
                )
                seen[r.headers["X-Refit-Worker"]] = r.json()["version"]
            return len(seen) == 2 and set(seen.values()) == {aliases["production"]}

        assert wait_for(served_by_all), "the last version is not served by both workers"
        exposed = versions_in_metrics(c.get("/metrics").text)
        assert aliases["production"] in exposed
        assert exposed <= kept, f"stale versions still exposed: {exposed - kept}"

        # by hand: shadow a kept version, stop it; both need the token
        assert httpx.post(
            f"{shadow_server.url}/models/shadow", json={"version": aliases["previous"]}
        ).status_code in (401, 403)
        r = c.post("/models/shadow", json={"version": aliases["previous"]})
        assert r.status_code == 200 and r.json()["shadow"] == aliases["previous"], r.text
        r = c.post("/models/shadow", json={"version": aliases["production"]})
        assert r.status_code == 409 and "promote it instead" in r.json()["error"]
        assert c.post("/models/shadow/stop").status_code == 200
        r = c.post("/models/shadow/stop")
        assert r.status_code == 409 and "no shadow version" in r.json()["error"]
        assert c.get("/models").json()["shadow"]["last_decision"]["reason"] == "stopped on request"
