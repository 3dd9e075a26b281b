"""The labeling queue's state (service/stores/queue.py) on a real SQLite file, the query
strategies (service/ranking.py), unlabeled uploads and the label-error rule."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from models.data import DataError
from models.unlabeled import parse_texts
from service.ranking import k_center, rank, uncertainty
from service.stores import Store
from service.stores.queue import Answer, QueueError
from training.suspects import find_suspects


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "refit.sqlite")


def scored(store: Store, model: str, version: str, margins: dict[int, float]) -> None:
    store.queue.set_scores(
        [
            {
                "id": i,
                "version": version,
                "label": "x",
                "score": 1 - m,
                "margin": m,
                "entropy": m,
                "embedding": None,
                "out_of_scope": False,
            }
            for i, m in margins.items()
        ]
    )


def test_items_are_deduplicated_per_model_and_scored_per_version(store: Store) -> None:
    assert store.queue.add("m", [{"text": t, "source": "pool"} for t in ("a", "b", "a")]) == 2
    assert store.queue.add("m", [{"text": "b", "source": "traffic"}]) == 0
    assert store.queue.add("other", [{"text": "a", "source": "pool"}]) == 1
    stale = store.queue.stale("m", "v1", 10)
    assert [t for _, t in stale] == ["a", "b"]
    scored(store, "m", "v1", {stale[0][0]: 0.9})
    assert [t for _, t in store.queue.stale("m", "v1", 10)] == ["b"]
    assert [t for _, t in store.queue.stale("m", "v2", 10)] == ["a", "b"]  # a new version
    counts = store.queue.counts("m", "v1", now=time.time())
    assert counts == {"open": 2, "answered": 0, "skipped": 0, "leased": 0, "unscored": 1}


def test_a_lease_goes_to_one_annotator_and_answers_are_feedback(store: Store) -> None:
    store.queue.add(
        "m", [{"text": f"t{i}", "source": "pool", "prediction_id": f"p{i}"} for i in range(5)]
    )
    ids = [i for i, _ in store.queue.stale("m", "v1", 10)]
    token_a, leased_a = store.queue.lease("m", ids, "alice", seconds=60, limit=2)
    token_b, leased_b = store.queue.lease("m", ids, "bob", seconds=60, limit=2)
    assert leased_a == ids[:2] and leased_b == ids[2:4]
    with pytest.raises(QueueError) as held:
        store.queue.answer("m", [Answer(ids[0], "x")], annotator="bob", token=token_b)
    assert held.value.status == 409 and "leased to alice" in str(held.value)
    # all or nothing: the second answer's conflict leaves the first unwritten
    with pytest.raises(QueueError):
        store.queue.answer(
            "m", [Answer(ids[1], "x"), Answer(ids[2], "y")], annotator="alice", token=token_a
        )
    assert store.examples.dataset("m") == []
    pending = store.queue.answer(
        "m", [Answer(ids[0], "x"), Answer(ids[1], None)], annotator="alice", token=token_a
    )
    assert pending == 1 and store.examples.dataset("m") == [("t0", "x")]
    with pytest.raises(QueueError) as again:
        store.queue.answer("m", [Answer(ids[0], "y")], annotator="alice", token=token_a)
    assert again.value.status == 409 and "already answered by alice" in str(again.value)
    with pytest.raises(QueueError) as missing:
        store.queue.answer("m", [Answer(10**6, "y")], annotator="alice", token=None)
    assert missing.value.status == 404
    # an expired lease frees the item for anyone
    store.queue.lease("m", [ids[4]], "carol", seconds=-1, limit=1)
    assert store.queue.answer("m", [Answer(ids[4], "z")], annotator="bob", token=None) == 2


def test_undo_reopens_until_a_retrain_used_the_answer(store: Store) -> None:
    store.queue.add("m", [{"text": t, "source": "pool"} for t in ("a", "b")])
    a, b = (i for i, _ in store.queue.stale("m", "v1", 10))
    store.queue.answer("m", [Answer(a, "x"), Answer(b, "y")], annotator="u", token=None)
    token, pending = store.queue.undo("m", a, "u", seconds=60)
    assert pending == 1 and store.examples.dataset("m") == [("b", "y")]
    assert store.queue.items("m", [a])[0]["lease_owner"] == "u"
    with pytest.raises(QueueError):
        store.queue.undo("m", a, "u", seconds=60)  # open: nothing to undo
    job = store.jobs.create_job("m", {}, [("c", "x")], mode="append", source="t")
    store.jobs.finish(job.id, "succeeded", result={})
    with pytest.raises(QueueError) as used:
        store.queue.undo("m", b, "u", seconds=60)
    assert used.value.status == 409 and "trained on already" in str(used.value)


def test_served_texts_expire_and_deleting_a_model_clears_its_queue(store: Store) -> None:
    now = time.time()
    store.queue.add("m", [{"text": "old", "source": "traffic", "expires_at": now - 1}])
    store.queue.add("m", [{"text": "new", "source": "traffic", "expires_at": now + 60}])
    store.queue.add("m", [{"text": "pool", "source": "pool"}])
    assert store.queue.purge(now) == 1
    assert sorted(t for _, t in store.queue.stale("m", "v", 10)) == ["new", "pool"]
    assert store.delete_model("m")["queue"] == 2


def test_margin_entropy_and_diverse_rankings() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33], [0.5, 0.5, 0.0]])
    margin = uncertainty(probs, "margin")
    assert np.round(margin, 2).tolist() == [0.15, 0.95, 0.99, 1.0]
    entropy = uncertainty(probs, "entropy")
    assert rank(entropy, 2) == [2, 1] and rank(margin, 2) == [3, 2]
    # flagged rows (out of scope, shadow disagreements) come first
    assert rank(margin, 2, first=np.array([True, False, False, False])) == [0, 3]
    # diverse: of two near-duplicates, only one is asked about
    vectors = np.array([[1, 0], [0.99, 0.01], [0, 1], [0.7, 0.7]])
    scores = np.array([0.99, 0.98, 0.5, 0.1])
    assert rank(scores, 2) == [0, 1]
    assert rank(scores, 2, diverse=True, embeddings=vectors) == [0, 2]
    assert k_center(vectors, 3).tolist() == [0, 2, 3]
    # multi-label: the label nearest its own threshold decides
    thresholds = np.array([0.5, 0.3])
    ml = uncertainty(np.array([[0.9, 0.0], [0.52, 0.9]]), "margin", thresholds)
    assert ml[1] > ml[0]


def test_unlabeled_uploads_are_checked_like_retrain_texts() -> None:
    assert parse_texts(b"id,text\n1,hello\n2, hello \n3,bye\n", "csv") == (["hello", "bye"], 1)
    assert parse_texts(b'{"text": "a"}\n\n{"text": "b"}\n', "jsonl") == (["a", "b"], 0)
    assert parse_texts(b'{"texts": ["a", "a"]}', "json") == (["a"], 1)
    with pytest.raises(DataError, match="`text` column"):
        parse_texts(b"label\nx\n", "csv")
    with pytest.raises(DataError, match="line 2: empty text"):
        parse_texts(b'{"text": "a"}\n{"text": " "}\n', "jsonl")
    with pytest.raises(DataError, match="undecodable"):
        parse_texts(b"text\n\xff\n", "csv")


def test_confident_learning_flags_the_label_the_probe_doubts() -> None:
    probs = np.array(
        [
            [0.9, 0.1],  # labeled 0, fine
            [0.8, 0.2],  # labeled 0, fine
            [0.1, 0.9],  # labeled 0, the probe is sure it is 1: a suspect
            [0.2, 0.8],  # labeled 1, fine
            [0.3, 0.7],  # labeled 1, fine
            [0.55, 0.45],  # labeled 1, unsure: not confident enough in 0 to flag
        ]
    )
    y = np.array([0, 0, 0, 1, 1, 1])
    found = find_suspects(probs, y)
    assert [(s["index"], s["suggested"]) for s in found] == [(2, 1)]
    assert found[0]["given_probability"] == 0.1
