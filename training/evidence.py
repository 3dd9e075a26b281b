"""Noise-aware comparisons on a validation split: is one model really better than another?

Two models scored on the same validation examples are compared *paired*: only the examples
where they disagree carry evidence (McNemar's test, exact binomial form), and a seeded
paired bootstrap gives an interval for the macro-F1 difference. The policy keeps the
model its prior favours unless the other one is better beyond noise (see docs/policy.md).
scipy does the binomial test; the bootstrap is ten lines of numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score

ALPHA = 0.05


@dataclass(frozen=True)
class PairedComparison:
    n: int
    a_macro_f1: float
    b_macro_f1: float
    a_only_right: int  # examples A gets right and B wrong
    b_only_right: int
    p_value: float  # exact McNemar, two-sided
    delta_ci: tuple[float, float]  # 95% paired-bootstrap interval of macro-F1(B) - macro-F1(A)

    def b_better(self, alpha: float = ALPHA) -> bool:
        return self.b_only_right > self.a_only_right and self.p_value < alpha

    def a_better(self, alpha: float = ALPHA) -> bool:
        return self.a_only_right > self.b_only_right and self.p_value < alpha

    def summary(self, a: str, b: str, basis: str = "validation") -> str:
        return (
            f"{basis} macro-F1 {b} {self.b_macro_f1:.4f} vs {a} {self.a_macro_f1:.4f} "
            f"on {self.n} examples ({b} alone right on {self.b_only_right}, {a} alone on "
            f"{self.a_only_right}; McNemar p={self.p_value:.3g}; 95% CI of the difference "
            f"[{self.delta_ci[0]:+.4f}, {self.delta_ci[1]:+.4f}])"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["delta_ci"] = list(self.delta_ci)
        return out


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_score(y, pred, average="macro", zero_division=0))


def paired_compare(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, seed: int = 0, rounds: int = 300
) -> PairedComparison:
    y, pred_a, pred_b = np.asarray(y), np.asarray(pred_a), np.asarray(pred_b)
    right_a, right_b = pred_a == y, pred_b == y
    a_only = int((right_a & ~right_b).sum())
    b_only = int((right_b & ~right_a).sum())
    disagree = a_only + b_only
    p = 1.0 if disagree == 0 else float(binomtest(b_only, disagree, 0.5).pvalue)
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        deltas.append(_macro_f1(y[idx], pred_b[idx]) - _macro_f1(y[idx], pred_a[idx]))
    lo, hi = np.percentile(deltas, [2.5, 97.5]) if deltas else (0.0, 0.0)
    return PairedComparison(
        n=len(y),
        a_macro_f1=round(_macro_f1(y, pred_a), 6),
        b_macro_f1=round(_macro_f1(y, pred_b), 6),
        a_only_right=a_only,
        b_only_right=b_only,
        p_value=round(p, 6),
        delta_ci=(round(float(lo), 6), round(float(hi), 6)),
    )


def noise_margin(score: float, n: int) -> float:
    """One standard error of a proportion near `score` measured on `n` examples."""
    score = min(max(score, 0.0), 1.0)
    return math.sqrt(max(score * (1 - score), 1.0 / max(n, 1)) / max(n, 1))
