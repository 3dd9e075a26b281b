"""Out-of-scope answers over HTTP, on a real `bentoml serve`: a banking-intent model trained
with out-of-scope examples (emotion texts) answers unseen intents (trivia questions from
TREC) out of scope on /predict and V2, counts them, and learns them as a new intent from
feedback on the next retrain. Bad settings and data are 400s."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from service.harness.data import banking77_slice, read_banking77, read_shared
from tests.e2e.conftest import Server, submit, wait_job

pytestmark = pytest.mark.slow

MODEL = "oos-e2e"
SIX = sorted({label for _, label in read_banking77("train")})[40:46]
NEW = "trivia_question"


def trivia(n: int, seed: int) -> list[str]:
    rows = [t for t, _ in read_shared("trec", "train")]
    return random.Random(seed).sample(rows, n)


def emotions(n: int) -> list[str]:
    return [t for t, _ in read_shared("emotion", "train")][:n]


def predict(client: httpx.Client, texts: list[str]) -> list[dict]:
    r = client.post("/predict", json={"texts": texts, "model": MODEL, "top_k": 3})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def train(client: httpx.Client, examples: list[dict], mode: str = "append") -> dict:
    r = submit(client, {"examples": examples, "model": MODEL, "mode": mode, "promote": "always"})
    assert r.status_code == 200, r.text
    job, _ = wait_job(client, r.headers["X-Refit-Job-Id"], timeout=600)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def trained(server: Server) -> dict:
    rows = banking77_slice("train", SIX, per_class=10, seed=1)
    examples = [{"text": t, "label": y} for t, y in rows]
    examples += [{"text": t, "label": "out_of_scope"} for t in emotions(40)]
    with server.client() as client:
        return train(client, examples, mode="replace")


def test_unseen_intents_are_answered_out_of_scope(server: Server, trained: dict) -> None:
    detector = trained["result"]["out_of_scope"]
    assert detector["evidence"]["source"] == "out_of_scope_examples"
    assert detector["evidence"]["out_of_scope_count"] == 40
    assert trained["result"]["counts"] == {label: 10 for label in SIX}  # never a class
    in_scope = banking77_slice("test", SIX, per_class=5, seed=0)
    with server.client() as client:
        unseen = predict(client, trivia(30, seed=5))
        known = predict(client, [t for t, _ in in_scope])
        answered = sum(p["out_of_scope"] for p in unseen)
        assert answered >= 24, [p["top"][0] for p in unseen]  # >= 80% of unseen intents
        kept = [p for p in known if not p["out_of_scope"]]
        assert len(kept) >= 0.8 * len(known)
        correct = sum(p["label"] == y for p, (_, y) in zip(known, in_scope, strict=True))
        assert correct >= 0.7 * len(known)
        for p in unseen:
            if p["out_of_scope"]:  # the answer, with the known labels still ranked
                assert p["label"] == "out_of_scope"
                assert len(p["top"]) == 3 and all(t["label"] in SIX for t in p["top"])
                assert p["score"] == p["top"][0]["score"]
                break
        v2 = client.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [2],
                        "data": ["Who wrote Hamlet ?", in_scope[0][0]],
                    }
                ]
            },
        )
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert outputs["out_of_scope"]["datatype"] == "BOOL"
        assert outputs["out_of_scope"]["data"][1] is False
        label = outputs["label"]["data"]
        assert (label[0] == "out_of_scope") == outputs["out_of_scope"]["data"][0]
        metrics = client.get("/metrics").text
        assert f'refit_predictions_total{{label="out_of_scope",model="{MODEL}"' in metrics


def test_feedback_on_out_of_scope_answers_teaches_a_new_intent(
    server: Server, trained: dict
) -> None:
    questions = trivia(40, seed=9)
    teach, later = questions[:20], questions[20:]
    with server.client() as client:
        answered = predict(client, teach)
        feedback = [
            {"text": t, "label": NEW, "prediction_id": p["id"]}
            for t, p in zip(teach, answered, strict=True)
        ]
        r = client.post("/feedback", json={"examples": feedback, "model": MODEL})
        assert r.status_code == 200, r.text
        assert r.json()["new_labels"] == [NEW]
        job = train(client, [{"text": "Who invented the telephone ?", "label": NEW}])
        assert NEW in job["result"]["counts"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the pool follows the production alias
            r = client.post("/predict", json={"texts": later, "model": MODEL})
            if r.json()["version"] == job["result"]["version"]:
                break
            time.sleep(0.5)
        learned = r.json()["predictions"]
    assert sum(p["label"] == NEW for p in learned) >= 0.7 * len(later), (
        [(p["label"], p["top"][0]) for p in learned],
        job["result"]["out_of_scope"],
    )


def test_out_of_scope_settings_and_data_are_checked(server: Server, trained: dict) -> None:
    with server.client() as client:
        clash = client.put(f"/models/{MODEL}/settings", json={"out_of_scope_label": SIX[0]})
        assert clash.status_code == 400 and SIX[0] in clash.json()["error"], clash.text
        for bad in ({"out_of_scope_target_recall": 0.2}, {"out_of_scope": "sometimes"}):
            r = client.put(f"/models/{MODEL}/settings", json=bad)  # the API's body check: 422
            assert r.status_code == 422 and next(iter(bad)) in r.json()["error"], r.text
        only = [{"text": f"nothing {i}", "label": "out_of_scope"} for i in range(4)]
        r = submit(client, {"examples": only, "model": "oos-only", "mode": "replace"})
        assert r.status_code == 400 and "out of scope" in r.json()["error"], r.text
        near = [{"text": t, "label": y} for t, y in banking77_slice("train", SIX[:2], 3)]
        near += [
            {"text": "x y z", "label": "Out_Of_Scope"},
            {"text": "z y x", "label": "Out_Of_Scope"},
        ]
        r = submit(client, {"examples": near, "model": "oos-near", "mode": "replace"})
        assert r.status_code == 400 and "looks like the out-of-scope label" in r.text, r.text
