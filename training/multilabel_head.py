"""Multi-label pieces: the one-vs-rest probe, per-label thresholds, the fine-tuning objective
and the noise-aware comparison of two candidates.

- Probe: one L2 logistic regression per label (balanced class weights) on the frozen
  embeddings; sigmoid(w.x + b) per label is exactly what the exported linear layer + sigmoid
  computes, so the coefficients are copied into the head (no pickle). C is chosen by 3-fold
  out-of-fold macro-F1 on the training split when it is small (<= 3,000 rows), else on
  validation, each at thresholds tuned on the same probabilities.
- Thresholds: the global threshold is the one value maximising micro-F1 over all labels on
  held-out probabilities; a label with at least `MIN_TUNED_POSITIVES` positives there gets
  its own, maximising its F1 curve shrunk toward the micro-F1 curve (weight n / (n + 10)
  for n positives); rarer labels take the global threshold.
- Comparison: paired bootstrap over validation examples of macro-F1, each candidate at
  thresholds chosen the same way on validation alone (the probe's own also saw its
  out-of-fold predictions: compared so, it would be judged on better-tuned thresholds);
  the challenger is kept unless the probe is better beyond noise (the 95% interval of the
  difference lies below 0), the rule single-label models follow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

log = logging.getLogger(__name__)

MIN_TUNED_POSITIVES = 5
# a label's F1 curve is shrunk toward the micro-F1 curve of all labels with this weight (in
# positives): with few positives a label's own curve is mostly noise, and its best threshold
# is often "predict it almost always" (a threshold of 0.02 maximised F1 on 8 positives)
SHRINK_POSITIVES = 10
GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def label_f1(y: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """F1 per label (0 where a label has no positives and none predicted)."""
    y, chosen = y.astype(bool), chosen.astype(bool)
    tp = (y & chosen).sum(0)
    return _f1(tp, (~y & chosen).sum(0), (y & ~chosen).sum(0))


def macro_f1(y: np.ndarray, chosen: np.ndarray) -> float:
    """Mean F1 over the labels with a positive in `y` (labels absent there are not scored)."""
    present = y.sum(0) > 0
    return float(label_f1(y, chosen)[present].mean()) if present.any() else 0.0


def micro_f1(y: np.ndarray, chosen: np.ndarray) -> float:
    y, chosen = y.astype(bool), chosen.astype(bool)
    tp = float((y & chosen).sum())
    return float(
        _f1(
            np.array(tp), np.array(float((~y & chosen).sum())), np.array(float((y & ~chosen).sum()))
        )
    )


@dataclass(frozen=True)
class Thresholds:
    values: np.ndarray  # (labels,)
    global_threshold: float
    tuned: np.ndarray  # bool per label: its own threshold (else the global one)
    tuned_on: str
    count: int  # held-out rows the choice rests on

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.values


def choose_thresholds(probs: np.ndarray, y: np.ndarray, *, tuned_on: str) -> Thresholds:
    y = y.astype(bool)
    above = probs[:, :, None] >= GRID[None, None, :]  # rows x labels x grid
    tp = (above & y[:, :, None]).sum(0)
    fp = (above & ~y[:, :, None]).sum(0)
    fn = (~above & y[:, :, None]).sum(0)
    per_label = _f1(tp, fp, fn)  # labels x grid
    micro = _f1(tp.sum(0), fp.sum(0), fn.sum(0))
    global_threshold = float(GRID[int(np.argmax(micro))])
    positives = y.sum(0)
    tuned = positives >= MIN_TUNED_POSITIVES
    values = np.full(y.shape[1], global_threshold, dtype=np.float32)
    for j in np.flatnonzero(tuned):
        weight = positives[j] / (positives[j] + SHRINK_POSITIVES)
        curve = weight * per_label[j] + (1 - weight) * micro
        best = curve.max()
        # among equally good thresholds, the one nearest the global threshold
        ties = np.flatnonzero(curve >= best - 1e-12)
        values[j] = GRID[ties[np.argmin(np.abs(GRID[ties] - global_threshold))]]
    return Thresholds(values, global_threshold, tuned, tuned_on, len(y))


@dataclass(frozen=True)
class MultiHead:
    weight: np.ndarray  # (labels, dim)
    bias: np.ndarray
    c: float
    selection: str  # cross-validation | validation
    selection_score: float  # the chosen C's macro-F1 at tuned thresholds
    search: dict[str, float]
    # held-out probabilities of the chosen C on the training split (cross-validation only)
    oof_probs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def probs(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(x @ self.weight.T + self.bias)


def _fit(c: float, x: np.ndarray, y: np.ndarray, max_iter: int, seed: int):
    """(weight, bias) per label; a label constant in `y` gets a constant logit."""
    dim, labels = x.shape[1], y.shape[1]
    weight = np.zeros((labels, dim), dtype=np.float32)
    bias = np.zeros(labels, dtype=np.float32)
    for j in range(labels):
        column = y[:, j]
        if column.min() == column.max():
            bias[j] = 8.0 if column[0] else -8.0
            continue
        model = LogisticRegression(
            C=c, class_weight="balanced", max_iter=max_iter, random_state=seed, tol=1e-4
        ).fit(x, column)
        weight[j], bias[j] = model.coef_[0], model.intercept_[0]
    return weight, bias


def fit_multi_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    c_grid: tuple[float, ...],
    max_iter: int,
    seed: int,
    cv_max_examples: int = 3000,
    cv_folds: int = 3,
    on_step=None,
) -> MultiHead:
    use_cv = len(y_train) <= cv_max_examples and len(y_train) >= 2 * cv_folds
    fold_of = np.random.default_rng(seed).permutation(len(y_train)) % cv_folds
    search: dict[str, float] = {}
    best: tuple[float, float, Any, np.ndarray | None] | None = None
    for step, c in enumerate(c_grid, start=1):
        started = time.perf_counter()
        fitted = None
        oof = None
        if use_cv:
            oof = np.zeros(y_train.shape, dtype=np.float32)
            for f in range(cv_folds):
                held = fold_of == f
                w, b = _fit(c, x_train[~held], y_train[~held], max_iter, seed)
                oof[held] = sigmoid(x_train[held] @ w.T + b)
            evidence, y_evidence = oof, y_train
        else:
            fitted = _fit(c, x_train, y_train, max_iter, seed)
            evidence, y_evidence = sigmoid(x_val @ fitted[0].T + fitted[1]), y_val
        thresholds = choose_thresholds(evidence, y_evidence, tuned_on="search")
        score = macro_f1(y_evidence, thresholds.apply(evidence))
        search[f"{c:g}"] = round(score, 6)
        log.info(
            "multi-label probe C=%g: %s macro-F1 %.4f (%.1f s)",
            c,
            "cross-validated" if use_cv else "validation",
            score,
            time.perf_counter() - started,
        )
        if best is None or score > best[0]:
            best = (score, c, fitted, oof)
        if on_step is not None:
            on_step(step, len(c_grid), f"head C={c:g} macro-F1 {score:.4f}")
    assert best is not None
    score, c, fitted, oof = best
    weight, bias = fitted if fitted is not None else _fit(c, x_train, y_train, max_iter, seed)
    return MultiHead(
        weight,
        bias,
        c,
        "cross-validation" if use_cv else "validation",
        round(score, 6),
        search,
        oof,
    )


def best_global_micro_f1(y: np.ndarray, probs: np.ndarray) -> float:
    """Validation micro-F1 at the best single threshold: what fine-tuning stops on."""
    return max(micro_f1(y, probs >= t) for t in GRID[::2])


def multi_label_objective():
    """Binary cross-entropy per label; validation judged on micro-F1 (best global threshold)."""
    import torch

    from training.finetune import Objective

    return Objective(
        "micro_f1",
        lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()),
        sigmoid,
        best_global_micro_f1,
    )


@dataclass(frozen=True)
class MultiComparison:
    n: int
    probe_macro_f1: float
    challenger_macro_f1: float
    delta_ci: tuple[float, float]  # 95% paired-bootstrap interval of challenger - probe

    @property
    def probe_better(self) -> bool:
        return self.delta_ci[1] < 0

    def summary(self) -> str:
        return (
            f"validation macro-F1 fine-tuning {self.challenger_macro_f1:.4f} vs probe"
            f" {self.probe_macro_f1:.4f} on {self.n} examples (95% paired-bootstrap interval of"
            f" the difference [{self.delta_ci[0]:+.4f}, {self.delta_ci[1]:+.4f}])"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "probe_macro_f1": round(self.probe_macro_f1, 6),
            "fine_tuning_macro_f1": round(self.challenger_macro_f1, 6),
            "delta_ci": [round(v, 6) for v in self.delta_ci],
            "probe_better_beyond_noise": self.probe_better,
        }


def paired_bootstrap(
    y: np.ndarray, probe: np.ndarray, challenger: np.ndarray, *, seed: int, rounds: int = 300
) -> MultiComparison:
    """`probe` and `challenger`: chosen-label matrices on the same validation rows."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        deltas.append(macro_f1(y[idx], challenger[idx]) - macro_f1(y[idx], probe[idx]))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return MultiComparison(
        len(y), macro_f1(y, probe), macro_f1(y, challenger), (float(low), float(high))
    )
