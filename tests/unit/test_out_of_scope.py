"""The out-of-scope detector: the scores, the threshold rules, the evidence, the data rules."""

from __future__ import annotations

import numpy as np
import pytest

from models._detector import Detector, Gaussian
from models.data import DataError, Dataset, set_aside
from training.out_of_scope import auroc, best_threshold, choose, evidence, fit_gaussian

DIM, CLASSES, PER_CLASS = 16, 6, 40


def blobs(seed: int, centres: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(centres)), per_class)
    return centres[y] + rng.normal(0, 1, (len(y), centres.shape[1])), y


def logits_for(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return -((x[:, None, :] - centres[None]) ** 2).sum(-1) / 4


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (CLASSES + 3, DIM))  # 3 more: never trained on
    x_train, y_train = blobs(1, centres[:CLASSES], PER_CLASS)
    x_val, y_val = blobs(2, centres[:CLASSES], 10)
    x_out, _ = blobs(3, centres[CLASSES:], 10)
    return centres, x_train, y_train, x_val, y_val, x_out


def test_gaussian_scores_unknown_blobs_higher_and_round_trips(world, tmp_path) -> None:
    centres, x_train, y_train, x_val, _, x_out = world
    g = fit_gaussian(x_train, y_train, CLASSES)
    assert auroc(g.score(x_val), g.score(x_out)) > 0.95
    g.save(tmp_path / "d.npz")
    again = Gaussian.load(tmp_path / "d.npz")
    assert np.allclose(again.score(x_out), g.score(x_out), rtol=1e-4)


def test_simulated_evidence_keeps_the_target_recall(world) -> None:
    centres, x_train, y_train, x_val, y_val, _ = world
    ev = evidence(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        logits_val=logits_for(x_val, centres[:CLASSES]),
        oof_logits=None,
        seed=0,
    )
    detector, _ = choose(
        ev, label="oos", target_recall=0.9, temperature=1.0, classes=CLASSES, seed=0
    )
    found = detector.evidence
    assert found.source == "simulated_unknown_classes"
    assert set(found.candidates) == {"max_probability", "mahalanobis"}
    assert found.in_scope_count == len(y_val)
    assert found.in_scope_recall == pytest.approx(0.9, abs=0.02)
    assert found.auroc is not None and found.auroc > 0.8
    assert detector.threshold is not None and detector.label == "oos"


def test_out_of_scope_examples_choose_the_threshold(world, tmp_path) -> None:
    centres, x_train, y_train, x_val, y_val, x_out = world
    ev = evidence(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        logits_val=logits_for(x_val, centres[:CLASSES]),
        oof_logits=logits_for(x_train, centres[:CLASSES]),  # frozen: cross-fitted too
        seed=0,
    )
    detector, gaussian = choose(
        ev,
        label="oos",
        target_recall=0.95,
        temperature=1.0,
        classes=CLASSES,
        seed=0,
        oos_pooled=x_out,
        oos_logits=logits_for(x_out, centres[:CLASSES]),
    )
    found = detector.evidence
    assert found.source == "out_of_scope_examples" and found.out_of_scope_count == len(x_out)
    assert found.in_scope_count == len(y_train) + len(y_val)  # cross-fitted rows count
    assert found.in_scope_recall >= 0.95 and found.out_of_scope_recall > 0.9
    if detector.method == "mahalanobis":
        gaussian.save(tmp_path / "detector.npz")
    served = Detector.for_version(detector, tmp_path)
    assert served is not None
    probs = np.exp(logits_for(x_out, centres[:CLASSES]))
    probs /= probs.sum(1, keepdims=True)
    assert served.flags(probs, x_out).mean() > 0.9


def test_best_threshold_never_drops_below_the_target_recall() -> None:
    inside = np.linspace(0, 1, 101)
    outside = np.linspace(0.5, 1.5, 50)  # overlapping: a lower threshold would catch more
    t = best_threshold(inside, outside, 0.9)
    assert np.mean(inside <= t) >= 0.9


def test_off_and_older_versions_have_no_detector(tmp_path) -> None:
    from models import OutOfScope

    assert Detector.for_version(None, tmp_path) is None
    assert Detector.for_version(OutOfScope(method="off"), tmp_path) is None


def test_out_of_scope_examples_are_set_aside_and_bad_labels_refused() -> None:
    data = Dataset(("a", "b", "c", "d", "e"), ("x", "x", "y", "y", "oos"))
    scoped, outside = set_aside(data, "oos")
    assert scoped.classes == ["x", "y"] and outside.texts == ("e",)
    with pytest.raises(DataError, match="all 2 examples are labeled 'oos'"):
        set_aside(Dataset(("a", "b"), ("oos", "oos")), "oos")
    with pytest.raises(DataError, match="'Out-Of-Scope' looks like the out-of-scope label"):
        set_aside(
            Dataset(("a", "b", "c", "d", "e"), ("x", "x", "y", "y", "Out-Of-Scope")), "out_of_scope"
        )
    with pytest.raises(DataError, match="need at least 2 classes"):
        set_aside(Dataset(("a", "b", "c"), ("x", "x", "oos")), "oos")


@pytest.mark.parametrize("per_class,frozen", [(1, False), (2, True), (3, True)])
def test_tiny_classes_give_finite_scores(per_class: int, frozen: bool) -> None:
    """The smallest data the service accepts (2 per class: 1 to train on) and folds that hold
    no row of a class still give finite scores and a threshold."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, (8, DIM))
    x_train, y_train = blobs(4, centres, per_class)
    x_val, y_val = blobs(5, centres, 1)
    logits_val = logits_for(x_val, centres)
    for seed in range(5):
        ev = evidence(
            x_train=x_train,
            y_train=y_train,
            x_val=x_val,
            y_val=y_val,
            logits_val=logits_val,
            oof_logits=logits_for(x_train, centres) if frozen else None,
            seed=seed,
        )
        detector, gaussian = choose(
            ev, label="oos", target_recall=0.95, temperature=1.0, classes=8, seed=seed
        )
        assert np.isfinite(detector.threshold)
        assert np.all(np.isfinite(gaussian.score(x_val)))
