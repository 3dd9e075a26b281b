"""Temperature scaling: recovers the temperature that made over-confident logits, lowers
ECE and Brier on held-out data, never changes the argmax, and is applied by the one
inference loop (models/_inference.py) wherever a version runs."""

from __future__ import annotations

import numpy as np
import pytest

from models._inference import predict_proba, softmax
from training.calibration import MIN_EXAMPLES, brier, calibrate, ece, fit_temperature


def overconfident(n: int, classes: int, true_t: float, seed: int = 0):
    """Labels drawn from softmax(z); logits handed out as z * true_t (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, size=(n, classes))
    p = softmax(z)
    y = np.array([rng.choice(classes, p=row / row.sum()) for row in p])
    return z * true_t, y


def test_the_fitted_temperature_undoes_overconfidence() -> None:
    logits, y = overconfident(4000, 6, true_t=3.0)
    assert fit_temperature(logits, y) == pytest.approx(3.0, rel=0.1)


def test_calibration_lowers_ece_and_brier_and_keeps_the_argmax() -> None:
    logits, y = overconfident(2000, 5, true_t=4.0, seed=1)
    report = calibrate(logits, y)
    assert report.method == "temperature" and report.temperature > 2.5
    assert report.ece_after < report.ece_before / 2
    assert report.brier_after < report.brier_before
    before, after = softmax(logits), softmax(logits / report.temperature)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert report.ece_after == pytest.approx(ece(after, y), abs=1e-6)
    assert report.brier_after == pytest.approx(brier(after, y), abs=1e-6)


def test_too_few_examples_are_not_fitted() -> None:
    logits, y = overconfident(MIN_EXAMPLES - 1, 3, true_t=5.0)
    report = calibrate(logits, y)
    assert report.method == "none" and report.temperature == 1.0
    assert report.reason.startswith(f"{MIN_EXAMPLES - 1} held-out examples")


def test_ece_of_a_perfectly_calibrated_constant_is_zero() -> None:
    probs = np.array([[0.75, 0.25]] * 8)
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1])  # right 3 times in 4 at confidence 0.75
    assert ece(probs, y) == pytest.approx(0.0)


class _Session:
    """Stands in for an onnxruntime session: fixed logits, and the graph's softmax."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def run(self, outputs, feeds):
        n = feeds["input_ids"].shape[0]
        value = self.logits[:n] if outputs == ["logits"] else softmax(self.logits[:n])
        return [value]


class _Encoding:
    ids = [1, 2, 3]


class _Tokenizer:
    def encode_batch(self, texts):
        return [_Encoding() for _ in texts]


def test_the_inference_loop_applies_the_temperature_once() -> None:
    logits = np.array([[4.0, 0.0, -2.0], [1.0, 3.0, 0.0]], dtype=np.float32)
    session, tok = _Session(logits), _Tokenizer()
    plain = predict_proba(session, tok, ["a", "b"], pad_id=0)
    assert np.allclose(plain, softmax(logits))
    calibrated = predict_proba(session, tok, ["a", "b"], pad_id=0, temperature=2.0)
    assert np.allclose(calibrated, softmax(logits / 2.0))
