"""Multi-label models over HTTP, on a real `bentoml serve`: trained from `labels` lists
(GoEmotions comments), answered with label sets on /predict and V2, corrected through
/feedback with `labels`, retrained and swapped while the default single-label model and
the multi-label one both serve under load (no failed request, no answer of the wrong
kind). A field of the other kind is a 400 that says which kind the model is."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from service.harness.data import goemotions_sample, read_goemotions
from tests.e2e.conftest import Server, submit, wait_job

pytestmark = pytest.mark.slow

MODEL = "ml-e2e"
KEEP = ("admiration", "anger", "curiosity", "gratitude", "love", "sadness")


def rows(split: str, per_label: int | None, seed: int = 0) -> list[tuple[str, list[str]]]:
    data = [(t, [x for x in ls if x in KEEP]) for t, ls in read_goemotions(split)]
    return goemotions_sample(data, per_label, seed) if per_label else data


def train(client: httpx.Client, body: dict) -> dict:
    r = submit(client, {"model": MODEL, "promote": "always", **body})
    assert r.status_code == 200, r.text
    job, _ = wait_job(client, r.headers["X-Refit-Job-Id"], timeout=600)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def trained(server: Server) -> dict:
    examples = [{"text": t, "labels": ls} for t, ls in rows("train", 16)]
    examples += [{"text": t, "labels": []} for t, ls in rows("train", None)[:60] if not ls][:30]
    with server.client() as client:
        return train(
            client, {"examples": examples, "mode": "replace", "strategy": "feature_extraction"}
        )


def test_a_multi_label_model_answers_label_sets(server: Server, trained: dict) -> None:
    result = trained["result"]
    assert set(result["counts"]) == set(KEEP)
    dev = [(t, ls) for t, ls in rows("dev", None)[:200]]
    with server.client() as client:
        r = client.post("/predict", json={"texts": [t for t, _ in dev], "model": MODEL, "top_k": 3})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        meta = client.get(f"/models/{MODEL}").json()
        v2 = client.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [2],
                        "data": [dev[0][0], dev[1][0]],
                    }
                ]
            },
        )
        v2_meta = client.get(f"/v2/models/{MODEL}").json()
        metrics = client.get("/metrics").text
    for p in predictions:
        assert "label" not in p and "score" not in p  # single-label fields are not sent
        scores = [x["score"] for x in p["labels"]]
        assert scores == sorted(scores, reverse=True)
        assert p["out_of_scope"] == (p["labels"] == [])
        assert len(p["top"]) == 3 and set(x["label"] for x in p["top"]) <= set(KEEP)
    # answers are sets: some texts get two labels, some none; the sets are mostly right
    sizes = Counter(len(p["labels"]) for p in predictions)
    assert sizes[0] > 0 and sum(n for k, n in sizes.items() if k >= 2) > 0, sizes
    hits = sum(
        bool({x["label"] for x in p["labels"]} & set(ls))
        for p, (_, ls) in zip(predictions, dev, strict=True)
        if ls
    )
    labeled = sum(1 for _, ls in dev if ls)
    assert hits >= 0.5 * labeled, (hits, labeled)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["chosen"]["datatype"] == "BOOL" and outputs["chosen"]["shape"] == [2, 6]
    assert outputs["probabilities"]["shape"] == [2, 6]
    first = [
        c
        for c, on in zip(
            v2_meta["parameters"]["classes"], outputs["chosen"]["data"][:6], strict=True
        )
        if on
    ]
    assert sorted(outputs["label"]["data"][0].split("|")) == sorted(first) or (
        outputs["label"]["data"][0] == "" and not first
    )
    assert v2_meta["parameters"]["task"] == "multi_label"
    assert {o["name"] for o in v2_meta["outputs"]} >= {"chosen", "probabilities"}
    version = meta["versions"][0]
    assert version["task"] == "multi_label" and set(version["thresholds"]) == set(KEEP)
    assert {"micro_f1", "hamming_loss", "accuracy", "macro_f1"} <= set(version["metrics"])
    assert f'refit_predictions_total{{label="gratitude",model="{MODEL}"' in metrics


def test_feedback_of_the_wrong_kind_is_refused(server: Server, trained: dict) -> None:
    with server.client() as client:
        r = client.post(
            "/feedback",
            json={"examples": [{"text": "thanks!", "label": "gratitude"}], "model": MODEL},
        )
        assert r.status_code == 400, r.text
        assert "is multi-label" in r.json()["error"] and "labels" in r.json()["fix"]
        r = client.post(
            "/feedback", json={"examples": [{"text": "where is my card", "labels": ["a"]}]}
        )
        assert r.status_code == 400 and "is single-label" in r.json()["error"], r.text
        both = {"text": "x", "label": "a", "labels": ["a"]}
        r = client.post("/feedback", json={"examples": [both], "model": MODEL})
        assert r.status_code == 422 and "exactly one" in r.text, r.text
        mixed = [{"text": "a b", "labels": ["love"]}, {"text": "c d", "label": "love"}]
        r = submit(client, {"examples": mixed, "model": "ml-mixed", "mode": "replace"})
        assert r.status_code == 400 and "examples[1]: has one `label`" in r.text, r.text
        csv = "text,labels\nso kind of you,gratitude|love\nthanks,gratitude\n"
        r = client.post(
            "/retrain/submit?model=ml-csv&mode=replace",
            content=csv,
            headers={"content-type": "text/csv"},
        )
        assert r.status_code == 400 and "need at least 2 labels" in r.text, r.text
        r = client.post(
            "/feedback",
            json={"examples": [{"text": "ok | then", "labels": ["a|b"]}], "model": MODEL},
        )
        assert r.status_code == 400 and "label-set separator" in r.text, r.text


def test_feedback_retrains_and_swaps_under_load_beside_a_single_label_model(
    server: Server, trained: dict
) -> None:
    before = trained["result"]["version"]
    teach = rows("train", 8, seed=3)
    failures: list[str] = []
    kinds: Counter = Counter()
    stop = threading.Event()

    def load(model: str | None) -> None:
        with server.client() as client:
            while not stop.is_set():
                body = {"texts": ["thank you so much", "I am so angry"]}
                if model:
                    body["model"] = model
                try:
                    r = client.post("/predict", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                p = r.json()["predictions"][0]
                kinds[(model, "labels" in p, "label" in p)] += 1

    threads = [threading.Thread(target=load, args=(m,)) for m in (MODEL, None)]
    for t in threads:
        t.start()
    try:
        with server.client() as client:
            with_ids = client.post(
                "/predict", json={"texts": [t for t, _ in teach], "model": MODEL}
            ).json()["predictions"]
            feedback = [
                {"text": t, "labels": ls, "prediction_id": p["id"]}
                for (t, ls), p in zip(teach, with_ids, strict=True)
            ]
            r = client.post("/feedback", json={"examples": feedback, "model": MODEL})
            assert r.status_code == 200, r.text
            job = train(
                client,
                {
                    "examples": [{"text": "cheers, thanks", "labels": ["gratitude"]}],
                    "strategy": "feature_extraction",
                },
            )
            after = job["result"]["version"]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                r = client.post("/predict", json={"texts": ["thanks"], "model": MODEL})
                if r.json()["version"] == after:
                    break
                time.sleep(0.3)
            assert r.json()["version"] == after != before
            live = client.get(f"/models/{MODEL}").json()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    # every answer had its model's kind: sets for the multi-label model, labels for the other
    assert set(kinds) == {(MODEL, True, False), (None, False, True)}, kinds
    assert job["result"]["examples"] > trained["result"]["examples"]
    # the feedback was linked to served predictions: live subset accuracy of that version
    assert live["live_accuracy"].get(before, {}).get("labeled", 0) > 0, live["live_accuracy"]
