"""The out-of-scope score a version serves with, computed in the one inference loop.

Two scores, higher = further from every known class:

- `max_probability`: 1 - the top calibrated probability (Hendrycks & Gimpel 2017).
- `mahalanobis`: the smallest squared Mahalanobis distance of the pooled sentence embedding
  to a class mean, with one shared, shrunk covariance (Lee et al. 2018; Podolskiy et al.
  2021 found it the best score for transformer intent classifiers). Its parameters are the
  version's `detector.npz`: class means projected by the whitening matrix, and the matrix
  (float32 arrays, read with `allow_pickle=False`).

Which score and which threshold a version uses is decided at training time
(training/out_of_scope.py) and recorded in `metadata.json` (`models.OutOfScope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models._metadata import OutOfScope

DETECTOR_FILE = "detector.npz"
METHODS = ("max_probability", "mahalanobis")


@dataclass(frozen=True)
class Gaussian:
    """Class means, a whitening matrix W (W Wᵀ = the inverse covariance) and per class the
    mean squared distance of its own examples: a distance counts relative to its class's
    spread, so a broad class ("trivia questions") is not out of scope everywhere but at
    its centre while a tight one ("card arrival") stays tight."""

    means: np.ndarray  # (classes, dim), already multiplied by W
    whiten: np.ndarray  # (dim, dim)
    spread: np.ndarray | None = None  # (classes,); None: 1 for every class

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """Squared distance of each row to every class mean: (n, classes)."""
        z = np.asarray(pooled, dtype=np.float32) @ self.whiten
        d2 = (z * z).sum(1, keepdims=True) - 2.0 * z @ self.means.T
        return np.maximum(d2 + (self.means * self.means).sum(1)[None, :], 0.0)

    def score(self, pooled: np.ndarray) -> np.ndarray:
        d2 = self.distances(pooled)
        if self.spread is not None:
            d2 = d2 / self.spread[None, :]
        return d2.min(axis=1)

    def save(self, path: Path) -> None:
        arrays = {"means": self.means, "whiten": self.whiten}
        if self.spread is not None:
            arrays["spread"] = self.spread
        with open(path, "wb") as f:
            np.savez(f, **{k: v.astype(np.float32) for k, v in arrays.items()})

    @classmethod
    def load(cls, path: Path) -> Gaussian:
        with np.load(path, allow_pickle=False) as data:
            spread = data["spread"] if "spread" in data.files else None
            return cls(means=data["means"], whiten=data["whiten"], spread=spread)


@dataclass(frozen=True)
class Detector:
    """A version's out-of-scope decision at serving time: score > threshold."""

    method: str
    threshold: float
    gaussian: Gaussian | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph outputs it reads (logits first: the probabilities come from them)."""
        return ("logits", "pooled") if self.gaussian is not None else ("logits",)

    def scores(self, probabilities: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        if self.gaussian is not None:
            assert pooled is not None
            return self.gaussian.score(pooled)
        return max_probability_score(probabilities)

    def flags(self, probabilities: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        return self.scores(probabilities, pooled) > self.threshold

    @classmethod
    def for_version(cls, spec: OutOfScope | None, folder: Path) -> Detector | None:
        """None for a version without a detector (made before it, or `out_of_scope: off`)."""
        if spec is None or spec.method == "off" or spec.threshold is None:
            return None
        if spec.method == "mahalanobis":
            return cls(
                spec.method, spec.threshold, Gaussian.load(folder / (spec.file or DETECTOR_FILE))
            )
        return cls(spec.method, spec.threshold)


def max_probability_score(probabilities: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probabilities).max(axis=1)
