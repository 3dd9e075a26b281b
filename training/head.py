"""The feature-extraction head: multinomial L2 logistic regression on frozen embeddings.

scikit-learn fits it; its coefficients are copied into the torch linear layer, so the
exported ONNX graph is encoder + pooling + head and no pickle is ever written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

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
    search: dict[str, float]  # option -> macro-F1 (cross-validated or validation)
    label_names: bool = False  # the label names were added as one example per class
    selection: str = "validation"
    selection_score: float = 0.0  # the chosen option's macro-F1 (cross-validated or validation)
    # the best of several options scored on the same folds is optimistic: the selection
    # bias estimated per fold (Tibshirani & Tibshirani 2009) and taken off (CV only)
    selection_bias: float = 0.0
    # the chosen option's out-of-fold logits on the training split (cross-validation only):
    # held-out evidence for calibration that few-shot validation splits are too small for
    oof_logits: np.ndarray | None = field(default=None, repr=False, compare=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids as served: argmax of the softmax logits."""
        return np.argmax(x @ self.weight.T + self.bias, axis=1)

    @property
    def honest_score(self) -> float:
        """The chosen option's cross-validated macro-F1 less the selection bias."""
        return self.selection_score - self.selection_bias

    def chance_corrected(self, num_labels: int) -> float:
        """How far above chance the probe is: 0 at chance (1/K), 1 perfect (Cohen-style),
        on the bias-corrected score (one lucky option among six must not look strong)."""
        chance = 1.0 / max(num_labels, 2)
        return (self.honest_score - chance) / (1 - chance)


def _to_softmax_params(model: LogisticRegression, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    coef = model.coef_.astype(np.float32)
    bias = model.intercept_.astype(np.float32)
    if num_labels == 2 and coef.shape[0] == 1:
        # Binary LR is sigmoid(w.x + b) == softmax([0, w.x + b])[1].
        coef = np.vstack([np.zeros_like(coef), coef])
        bias = np.concatenate([np.zeros(1, np.float32), bias])
    return coef, bias


def label_name_text(label: str) -> str:
    """A label as a sentence-encoder input: `card_arrival` -> `card arrival`."""
    return " ".join(label.replace("_", " ").replace("-", " ").split()).lower()


def _fit(c: float, x: np.ndarray, y: np.ndarray, names: np.ndarray | None, max_iter: int, seed):
    if names is not None:  # one extra example per class: the label's own embedding
        x = np.vstack([x, names])
        y = np.concatenate([y, np.arange(len(names))])
    model = LogisticRegression(
        C=c, class_weight="balanced", max_iter=max_iter, random_state=seed, tol=1e-4
    )
    return model.fit(x, y)


def _predict(model: LogisticRegression, x: np.ndarray, num_labels: int) -> np.ndarray:
    return np.argmax(_logits(model, x, num_labels), axis=1)


def _logits(model: LogisticRegression, x: np.ndarray, num_labels: int) -> np.ndarray:
    weight, bias = _to_softmax_params(model, num_labels)  # as served: our softmax's logits
    return x @ weight.T + bias


def fit_predict(
    c: float,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_pred: np.ndarray,
    num_labels: int,
    *,
    names: np.ndarray | None,
    max_iter: int,
    seed: int,
) -> np.ndarray:
    """Class ids from a probe with fixed options fit on (x_fit, y_fit): for held-out
    estimates that must not choose anything."""
    return _predict(_fit(c, x_fit, y_fit, names, max_iter, seed), x_pred, num_labels)


def out_of_fold_logits(
    c: float,
    x: np.ndarray,
    y: np.ndarray,
    num_labels: int,
    *,
    names: np.ndarray | None,
    max_iter: int,
    seed: int,
    folds: int = 3,
) -> np.ndarray:
    """Logits of every row from a probe (fixed options) that did not see it."""
    out = np.zeros((len(y), num_labels), dtype=np.float32)
    for held in stratified_folds(y, folds, seed):
        keep = np.setdiff1d(np.arange(len(y)), held)
        out[held] = _logits(_fit(c, x[keep], y[keep], names, max_iter, seed), x[held], num_labels)
    return out


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified fold ids: each class's members dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        fold_of[members] = np.arange(len(members)) % folds
    return [np.flatnonzero(fold_of == f) for f in range(folds)]


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
    name_vectors: np.ndarray | None = None,
    cv_max_examples: int = 3000,
    cv_folds: int = 3,
    on_step=None,
) -> LinearHead:
    """Pick C (and whether to add the label names as examples) and fit the head.

    Small training sets (<= `cv_max_examples`, at least 2 per class): the choice is made
    by stratified `cv_folds`-fold cross-validation on the training split (out-of-fold
    macro-F1), which is far less noisy than a validation split of one or two examples per
    class; ties go to the first in the grid, without names first. Larger sets: by
    validation macro-F1, as before. Either way the head is then fit on the whole training
    split and scored on validation.
    """
    options = [(c, False) for c in c_grid]
    if name_vectors is not None:
        options += [(c, True) for c in c_grid]
    counts = np.bincount(y_train, minlength=num_labels)
    use_cv = len(y_train) <= cv_max_examples and counts.min() >= 2
    folds = stratified_folds(y_train, min(cv_folds, int(counts.min())), seed) if use_cv else []
    search: dict[str, float] = {}
    fold_scores: list[list[float]] = []  # per option, macro-F1 on each held-out fold
    best: tuple[float, float, bool, LogisticRegression | None, np.ndarray | None] | None = None
    for step, (c, with_names) in enumerate(options, start=1):
        started = time.perf_counter()
        names = name_vectors if with_names else None
        model = None  # with cross-validation, the chosen option is fit on all of train below
        oof_logits = None
        if use_cv:
            oof_logits = np.zeros((len(y_train), num_labels), dtype=np.float32)
            for held in folds:
                keep = np.setdiff1d(np.arange(len(y_train)), held)
                fold_model = _fit(c, x_train[keep], y_train[keep], names, max_iter, seed)
                oof_logits[held] = _logits(fold_model, x_train[held], num_labels)
            oof = oof_logits.argmax(axis=1)
            score = float(f1_score(y_train, oof, average="macro", zero_division=0))
            fold_scores.append(
                [
                    float(f1_score(y_train[h], oof[h], average="macro", zero_division=0))
                    for h in folds
                ]
            )
        else:
            model = _fit(c, x_train, y_train, names, max_iter, seed)
            pred = _predict(model, x_val, num_labels)
            score = float(f1_score(y_val, pred, average="macro", zero_division=0))
        key = f"{c:g}" + ("+names" if with_names else "")
        search[key] = round(score, 6)
        log.info(
            "probe %s: %s macro-F1 %.4f (%.1f s)",
            key,
            "cross-validated" if use_cv else "validation",
            score,
            time.perf_counter() - started,
        )
        if best is None or score > best[0]:
            best = (score, c, with_names, model, oof_logits)
        if on_step is not None:
            on_step(step, len(options), f"head {key} macro-F1 {score:.4f}")
    assert best is not None
    selection_score, c, with_names, model, oof_logits = best
    optimism = 0.0
    if fold_scores:  # Tibshirani & Tibshirani: mean over folds of (fold's best - chosen's)
        table = np.asarray(fold_scores)
        chosen = options.index((c, with_names))
        optimism = float(np.mean(table.max(axis=0) - table[chosen]))
    if model is None:
        model = _fit(c, x_train, y_train, name_vectors if with_names else None, max_iter, seed)
    if len(model.classes_) != num_labels:  # every class is in train by construction
        raise AssertionError("probe did not see every class")
    weight, bias = _to_softmax_params(model, num_labels)
    score = float(
        f1_score(y_val, _predict(model, x_val, num_labels), average="macro", zero_division=0)
    )
    return LinearHead(
        weight,
        bias,
        c,
        score,
        search,
        label_names=with_names,
        selection="cross-validation" if use_cv else "validation",
        selection_score=round(selection_score, 6),
        selection_bias=round(optimism, 6),
        oof_logits=oof_logits,
    )
