"""Query strategies: which unlabeled texts are worth a label first (active learning).

One home for the ranking the labeling queue serves and `bench/active_learning.py` measures:

- `margin` (breaking ties): 1 - (p1 - p2), the two most probable classes closest together.
- `entropy`: the entropy of the predicted distribution (normalised by log of the classes).
- `diverse`: the `CANDIDATES` x batch most uncertain by margin, then a greedy k-center
  walk on their sentence embeddings, starting from the most uncertain, so one batch does
  not ask for twenty paraphrases of the same question (Sener & Savarese 2018's k-center on
  an uncertainty-filtered pool, as in small-text's "embedding k-means/k-center" family).

Multi-label models: margin is how close the nearest label is to its own threshold, entropy
the summed binary entropies. Numpy only: the serving side imports it.
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("margin", "entropy", "diverse")
DEFAULT_STRATEGY = "margin"  # best on the dev splits of bench/active_learning.py
CANDIDATES = 10  # diverse: candidates per queried item, taken by margin


def uncertainty(
    probs: np.ndarray, strategy: str, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Per row, how much a label is worth (higher first), in [0, 1]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if thresholds is not None:  # multi-label: one sigmoid per label
        if strategy == "entropy":
            q = np.clip(1.0 - p, 1e-12, 1.0)
            return (-(p * np.log2(p) + q * np.log2(q))).mean(axis=1)
        distance = np.abs(p - thresholds[None, :]).min(axis=1)
        return 1.0 - np.minimum(1.0, 2.0 * distance)
    if strategy == "entropy":
        classes = p.shape[1]
        return -(p * np.log(p)).sum(axis=1) / (np.log(classes) if classes > 1 else 1.0)
    if p.shape[1] < 2:
        return np.zeros(len(p))
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def rank(
    scores: np.ndarray,
    count: int,
    *,
    diverse: bool = False,
    embeddings: np.ndarray | None = None,
    first: np.ndarray | None = None,
) -> list[int]:
    """The indices of the `count` rows to ask about, in order: the most uncertain first
    (`scores` from `uncertainty`), rows flagged in `first` (answered out of scope, or where
    the shadow disagreed) before every other row, and with `diverse` the rest spread over
    the embedding space (k-center on the `CANDIDATES` x count most uncertain)."""
    n = len(scores)
    count = min(count, n)
    if count <= 0:
        return []
    flags = np.asarray(first, dtype=bool) if first is not None else np.zeros(n, dtype=bool)
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), ~flags))
    if not diverse or embeddings is None:
        return order[:count].tolist()
    flagged = min(int(flags.sum()), count)
    picked = order[:flagged].tolist()
    if flagged == count:
        return picked
    candidates = order[flagged:][: (count - flagged) * CANDIDATES]
    chosen = k_center(embeddings[candidates], count - flagged, start=0)
    return picked + candidates[chosen].tolist()


def k_center(vectors: np.ndarray, count: int, *, start: int = 0) -> np.ndarray:
    """Greedy k-center (farthest-point) selection on cosine distance: `count` row indices,
    beginning with `start`."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    count = min(count, len(x))
    chosen = [start]
    nearest = 1.0 - x @ x[start]
    for _ in range(count - 1):
        nearest[chosen] = -np.inf
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, 1.0 - x @ x[nxt])
    return np.asarray(chosen, dtype=np.int64)
