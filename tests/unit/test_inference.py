"""The shared inference loop: buckets by length, pads each bucket to its own longest text,
and gives rows back in the caller's order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models._inference import predict_proba, top_labels, unpadded


class Tokenizer:
    """Token ids = one id per word (the word's length), like an unpadded `tokenizers` one."""

    padding = {"pad_id": 7}

    def no_padding(self) -> None:
        self.padding = None

    def encode_batch(self, texts: list[str]) -> list[SimpleNamespace]:
        return [SimpleNamespace(ids=[len(w) for w in t.split()]) for t in texts]


class Session:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        self.calls.append(ids.shape)
        assert ((ids == 7) == (mask == 0)).all()  # padding exactly where the mask is 0
        tokens = mask.sum(1).astype(np.float32)
        return [np.stack([tokens, (ids * mask).sum(1).astype(np.float32)], axis=1)]


def test_rows_come_back_in_order_and_each_bucket_pads_to_its_own_longest() -> None:
    tokenizer = Tokenizer()
    assert unpadded(tokenizer) == 7 and tokenizer.padding is None
    texts = [" ".join(["word"] * n) for n in (30, 1, 5, 2, 40, 3, 1, 8)]
    session = Session()
    out = predict_proba(session, tokenizer, texts, pad_id=7, bucket=3)
    assert out[:, 0].tolist() == [30, 1, 5, 2, 40, 3, 1, 8]  # tokens per text, in order
    assert out[:, 1].tolist() == [4 * n for n in (30, 1, 5, 2, 40, 3, 1, 8)]
    # sorted lengths 1 1 2 | 3 5 8 | 30 40: three calls, each as wide as its longest text
    assert session.calls == [(3, 2), (3, 8), (2, 40)]


def test_a_small_batch_is_one_call() -> None:
    session = Session()
    out = predict_proba(session, Tokenizer(), ["a b", "c"], pad_id=7)
    assert session.calls == [(2, 2)] and out[:, 0].tolist() == [2, 1]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 19, 20])
def test_top_labels_match_a_full_stable_sort_ties_included(k: int) -> None:
    rng = np.random.default_rng(k)
    probs = rng.dirichlet(np.ones(20), size=7).astype(np.float32)
    probs[:, [3, 11, 17]] = 1.0  # exact ties (saturated sigmoids in multi-label rows)
    probs[0] = 0.05  # a row that is all ties
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    assert top_labels(probs, k).tolist() == expected.tolist()
