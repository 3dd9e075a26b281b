"""The labeling queue and label-error hints over HTTP, on a real `bentoml serve`: a named
model trained on Banking77 classes with a few labels flipped on purpose; an unlabeled pool
uploaded as CSV, JSONL and JSON; two annotators leasing disjoint items; answers stored as
feedback linked to prediction ids; undo; served texts queued only when the model's
`store_texts` is on; and the flipped examples among the version's suspects."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from tests.conftest import banking77_slice, read_banking77
from tests.e2e.conftest import Server, submit, wait_job

pytestmark = pytest.mark.slow

MODEL = "queue-e2e"
FOUR = sorted({label for _, label in read_banking77("train")})[40:44]
FLIPPED = 4  # training examples given another class's label


@pytest.fixture(scope="module")
def trained(server: Server) -> dict:
    rows = banking77_slice("train", FOUR, per_class=16, seed=3)
    flipped = []
    for k in range(FLIPPED):  # the first example of class k labeled as class k+1
        i = k * 16
        rows[i] = (rows[i][0], FOUR[(k + 1) % len(FOUR)])
        flipped.append(rows[i][0])
    with server.client() as client:
        r = submit(
            client,
            {
                "model": MODEL,
                "mode": "replace",
                "promote": "always",
                "strategy": "feature_extraction",
                "examples": [{"text": t, "label": y} for t, y in rows],
            },
        )
        assert r.status_code == 200, r.text
        job, _ = wait_job(client, r.headers["X-Refit-Job-Id"], timeout=600)
        assert job["state"] == "succeeded", job
    used = {t for t, _ in rows}
    pool = [r for r in banking77_slice("train", FOUR, per_class=None) if r[0] not in used][:60]
    return {"version": job["result"]["version"], "flipped": flipped, "pool": pool}


def upload(client: httpx.Client, body: str, kind: str, model: str = MODEL) -> httpx.Response:
    return client.post(f"/models/{model}/pool", content=body, headers={"content-type": kind})


def test_pool_uploads_are_checked_and_deduplicated(server: Server, trained: dict) -> None:
    pool = trained["pool"]
    with server.client() as client:
        csv_body = "text\n" + "".join(f'"{t}"\n' for t, _ in pool[:30]) + f'"{pool[0][0]}"\n'
        r = upload(client, csv_body, "text/csv")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "model": MODEL,
            "accepted": 30,
            "already_queued": 0,
            "duplicates_dropped": 1,
        }
        jsonl = "".join(json.dumps({"text": t}) + "\n" for t, _ in pool[25:50])
        r = upload(client, jsonl, "application/x-ndjson")
        assert r.json()["accepted"] == 20 and r.json()["already_queued"] == 5, r.text
        r = upload(client, json.dumps({"texts": [t for t, _ in pool[50:]]}), "application/json")
        assert r.json()["accepted"] == len(pool) - 50
        # refused, and nothing stored: bad rows say where, unknown types and models
        before = client.get(f"/models/{MODEL}/queue").json()["counts"]["open"]
        r = upload(client, 'text\nfine text\n"bad\x01text"\n', "text/csv")
        assert r.status_code == 400 and "line 3: text contains" in r.text, r.text
        r = upload(client, "label\nx\n", "text/csv")
        assert r.status_code == 400 and "`text` column" in r.text
        assert upload(client, "hello", "text/plain").status_code == 415
        assert upload(client, "text\nhi\n", "text/csv", model="no-such-model").status_code == 404
        assert server.client(token=None).post(f"/models/{MODEL}/pool").status_code == 401
        assert client.get(f"/models/{MODEL}/queue").json()["counts"]["open"] == before == 60


def test_the_queue_ranks_leases_and_stores_answers_as_feedback(
    server: Server, trained: dict
) -> None:
    truth = dict(trained["pool"])
    with server.client() as alice, server.client() as bob:
        view = alice.get(f"/models/{MODEL}/queue", params={"limit": 60}).json()
        assert view["strategy"] == "margin" and view["version"] == trained["version"]
        assert view["counts"]["unscored"] == 0 and len(view["items"]) == 60
        assert server.client(token=None).get(f"/models/{MODEL}/queue").status_code == 401
        # margin: the first items are closer calls than the last ones
        alice.put(f"/models/{MODEL}/settings", json={"query_strategy": "margin"})
        ranked = alice.get(f"/models/{MODEL}/queue", params={"limit": 60}).json()["items"]
        assert ranked[0]["score"] <= ranked[-1]["score"]
        a = alice.post(f"/models/{MODEL}/queue/next", json={"annotator": "alice", "count": 5})
        b = bob.post(f"/models/{MODEL}/queue/next", json={"annotator": "bob", "count": 5})
        a_items, b_items = a.json()["items"], b.json()["items"]
        assert len(a_items) == len(b_items) == 5
        assert not {i["id"] for i in a_items} & {i["id"] for i in b_items}
        assert [i["id"] for i in a_items] == [i["id"] for i in ranked[:5]]
        first = a_items[0]
        answer = {"id": first["id"], "label": truth[first["text"]]}
        url = f"/models/{MODEL}/queue/answers"
        r = bob.post(
            url, json={"annotator": "bob", "lease": b.json()["lease"], "answers": [answer]}
        )
        assert r.status_code == 409 and "leased to alice" in r.json()["error"], r.text
        lease = a.json()["lease"]
        r = alice.post(url, json={"annotator": "alice", "lease": lease, "answers": [answer]})
        assert r.status_code == 200 and r.json()["answered"] == 1, r.text
        r = alice.post(url, json={"annotator": "alice", "lease": lease, "answers": [answer]})
        assert r.status_code == 409 and "already answered" in r.json()["error"]
        r = alice.post(url, json={"lease": lease, "answers": [{"id": 10**9, "label": FOUR[0]}]})
        assert r.status_code == 404
        second, third = a_items[1], a_items[2]
        # all or nothing: a good answer beside an unknown label stores neither
        both = [
            {"id": second["id"], "label": truth[second["text"]]},
            {"id": third["id"], "label": "no_such_class"},
        ]
        r = alice.post(url, json={"annotator": "alice", "lease": lease, "answers": both})
        assert r.status_code == 400 and "new_label" in r.json()["fix"], r.text
        both[1]["new_label"] = True
        both.append({"id": a_items[3]["id"], "skip": True})
        r = alice.post(url, json={"annotator": "alice", "lease": lease, "answers": both})
        assert r.json() == {**r.json(), "answered": 2, "skipped": 1}, r.text
        # undo the new class: its feedback goes, the item comes back leased to alice
        r = alice.post(f"/models/{MODEL}/queue/{third['id']}/undo", json={"annotator": "alice"})
        assert r.status_code == 200 and r.json()["items"][0]["state"] == "open", r.text
        counts = alice.get(f"/models/{MODEL}/queue").json()["counts"]
        assert (counts["answered"], counts["skipped"]) == (2, 1)
    db = sqlite3.connect(server.home / "refit.sqlite")
    try:
        stored = db.execute(
            "SELECT e.text, e.label FROM examples e JOIN batches b ON e.batch_id = b.id"
            " WHERE b.model = ? AND b.source = 'feedback'",
            (MODEL,),
        ).fetchall()
    finally:
        db.close()
    assert sorted(stored) == sorted(
        [(first["text"], truth[first["text"]]), (second["text"], truth[second["text"]])]
    )


def test_served_texts_are_queued_only_when_store_texts_is_on(server: Server, trained: dict) -> None:
    off = "hello, is this about my card or my account?"
    texts = [
        "what time do you open",
        "the weather is nice today",
        "qwzx plorb fnarg",
        "can you help me",
        "my cat likes the sofa",
        "is it about money",
    ]
    with server.client() as client:
        client.put(f"/models/{MODEL}/settings", json={"store_texts": False})
        time.sleep(5.5)  # the setting is cached for 5 s on the prediction path
        client.post("/predict", json={"texts": [off], "model": MODEL})
        client.put(f"/models/{MODEL}/settings", json={"store_texts": True})
        time.sleep(5.5)
        answers = client.post("/predict", json={"texts": texts, "model": MODEL}).json()
        worth = {
            (t, p["id"])
            for t, p in zip(texts, answers["predictions"], strict=True)
            if p["score"] < 0.5 or p["out_of_scope"]
        }
        assert worth, answers  # off-topic texts: some are uncertain or out of scope
        deadline = time.monotonic() + 90
        queued: set[tuple[str, str]] = set()
        while time.monotonic() < deadline and len(queued) < len(worth):
            time.sleep(1)
            items = client.get(f"/models/{MODEL}/queue", params={"limit": 500}).json()["items"]
            traffic = [i for i in items if i["source"] == "traffic"]
            queued = {(i["text"], i["prediction_id"]) for i in traffic}
        assert queued == worth
        assert all(i["expires_at"] > time.time() + 6 * 86_400 for i in traffic)
        client.put(f"/models/{MODEL}/settings", json={"store_texts": None})


def test_flipped_labels_are_among_the_suspects_and_reviews_are_feedback(
    server: Server, trained: dict
) -> None:
    version = trained["version"]
    with server.client() as client:
        r = client.get(f"/models/{MODEL}/versions/{version}/suspects")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["computed"] and body["training_examples"] > 0
        found = {s["text"]: s for s in body["suspects"]}
        caught = [t for t in trained["flipped"] if t in found]
        assert len(caught) >= FLIPPED - 1, (caught, list(found)[:10])
        assert len(found) <= 3 * FLIPPED  # hints, not half the data
        assert (
            server.client(token=None)
            .get(f"/models/{MODEL}/versions/{version}/suspects")
            .status_code
            == 401
        )
        first = found[caught[0]]
        url = f"/models/{MODEL}/versions/{version}/suspects/{first['index']}"
        r = client.post(url, json={"action": "relabel", "label": first["suggested"]})
        assert r.status_code == 200 and r.json()["label"] == first["suggested"], r.text
        assert client.post(url, json={"action": "relabel", "label": "nope"}).status_code == 400
        assert client.post(url, json={"action": "relabel"}).status_code == 422
        missing = f"/models/{MODEL}/versions/{version}/suspects/999"
        assert client.post(missing, json={"action": "confirm"}).status_code == 404
        again = client.get(f"/models/{MODEL}/versions/{version}/suspects").json()["suspects"]
        assert again[first["index"]]["reviewed"] == first["suggested"]
        view = client.get(f"/models/{MODEL}").json()
        assert view["versions"][0]["suspects"] == len(found)
