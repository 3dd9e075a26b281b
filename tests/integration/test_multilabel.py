"""Multi-label training end to end on a GoEmotions slice with the real MiniLM: LP-FT with
binary cross-entropy from the one-vs-rest probe, per-label thresholds, a sigmoid ONNX graph
that agrees with torch, held-out metrics, and the gate against a multi-label champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import Registry
from models.multilabel import MultiDataset
from service.harness.data import goemotions_sample, read_goemotions
from training import TrainConfig, train

pytestmark = pytest.mark.slow

KEEP = ("anger", "gratitude", "joy", "love", "neutral", "sadness")


def rows(split: str, per_label: int | None, seed: int = 0) -> list[tuple[str, list[str]]]:
    data = [(t, [x for x in ls if x in KEEP]) for t, ls in read_goemotions(split)]
    return goemotions_sample(data, per_label, seed) if per_label else data


def test_multi_label_lp_ft_thresholds_sigmoid_graph_and_gate(tmp_path: Path) -> None:
    from training.evaluate import OnnxRunner

    registry = Registry(tmp_path)
    dev = rows("dev", None)[:300]
    config = TrainConfig(name="ml", epochs=2, quantize="never", promote="auto")
    first = train(rows("train", 16), config, registry=registry, test_data=dev)
    meta = first.metadata
    assert meta.task == "multi_label" and meta.labels == sorted(KEEP)
    assert first.decision.plan == "compare"  # p10 of positives per label is 16
    details = first.details
    assert details["probe"]["selection"] == "cross-validation"
    assert set(details["probe_vs_fine_tuning"]) >= {"delta_ci", "probe_better_beyond_noise"}
    assert [h["epoch"] for h in details["fine_tuning"]["history"]] == [1, 2]
    assert "val_micro_f1" in details["fine_tuning"]["history"][0]
    ml = meta.multi_label
    assert ml is not None and set(ml.thresholds) == set(KEEP)
    assert set(ml.tuned_labels) <= set(KEEP)
    assert all(ml.thresholds[x] == ml.global_threshold for x in KEEP if x not in ml.tuned_labels)
    assert meta.calibration is not None and meta.calibration.method == "none"
    assert meta.out_of_scope is not None and meta.out_of_scope.method == "off"
    assert meta.metrics.micro_f1 is not None and meta.metrics.hamming_loss is not None
    test = meta.test_metrics
    # better than answering every label (per label F1 = 2p / (1 + p) at prevalence p)
    prevalence = (
        MultiDataset(tuple(t for t, _ in dev), tuple(tuple(ls) for _, ls in dev))
        .matrix(sorted(KEEP))
        .mean(0)
    )
    every_label = float(np.mean(2 * prevalence / (1 + prevalence)))
    assert test is not None and test.count == 300, test
    assert test.macro_f1 > every_label + 0.05, (test.macro_f1, every_label)
    # the served graph: an independent sigmoid per label (rows do not sum to 1)
    mv = registry.get("ml", meta.version)
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    probs, logits = runner.outputs([t for t, _ in dev[:20]], ("probabilities", "logits"))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert not np.allclose(probs.sum(1), 1.0, atol=0.05)
    assert meta.onnx.parity_max_abs_diff <= config.parity_tolerance
    assert first.promoted  # no production yet
    assert isinstance(first.validation, MultiDataset)

    # a challenger on other samples is gated against the multi-label champion
    second = train(
        rows("train", 16, seed=1),
        TrainConfig(name="ml", strategy="feature_extraction", quantize="never", promote="auto"),
        registry=registry,
    )
    assert second.promotion_reason is not None
    assert "macro-F1" in second.promotion_reason and "champion" in second.promotion_reason
    assert second.metadata.parent_version == meta.version
