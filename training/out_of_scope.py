"""Choosing a version's out-of-scope detector from evidence: which score, which threshold.

Scores (models/_detector.py): `max_probability` (1 - top calibrated probability) and
`mahalanobis` (distance of the pooled embedding to the nearest class, one shared shrunk
covariance fitted on the training split). Evidence, in order of preference:

1. **Out-of-scope examples** in the data (the reserved label): the score with the higher
   AUROC between the validation split (in scope) and them wins; the threshold maximises
   in-scope recall + out-of-scope recall, with the target in-scope recall as a floor.
2. **Simulated unknown classes** otherwise: the classes are dealt into folds of about a
   quarter; in each fold those classes are left out of the Gaussian and of a logistic head
   refitted for the simulation, and their held-out examples play the unknown. The score with the higher mean
   AUROC wins; the threshold keeps `target_recall` of the validation split in scope.

The threshold is always read off held-out scores: the validation split, scored by a
Gaussian fitted on the training split; when the frozen encoder was kept (the probe), also
the training split, cross-fitted (each fold scored by a Gaussian fitted without it) with the
probe's out-of-fold logits — few-shot validation splits alone are a handful of examples.
Everything measured goes into `metadata.json`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from models import OutOfScope, OutOfScopeEvidence
from models._detector import DETECTOR_FILE, Gaussian, max_probability_score
from models._inference import softmax

FOLD_SHARE = 0.25  # share of classes left out per simulated fold (the literature's 75% known)
MAX_FOLDS = 4
SPREAD_PRIOR = 4.0  # pseudo-examples of the overall spread in each class's
SPREAD_FLOOR = 0.25  # a class's spread is at least this share of the overall one
CROSS_FOLDS = 5
HEAD_C = 10.0  # the probe's first choice on intent data (training/config.py head_c_grid)
SIMULATION_ROWS = 4000  # rows a simulated fold's head is refitted on, at most
SIMULATION_FOLDS = 2  # cross folds scored in the simulation (of CROSS_FOLDS)  # cross-fitting of the Gaussian when the training split is evidence too
SHRINKAGE_FLOOR = 1e-6


def fit_gaussian(x: np.ndarray, y: np.ndarray, classes: int | np.ndarray) -> Gaussian:
    """Class means and a Ledoit-Wolf shrunk shared covariance of the within-class residuals,
    returned as a whitening matrix (so serving is two matrix products), and each class's
    spread (its examples' mean squared distance, relative to the overall one). Only the
    classes with rows in `y` get a mean (a fold may hold none of a small class)."""
    from sklearn.covariance import LedoitWolf

    ids = np.arange(classes) if np.isscalar(classes) else np.asarray(classes)
    present = np.asarray([c for c in ids if np.any(y == c)])  # a class absent here: no mean
    x = np.asarray(x, dtype=np.float64)
    index = np.searchsorted(present, y)
    means = np.stack([x[y == c].mean(axis=0) for c in present])
    covariance = LedoitWolf(assume_centered=True).fit(x - means[index]).covariance_
    covariance += SHRINKAGE_FLOOR * np.eye(len(covariance))
    whiten = np.linalg.cholesky(np.linalg.inv(covariance))
    plain = Gaussian(means=(means @ whiten).astype(np.float32), whiten=whiten.astype(np.float32))
    own = plain.distances(x)[np.arange(len(x)), index].astype(np.float64)
    # a class's spread: its examples' squared distance to their own mean (n - 1 degrees of
    # freedom: in-sample distances are low by (n - 1) / n), shrunk toward the overall spread
    # by SPREAD_PRIOR pseudo-examples so a class of one or two examples gets the overall one
    free = np.asarray([np.sum(y == c) - 1 for c in present], dtype=np.float64)
    sums = np.asarray([own[y == c].sum() for c in present])
    overall = sums.sum() / free.sum() if free.sum() > 0 and sums.sum() > 0 else 1.0
    spread = (sums + SPREAD_PRIOR * overall) / (free + SPREAD_PRIOR)
    spread = np.maximum(spread, SPREAD_FLOOR * overall) / overall
    return Gaussian(plain.means, plain.whiten, spread.astype(np.float32))


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an out-of-scope score > an in-scope score): higher scores mean out of scope."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


@dataclass(frozen=True)
class Evidence:
    """The rows the detector is chosen on. Every row has a pooled embedding `x` and a class
    `y`; `fit` marks the rows a Gaussian may be fitted on; `fold` >= 0 marks the held-out
    rows, each scored by a Gaussian fitted without its fold; `logits` are held-out logits
    for those rows (the validation split, and the probe's out-of-fold logits when the frozen
    encoder was kept: then the training split is held-out evidence too)."""

    x: np.ndarray
    y: np.ndarray
    fit: np.ndarray
    fold: np.ndarray
    logits: np.ndarray  # rows of held-out rows only, in order

    @property
    def held(self) -> np.ndarray:
        return self.fold >= 0


def evidence(
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    logits_val: np.ndarray,
    oof_logits: np.ndarray | None,
    seed: int,
) -> Evidence:
    """Validation rows held out of a Gaussian fitted on the training split; with out-of-fold
    logits (a frozen encoder), every row held out by cross-fitting in `CROSS_FOLDS` folds."""
    x = np.vstack([x_train, x_val])
    y = np.concatenate([y_train, y_val])
    if oof_logits is not None:
        rng = np.random.default_rng(seed)
        fold = np.empty(len(y), dtype=int)
        for c in np.unique(y):  # stratified: a class's rows spread over the folds
            rows = rng.permutation(np.flatnonzero(y == c))
            fold[rows] = (np.arange(len(rows)) + rng.integers(CROSS_FOLDS)) % CROSS_FOLDS
        return Evidence(x, y, np.ones(len(y), bool), fold, np.vstack([oof_logits, logits_val]))
    fold = np.r_[np.full(len(y_train), -1), np.zeros(len(y_val), int)]
    return Evidence(
        x, y, np.r_[np.ones(len(y_train), bool), np.zeros(len(y_val), bool)], fold, logits_val
    )


def held_out_distances(ev: Evidence, known: np.ndarray) -> np.ndarray:
    """The Mahalanobis score of every held-out row, by a Gaussian of the `known` classes
    fitted on rows outside its fold."""
    out = np.empty(int(ev.held.sum()), dtype=np.float64)
    index = np.cumsum(ev.held) - 1
    for k in np.unique(ev.fold[ev.held]):
        train = ev.fit & (ev.fold != k) & np.isin(ev.y, known)
        rows = ev.fold == k
        out[index[rows]] = fit_gaussian(ev.x[train], ev.y[train], known).score(ev.x[rows])
    return out


def held_out_max_probability(ev: Evidence, known: np.ndarray, seed: int) -> np.ndarray:
    """The max-probability score of every held-out row by a logistic head refitted on the
    `known` classes outside its fold. Masking the served head's logits instead would flatter
    this score: that head was trained on the left-out classes and pushes their examples
    away from every other class."""
    from sklearn.linear_model import LogisticRegression

    out = np.empty(int(ev.held.sum()), dtype=np.float64)
    index = np.cumsum(ev.held) - 1
    rng = np.random.default_rng(seed)
    for k in np.unique(ev.fold[ev.held]):
        train = np.flatnonzero(ev.fit & (ev.fold != k) & np.isin(ev.y, known))
        if len(train) > SIMULATION_ROWS:
            train = rng.choice(train, SIMULATION_ROWS, replace=False)
        rows = ev.fold == k
        with warnings.catch_warnings():  # 100 iterations rank the scores well enough
            warnings.simplefilter("ignore")
            head = LogisticRegression(C=HEAD_C, max_iter=100).fit(ev.x[train], ev.y[train])
        out[index[rows]] = max_probability_score(head.predict_proba(ev.x[rows]))
    return out


def _scores(
    ev: Evidence, known: np.ndarray, temperature: float, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Both scores of the held-out rows: with every class known, the served head's
    calibrated probabilities; with classes left out, a head refitted without them."""
    everything = len(known) == ev.logits.shape[1]
    return {
        "max_probability": (
            max_probability_score(softmax(ev.logits / temperature))
            if everything
            else held_out_max_probability(ev, known, seed)
        ),
        "mahalanobis": held_out_distances(ev, known),
    }


def simulate(
    ev: Evidence, *, temperature: float, classes: int, target_recall: float, seed: int
) -> dict[str, dict[str, float]]:
    """Per score: mean AUROC and out-of-scope recall (at the target in-scope recall) over
    folds of left-out classes. Empty with fewer than 3 classes (nothing left to simulate)."""
    if classes < 3:
        return {}
    order = np.random.default_rng(seed).permutation(classes)
    per_fold = max(1, round(classes * FOLD_SHARE))
    folds = [order[i : i + per_fold] for i in range(0, classes, per_fold)][:MAX_FOLDS]
    # the refitted heads cost ~1 s each: simulate on the first SIMULATION_FOLDS cross folds
    # (the other folds still train every fit)
    scored = ev.fold[ev.held] < SIMULATION_FOLDS
    ev = Evidence(
        ev.x, ev.y, ev.fit, np.where(ev.fold < SIMULATION_FOLDS, ev.fold, -1), ev.logits[scored]
    )
    y = ev.y[ev.held]
    found: dict[str, list[tuple[float, float]]] = {"max_probability": [], "mahalanobis": []}
    for unknown in folds:
        known = np.setdiff1d(np.arange(classes), unknown)
        inside = np.isin(y, known)
        if len(known) < 2 or inside.all() or not inside.any():
            continue
        for method, s in _scores(ev, known, temperature, seed=seed).items():
            threshold = float(np.quantile(s[inside], target_recall))
            found[method].append(
                (auroc(s[inside], s[~inside]), float(np.mean(s[~inside] > threshold)))
            )
    return {
        m: {
            "auroc": round(float(np.mean([a for a, _ in v])), 4),
            "out_of_scope_recall": round(float(np.mean([r for _, r in v])), 4),
        }
        for m, v in found.items()
        if v
    }


def best_threshold(inside: np.ndarray, outside: np.ndarray, target_recall: float) -> float:
    """With real out-of-scope examples: the threshold that maximises in-scope recall +
    out-of-scope recall, never keeping less than `target_recall` of the in-scope examples."""
    floor = float(np.quantile(inside, target_recall))
    candidates = np.unique(np.r_[inside, outside, floor])
    candidates = candidates[candidates >= floor]
    best, best_value = floor, -1.0
    for t in candidates:
        value = np.mean(inside <= t) + np.mean(outside > t)
        if value > best_value + 1e-12:
            best, best_value = float(t), float(value)
    return best


def _pick(candidates: dict[str, float]) -> str:
    """The higher AUROC; on a tie the distance (it does not depend on the head)."""
    return max(candidates, key=lambda m: (candidates[m], m == "mahalanobis"))


def choose(
    ev: Evidence,
    *,
    label: str,
    target_recall: float,
    temperature: float,
    classes: int,
    seed: int,
    oos_pooled: np.ndarray | None = None,
    oos_logits: np.ndarray | None = None,
) -> tuple[OutOfScope, Gaussian]:
    """The detector for this version, with its evidence; the Gaussian (fitted on every row
    the evidence allows) goes to `detector.npz` when it is the chosen score."""
    all_classes = np.arange(classes)
    gaussian = fit_gaussian(ev.x[ev.fit], ev.y[ev.fit], classes)
    held = _scores(ev, all_classes, temperature)
    if oos_pooled is not None and len(oos_pooled):
        assert oos_logits is not None
        out = {
            "max_probability": max_probability_score(softmax(oos_logits / temperature)),
            "mahalanobis": gaussian.score(oos_pooled),
        }
        candidates = {m: round(auroc(held[m], out[m]), 4) for m in held}
        method = _pick(candidates)
        threshold = best_threshold(held[method], out[method], target_recall)
        found = OutOfScopeEvidence(
            source="out_of_scope_examples",
            in_scope_count=len(held[method]),
            out_of_scope_count=len(out[method]),
            auroc=candidates[method],
            in_scope_recall=round(float(np.mean(held[method] <= threshold)), 4),
            out_of_scope_recall=round(float(np.mean(out[method] > threshold)), 4),
            candidates=candidates,
        )
        how = f"{len(out[method])} out-of-scope examples"
    else:
        simulated = simulate(
            ev, temperature=temperature, classes=classes, target_recall=target_recall, seed=seed
        )
        candidates = {m: v["auroc"] for m, v in simulated.items()}
        method = _pick(candidates) if candidates else "mahalanobis"
        threshold = float(np.quantile(held[method], target_recall))
        found = OutOfScopeEvidence(
            source="simulated_unknown_classes" if simulated else "none",
            in_scope_count=len(held[method]),
            auroc=simulated[method]["auroc"] if simulated else None,
            in_scope_recall=round(float(np.mean(held[method] <= threshold)), 4),
            out_of_scope_recall=simulated[method]["out_of_scope_recall"] if simulated else None,
            candidates=candidates,
        )
        how = (
            f"classes left out in folds ({classes} classes)"
            if simulated
            else f"no evidence possible with {classes} classes"
        )
    reason = (
        f"{method} chosen by AUROC on {how}"
        f" ({', '.join(f'{m} {a:.3f}' for m, a in candidates.items()) or 'none measured'});"
        f" the threshold keeps {found.in_scope_recall:.1%} of {found.in_scope_count}"
        " held-out examples in scope"
    )
    detector = OutOfScope(
        method=method,
        threshold=round(threshold, 6),
        label=label,
        target_recall=target_recall,
        file=DETECTOR_FILE if method == "mahalanobis" else None,
        evidence=found,
        reason=reason,
    )
    return detector, gaussian
