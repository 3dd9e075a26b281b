"""The feature-extraction head: multinomial L2 logistic regression on frozen embeddings.

scikit-learn fits it; its coefficients are copied into the torch linear layer, so the
exported ONNX graph is encoder + pooling + head and no pickle is ever written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearHead:
    weight: np.ndarray  # (num_labels, dim)
    bias: np.ndarray  # (num_labels,)
    c: float
    validation_macro_f1: float
    search: dict[str, float]  # C -> validation macro-F1


def _to_softmax_params(model: LogisticRegression, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    coef = model.coef_.astype(np.float32)
    bias = model.intercept_.astype(np.float32)
    if num_labels == 2 and coef.shape[0] == 1:
        # Binary LR is sigmoid(w.x + b) == softmax([0, w.x + b])[1].
        coef = np.vstack([np.zeros_like(coef), coef])
        bias = np.concatenate([np.zeros(1, np.float32), bias])
    return coef, bias


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_labels: int,
    *,
    c_grid: tuple[float, ...],
    max_iter: int,
    seed: int,
    on_step=None,
) -> LinearHead:
    """Fit one head per C, keep the best by validation macro-F1 (ties: the first in the grid)."""
    best: tuple[float, LogisticRegression, float] | None = None
    search: dict[str, float] = {}
    for step, c in enumerate(c_grid, start=1):
        started = time.perf_counter()
        model = LogisticRegression(
            C=c, class_weight="balanced", max_iter=max_iter, random_state=seed, tol=1e-4
        )
        model.fit(x_train, y_train)
        # predict via our own argmax over the softmax parameters, as served
        weight, bias = _to_softmax_params(model, num_labels)
        pred = np.argmax(x_val @ weight.T + bias, axis=1)
        score = float(f1_score(y_val, pred, average="macro", zero_division=0))
        search[f"{c:g}"] = round(score, 6)
        log.info(
            "probe C=%g: validation macro-F1 %.4f (%.1f s)", c, score, time.perf_counter() - started
        )
        if best is None or score > best[0]:
            best = (score, model, c)
        if on_step is not None:
            on_step(step, len(c_grid), f"head C={c:g} validation macro-F1 {score:.4f}")
    assert best is not None
    score, model, c = best
    if len(model.classes_) != num_labels:  # every class is in train by construction
        raise AssertionError("probe did not see every class")
    weight, bias = _to_softmax_params(model, num_labels)
    return LinearHead(weight, bias, c, score, search)
