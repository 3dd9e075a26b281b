"""The int8 guard's rule (training/quantization.py) on decisions made up to sit on each
side of every bar; the trained-model path is covered by tests/integration/test_training.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.quantization import (
    INT8_FILE,
    agreement,
    choose_int8,
    guard_texts,
    paired_loss,
    wilson_lower,
)

LABELS = ["a", "b", "c"]


def _decisions(n: int, flips: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """fp32 gives class k to n texts each; int8 moves `flips[k]` of them to the next class."""
    fp32 = np.repeat(np.arange(3), n)
    int8 = fp32.copy()
    for k, f in flips.items():
        idx = np.flatnonzero(fp32 == k)[:f]
        int8[idx] = (k + 1) % 3
    return fp32, int8


def test_agreement_names_the_class_flipped_most_and_ignores_noise() -> None:
    fp32, int8 = _decisions(100, {0: 1, 2: 3})
    a = agreement(fp32, int8, LABELS)
    assert a.texts == 300 and a.rate == pytest.approx(296 / 300)
    assert (a.worst_class, a.worst_flips, a.worst_count) == ("c", 3, 100)
    assert agreement(fp32, fp32, LABELS).worst_class is None
    # one flip of a class seen 8 times is noise; 3 of 9 is not
    assert wilson_lower(1, 8) < 0.05 < wilson_lower(3, 9)
    assert wilson_lower(0, 0) == 0.0


def test_multi_label_agreement_is_the_same_label_set() -> None:
    fp32 = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    int8 = fp32.copy()
    int8[0, 2] = False  # label c dropped from the first text
    int8[3, 1] = True  # an extra label b is not a flip of b (fp32 did not give it)
    a = agreement(fp32, int8, LABELS)
    assert a.rate == 0.5 and (a.worst_class, a.worst_flips, a.worst_count) == ("c", 1, 1)


def test_paired_test_finds_a_real_loss_only() -> None:
    right = np.ones(200, dtype=bool)
    worse = right.copy()
    worse[:12] = False
    assert paired_loss(right, worse)[:2] == (12, 0) and paired_loss(right, worse)[2] < 0.001
    mixed = worse.copy()
    mixed[:10] = True  # 2 lost, and 0 gained: not significant
    lost, won, p = paired_loss(right, mixed)
    assert (lost, won) == (2, 0) and p > 0.05
    assert paired_loss(right, right) == (0, 0, 1.0)


def _choose(tmp_path: Path, fp32, int8, paired=(0, 0, 1.0), policy="auto"):
    (tmp_path / INT8_FILE).write_bytes(b"int8")
    return choose_int8(
        policy=policy,
        agreed=agreement(fp32, int8, LABELS),
        max_abs_diff=0.01,
        paired=paired,
        fp32=0.9,
        int8=0.89,
        count=60,
        staging=tmp_path,
    )


def test_auto_keeps_int8_when_it_agrees_and_refuses_it_for_each_reason(tmp_path: Path) -> None:
    kept = _choose(tmp_path, *_decisions(400, {1: 2}))  # 99.8%, 2 of 400 in class b
    assert kept.served_on_cpu and kept.file == INT8_FILE and (tmp_path / INT8_FILE).exists()
    assert kept.reason.startswith("int8 served on CPU: agreement 99.83% on 1200")
    assert (kept.worst_class, kept.worst_class_flips, kept.worst_class_count) == ("b", 2, 400)
    assert kept.paired_p_value == 1.0 and kept.examples == 1200

    low = _choose(tmp_path, *_decisions(100, {0: 2, 1: 2}))  # 98.7% agreement
    assert not low.served_on_cpu and low.file is None
    assert not (tmp_path / INT8_FILE).exists()  # a graph nobody serves is not published
    assert "fp32 served: int8 has agreement below 99%" in low.reason

    one_class = _choose(tmp_path, *_decisions(1000, {2: 25}))  # 99.2%, but c loses 2.5%...
    assert one_class.served_on_cpu
    one_class = _choose(tmp_path, *_decisions(2000, {2: 150}))  # ...c loses 7.5%: refused
    assert "class c flips 150 of 2000 (more than 5% even at the low end" in one_class.reason

    paired = _choose(tmp_path, *_decisions(400, {}), paired=(9, 0, 0.002))
    assert not paired.served_on_cpu and "a significant validation loss (p=0.002" in paired.reason
    forced = _choose(tmp_path, *_decisions(100, {0: 9}), policy="always")
    assert forced.served_on_cpu and forced.reason.startswith("quantize=always")


def test_the_guard_judges_every_training_time_text_up_to_a_fixed_sample() -> None:
    assert guard_texts(["x", "y"], ["y", "z"]) == ["x", "y", "z"]
    many = [f"t{i}" for i in range(50)]
    sample = guard_texts(many, limit=10)
    assert len(sample) == 10 and sample == guard_texts(many, limit=10)


class _Runner:
    """Probabilities made up per text: what `judge_fp16` reads from an OnnxRunner."""

    def __init__(self, probs: dict[str, list[float]]) -> None:
        self.probs = probs

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.array([self.probs[t] for t in texts], dtype=np.float32)


def test_the_fp16_gate_serves_a_close_graph_and_drops_a_far_one(tmp_path: Path) -> None:
    from training.quantization import FP16_FILE, judge_fp16

    texts = [f"t{i}" for i in range(200)]
    full = _Runner({t: [0.7, 0.2, 0.1] if i % 2 else [0.1, 0.3, 0.6] for i, t in enumerate(texts)})
    close = _Runner(
        {t: [p + 0.0008 * (j == 0) for j, p in enumerate(v)] for t, v in full.probs.items()}
    )
    args = {"parity": texts[:64], "texts": texts, "decide": lambda p: p.argmax(1), "labels": LABELS}
    (tmp_path / FP16_FILE).write_bytes(b"fp16")
    kept = judge_fp16(full, close, staging=tmp_path, **args)
    assert kept.served_on_cuda and kept.file == FP16_FILE and (tmp_path / FP16_FILE).exists()
    assert kept.parity_max_abs_diff == pytest.approx(0.0008, abs=1e-5) and kept.examples == 200
    far = _Runner(
        {t: [p + 0.05 * (j == 0) for j, p in enumerate(v)] for t, v in full.probs.items()}
    )
    dropped = judge_fp16(full, far, staging=tmp_path, **args)
    assert not dropped.served_on_cuda and dropped.file is None
    assert not (tmp_path / FP16_FILE).exists()  # never published: fp32 is served on CUDA
    assert "fp32 served on CUDA: the fp16 graph has parity 5.00e-02 > 1e-02" in dropped.reason
    broken = _Runner({t: [float("nan")] * 3 for t in texts})
    assert not judge_fp16(full, broken, staging=tmp_path, **args).served_on_cuda
