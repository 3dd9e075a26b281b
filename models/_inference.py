"""Tokens in, (calibrated) probabilities out: the one inference loop the service, the evaluation and the
benchmarks share. Duck-typed on an onnxruntime session and a `tokenizers.Tokenizer` (no
import of either here: `models` stays free of runtimes).

Texts of a batch are encoded without padding, sorted by length and run in buckets of at
most `BUCKET` texts, each padded only to its own longest text. With short and long texts
mixed, padding everything to the longest text wastes most of the work: on 32-text batches
of Banking77 this doubled int8 throughput and raised fp32's by ~70% (one run, 1 thread).
fp32 results do not depend on the bucketing (masked padding); dynamic int8 scales its
activations per call, so a text's int8 probabilities vary slightly with its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models._detector import Detector

BUCKET = 16


def unpadded(tokenizer: Any) -> int:
    """Turn off the tokenizer's own padding (buckets are padded here); returns the pad id."""
    padding = tokenizer.padding or {}
    tokenizer.no_padding()
    return int(padding.get("pad_id", 0))


@dataclass(frozen=True)
class Scored:
    """A batch's calibrated probabilities and, per text, whether it is out of scope (all
    False for a version without a detector). Multi-label versions: a sigmoid probability
    per label, `chosen` the labels at or above their thresholds, and out of scope = none."""

    probabilities: np.ndarray
    out_of_scope: np.ndarray
    chosen: np.ndarray | None = None  # (texts, labels) bool: multi-label versions only

    def rows(self, start: int, stop: int) -> Scored:
        chosen = self.chosen[start:stop] if self.chosen is not None else None
        return Scored(self.probabilities[start:stop], self.out_of_scope[start:stop], chosen)


def score(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pad_id: int,
    temperature: float = 1.0,
    detector: Detector | None = None,
    thresholds: np.ndarray | None = None,
    bucket: int = BUCKET,
) -> Scored:
    """What `/predict` serves: calibrated probabilities and the out-of-scope decision, from
    one run of the graph (`thresholds`: a multi-label version's, per label)."""
    if thresholds is not None:  # the graph's sigmoid per label, no temperature
        probs = run(
            session, tokenizer, texts, pad_id=pad_id, outputs=("probabilities",), bucket=bucket
        )[0]
        chosen = probs >= thresholds
        return Scored(probs, ~chosen.any(axis=1), chosen)
    if detector is None:
        probs = predict_proba(
            session, tokenizer, texts, pad_id=pad_id, temperature=temperature, bucket=bucket
        )
        return Scored(probs, np.zeros(len(probs), dtype=bool))
    outputs = run(session, tokenizer, texts, pad_id=pad_id, outputs=detector.outputs, bucket=bucket)
    probs = softmax(outputs[0] / temperature)
    return Scored(probs, detector.flags(probs, outputs[1] if len(outputs) > 1 else None))


def score_and_embed(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pad_id: int,
    temperature: float = 1.0,
    detector: Detector | None = None,
    thresholds: np.ndarray | None = None,
) -> tuple[Scored, np.ndarray | None]:
    """`score` and the pooled sentence embeddings from one run of the graph (the labeling
    queue ranks by both); embeddings None for a graph without the `pooled` output."""
    names = {o.name for o in session.get_outputs()}
    if "pooled" not in names:
        return score(
            session,
            tokenizer,
            texts,
            pad_id=pad_id,
            temperature=temperature,
            detector=detector,
            thresholds=thresholds,
        ), None
    if thresholds is not None:
        probs, pooled = run(
            session, tokenizer, texts, pad_id=pad_id, outputs=("probabilities", "pooled")
        )
        chosen = probs >= thresholds
        return Scored(probs, ~chosen.any(axis=1), chosen), pooled
    logits, pooled = run(session, tokenizer, texts, pad_id=pad_id, outputs=("logits", "pooled"))
    probs = softmax(logits / temperature)
    flags = detector.flags(probs, pooled) if detector is not None else np.zeros(len(probs), bool)
    return Scored(probs, flags), pooled


def predict_proba(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pad_id: int,
    bucket: int = BUCKET,
    temperature: float = 1.0,
) -> np.ndarray:
    """Probabilities, calibrated by the version's `temperature` (softmax(logits / T); the
    graph's own softmax output when T is 1): applied here, once, for every consumer."""
    if temperature == 1.0:
        probs = run(
            session, tokenizer, texts, pad_id=pad_id, outputs=("probabilities",), bucket=bucket
        )
        return probs[0]
    logits = run(session, tokenizer, texts, pad_id=pad_id, outputs=("logits",), bucket=bucket)[0]
    return softmax(logits / temperature)


def predict_logits(
    session: Any, tokenizer: Any, texts: Sequence[str], *, pad_id: int, bucket: int = BUCKET
) -> np.ndarray:
    return run(session, tokenizer, texts, pad_id=pad_id, outputs=("logits",), bucket=bucket)[0]


def top_labels(probs: np.ndarray, k: int) -> np.ndarray:
    """Each row's `k` most probable label indices, most probable first, ties by the lower
    index (every answer ranks the same way whatever its k): argmax for k = 1, the usual
    request, and a partial sort when k is small, instead of sorting every label."""
    if k == 1:
        return probs.argmax(axis=1)[:, None]
    if k * 4 < probs.shape[1]:
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        part.sort(axis=1)
        order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def run(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pad_id: int,
    outputs: Sequence[str],
    bucket: int = BUCKET,
) -> list[np.ndarray]:
    """The graph's named `outputs` for `texts`, in the texts' order (bucketed by length)."""
    encodings = [e.ids for e in tokenizer.encode_batch(list(texts))]
    n = len(encodings)
    if n <= bucket:
        return _run(session, encodings, range(n), pad_id, outputs)
    order = sorted(range(n), key=lambda i: len(encodings[i]))
    out: list[np.ndarray] = []
    for start in range(0, n, bucket):
        rows = order[start : start + bucket]
        values = _run(session, encodings, rows, pad_id, outputs)
        if not out:
            out = [np.empty((n, v.shape[1]), dtype=v.dtype) for v in values]
        for target, v in zip(out, values, strict=True):
            target[rows] = v
    return out


def _run(
    session: Any,
    encodings: list[list[int]],
    rows: Sequence[int],
    pad_id: int,
    outputs: Sequence[str],
) -> list[np.ndarray]:
    width = max(len(encodings[i]) for i in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, i in enumerate(rows):
        k = len(encodings[i])
        ids[r, :k] = encodings[i]
        mask[r, :k] = 1
    return session.run(list(outputs), {"input_ids": ids, "attention_mask": mask})
