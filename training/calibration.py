"""Calibrated scores: temperature scaling (Guo et al. 2017) fitted on held-out logits, and
the two numbers that say whether it helped — expected calibration error (15 equal-width
bins of the top score, the usual protocol) and the Brier score.

One parameter, fitted by minimising the negative log-likelihood over log T with a
golden-section search (hand-written: 15 lines, and `models`/`training` need no optimiser
for one bounded scalar). The argmax never changes, so accuracy and macro-F1 do not either.
"""

from __future__ import annotations

import math

import numpy as np

from models import Calibration
from models._inference import softmax

BINS = 15
MIN_EXAMPLES = 20  # fewer held-out examples than this: no fit (it would be noise)
T_RANGE = (0.05, 20.0)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def calibrate(logits: np.ndarray, y: np.ndarray, *, fitted_on: str = "validation") -> Calibration:
    """The temperature for these held-out logits, with ECE and Brier before and after; T = 1
    (said why) when there are too few examples or the fit does not lower the NLL."""
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y)
    before = softmax(logits)
    common = {
        "fitted_on": fitted_on,
        "count": int(len(y)),
        "ece_before": round(ece(before, y), 6),
        "brier_before": round(brier(before, y), 6),
    }
    if len(y) < MIN_EXAMPLES:
        return Calibration(
            method="none",
            reason=f"{len(y)} held-out examples, fewer than {MIN_EXAMPLES}: not calibrated",
            ece_after=common["ece_before"],
            brier_after=common["brier_before"],
            **common,
        )
    temperature = fit_temperature(logits, y)
    if nll(logits, y, temperature) >= nll(logits, y, 1.0):
        temperature = 1.0
    after = softmax(logits / temperature)
    return Calibration(
        method="temperature",
        temperature=round(temperature, 6),
        ece_after=round(ece(after, y), 6),
        brier_after=round(brier(after, y), 6),
        reason=f"temperature {temperature:.3f} fitted on {len(y)} {fitted_on} examples (NLL)",
        **common,
    )
