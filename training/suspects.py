"""Label-error hints: training examples whose given label a probe that never saw them finds
unlikely while it is confident in another label — the confident-learning rule (Northcutt,
Jiang & Chuang 2021), written here because cleanlab is AGPL.

Per class j, its threshold t_j is the mean out-of-fold probability of j over the examples
labeled j (how sure the probe is of that class where it is right). An example labeled y is a
suspect when another label j reaches t_j, the given label stays under t_y, and j is more
probable than y; the suspects are ranked by p_j - p_y.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_SUSPECTS = 200  # kept in the version's metadata (texts included)
MAX_ROWS = 20_000  # beyond this, out-of-fold probes cost more than a hint is worth


def find_suspects(probs: np.ndarray, y: np.ndarray, *, limit: int = MAX_SUSPECTS) -> list[dict]:
    """`{index, suggested, given_probability, suggested_probability}` per suspect, the most
    likely errors first (indices into `y`, class ids)."""
    n, k = probs.shape
    given = probs[np.arange(n), y]
    thresholds = np.ones(k)
    for j in range(k):
        mine = y == j
        if mine.any():
            thresholds[j] = float(probs[mine, j].mean())
    above = probs >= thresholds[None, :]
    above[np.arange(n), y] = False
    masked = np.where(above, probs, -1.0)
    suggested = masked.argmax(axis=1)
    best = masked[np.arange(n), suggested]
    flagged = (best > given) & (given < thresholds[y])
    order = sorted(np.flatnonzero(flagged).tolist(), key=lambda i: given[i] - best[i])
    return [
        {
            "index": i,
            "suggested": int(suggested[i]),
            "given_probability": round(float(given[i]), 4),
            "suggested_probability": round(float(best[i]), 4),
        }
        for i in order[:limit]
    ]


def suspects_of(bench: Any) -> list[dict[str, Any]] | None:
    """The training split's suspects with texts and label names, from the probe's own
    cross-validation when it ran, else a 3-fold cross-fit at the chosen options; None when
    there is no out-of-fold evidence to be had (multi-label, a class with one example, or a
    training split past MAX_ROWS)."""
    from training.head import out_of_fold_logits

    head, y = bench.head, bench.y_train
    if head is None or y.ndim != 1:
        return None
    logits = head.oof_logits
    if logits is None:
        if len(y) > MAX_ROWS or np.bincount(y, minlength=len(bench.labels)).min() < 2:
            return None
        c = bench.config
        names = bench.name_vectors if head.label_names else None
        logits = out_of_fold_logits(
            head.c,
            bench.x_train,
            y,
            len(bench.labels),
            names=names,
            max_iter=c.head_max_iter,
            seed=c.seed,
        )
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    found = find_suspects(probs, y)
    log.info("label-error hints: %d of %d training examples", len(found), len(y))
    return [
        {
            "text": bench.train_set.texts[s["index"]],
            "label": bench.labels[int(y[s["index"]])],
            "suggested": bench.labels[s["suggested"]],
            "label_probability": s["given_probability"],
            "suggested_probability": s["suggested_probability"],
        }
        for s in found
    ]
