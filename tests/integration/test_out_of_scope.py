"""The out-of-scope detector through the real pipeline: out-of-scope examples are set aside
(never a class), the served decision is the metadata's, and the promotion gate keeps
production's out-of-scope recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import Registry
from tests.conftest import banking77_slice, read_shared
from training import TrainConfig
from training.evaluate import out_of_scope_flags
from training.pipeline import train

pytestmark = pytest.mark.slow


def data(ten_classes: list[str], oos: int) -> list[tuple[str, str]]:
    rows = banking77_slice("train", ten_classes[:6], per_class=8)
    return rows + [(t, "out_of_scope") for t, _ in read_shared("emotion", "train")[:oos]]


def served(registry: Registry, name: str, version: str, texts: list[str]) -> np.ndarray:
    return out_of_scope_flags(registry.get(name, version), texts)


def test_the_gate_keeps_production_s_out_of_scope_recall(tmp_path: Path, ten_classes) -> None:
    registry = Registry(tmp_path)
    base = dict(name="oos", strategy="feature_extraction", promote="auto")
    first = train(data(ten_classes, 30), TrainConfig(**base), registry=registry)
    meta = first.metadata
    assert first.promoted and meta.labels == sorted(ten_classes[:6])  # never a class
    assert meta.data.out_of_scope_count == 30
    found = meta.out_of_scope.evidence
    assert found.source == "out_of_scope_examples" and found.out_of_scope_count == 30
    assert found.out_of_scope_recall >= 0.8 and found.in_scope_recall >= 0.95
    if meta.out_of_scope.method == "mahalanobis":
        assert "detector.npz" in meta.files
    unseen = [t for t, _ in read_shared("emotion", "test")[:40]]
    assert served(registry, "oos", meta.version, unseen).mean() >= 0.7
    # the same data without a detector: macro-F1 equal, out-of-scope recall 0 < production's
    second = train(
        data(ten_classes, 30), TrainConfig(**base, out_of_scope="off"), registry=registry
    )
    assert not second.promoted, second.promotion_reason
    assert "out-of-scope recall 0.0000 < champion" in second.promotion_reason
    assert not served(registry, "oos", second.metadata.version, unseen).any()
    assert registry.resolve("oos", "production") == meta.version
