"""The real MiniLM backbone on small Banking77 slices, exported and run with onnxruntime."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import Registry
from tests.conftest import banking77_slice, read_banking77, read_shared
from training import Cancelled, DataError, TrainConfig
from training.evaluate import OnnxRunner
from training.pipeline import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fe_result(tmp_path_factory, ten_classes):
    root = tmp_path_factory.mktemp("registry")
    events = []
    result = train(
        banking77_slice("train", ten_classes, per_class=8),
        TrainConfig(name="b10"),
        registry=Registry(root),
        test_data=banking77_slice("test", ten_classes, per_class=None),
        progress=events.append,
    )
    return result, Registry(root), events


def test_feature_extraction_on_ten_classes_reaches_accuracy(fe_result, ten_classes) -> None:
    result, registry, _ = fe_result
    meta = result.metadata
    assert meta.strategy == "feature_extraction"
    assert "p10 of examples per class is 8 < 16" in meta.reason
    assert meta.labels == ten_classes
    assert meta.data.count == 80 and meta.data.validation_count == 10
    # 400 test rows for these classes; one is an exact duplicate and is counted once
    assert meta.test_metrics is not None and meta.test_metrics.count == 399
    assert meta.test_metrics.accuracy >= 0.7
    assert set(meta.test_metrics.per_class) == set(ten_classes)
    assert np.asarray(meta.test_metrics.confusion).sum() == 399
    assert registry.verify("b10", meta.version).metadata == meta


def test_scores_are_calibrated_by_the_version_s_temperature(fe_result, ten_classes) -> None:
    """A few-shot probe is calibrated on its out-of-fold logits and the validation split
    (10 validation examples alone would be too few); the temperature lives in the metadata
    and the inference loop applies it, so the served scores are softmax(logits / T)."""
    from models._inference import softmax
    from training.evaluate import OnnxRunner

    result, registry, _ = fe_result
    cal = result.metadata.calibration
    assert cal is not None and cal.method == "temperature"
    assert cal.fitted_on == "out-of-fold training + validation" and cal.count == 80
    assert cal.temperature != 1.0 and result.metadata.temperature == cal.temperature
    assert cal.ece_after is not None and cal.brier_after is not None
    mv = registry.get("b10", result.metadata.version)
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json", temperature=cal.temperature)
    texts = [t for t, _ in banking77_slice("test", ten_classes, per_class=3)]
    served = runner.predict_proba(texts)
    assert np.allclose(served, softmax(runner.predict_logits(texts) / cal.temperature), atol=1e-5)
    assert not np.allclose(
        served, OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json").predict_proba(texts), atol=1e-3
    )


def test_exported_onnx_matches_torch_and_declares_its_interface(fe_result) -> None:
    result, registry, _ = fe_result
    mv = registry.get("b10", result.metadata.version)
    assert result.metadata.onnx.parity_max_abs_diff <= 1e-4
    graph = onnx.load(str(mv.onnx_path)).graph
    # the transformer optimizer fused MiniLM's six attention blocks (and more)
    assert result.metadata.onnx.fused is not None and result.metadata.onnx.fused["Attention"] == 6
    assert sum(n.op_type == "Attention" for n in graph.node) == 6
    assert not (mv.path / "model.fused.onnx").exists()
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["probabilities", "logits", "pooled"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    probs = runner.predict_proba(
        ["How do I activate my new card?", "please cancel the transfer I just made"]
    )
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [mv.metadata.labels[i] for i in probs.argmax(axis=1)] == [
        "activate_my_card",
        "cancel_transfer",
    ]


def test_progress_walks_through_phases_in_order(fe_result) -> None:
    _, _, events = fe_result
    phases = [e.phase for e in events]
    order = ["validating", "embedding", "training", "exporting", "evaluating", "publishing", "done"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order
    assert events[-1].fraction == 1.0


def test_embedding_cache_makes_a_retrain_recompute_nothing(fe_result, ten_classes) -> None:
    _, registry, _ = fe_result
    again = train(
        banking77_slice("train", ten_classes, per_class=8),
        TrainConfig(name="b10"),
        registry=registry,
    )
    assert again.details["embedding"]["cache_hits"] == 80
    assert again.details["embedding"]["computed"] == 0
    assert again.metadata.parent_version is None  # nothing promoted yet


def test_cancel_during_export_publishes_nothing_and_cleans_up(tmp_path: Path, ten_classes) -> None:
    registry = Registry(tmp_path)
    seen = {"exporting": False}

    def progress(event) -> None:
        seen["exporting"] |= event.phase == "exporting"

    with pytest.raises(Cancelled, match="cancelled during exporting"):
        train(
            banking77_slice("train", ten_classes[:3], 4),
            TrainConfig(name="c"),
            registry=registry,
            progress=progress,
            cancel=lambda: seen["exporting"],  # true once the ONNX file is being written
        )
    assert registry.list_versions("c") == []
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".staging")] == []


def test_one_epoch_fine_tuning_end_to_end_with_int8_and_fp16(tmp_path: Path, ten_classes) -> None:
    registry = Registry(tmp_path)
    result = train(
        banking77_slice("train", ten_classes[:4], per_class=12),
        TrainConfig(
            name="ft",
            strategy="fine_tuning",
            epochs=1,
            batch_size=16,
            quantize="always",
            fp16="always",  # built and gated on CPU: no GPU needed for the gate
            promote=True,
        ),
        registry=registry,
    )
    meta = result.metadata
    assert meta.strategy == "fine_tuning"
    assert "forced to fine_tuning" in meta.reason
    assert result.details["fine_tuning"]["best_epoch"] == 1
    assert len(result.details["fine_tuning"]["history"]) == 1
    q = meta.quantization
    assert meta.quantized and q is not None and q.served_on_cpu and q.policy == "always"
    assert q.argmax_agreement >= 0.9
    assert q.fp32_macro_f1 == meta.metrics.macro_f1 and q.int8_macro_f1 is not None
    assert "quantize=always" in q.reason
    # judged on every training-time text, with a paired test on validation
    assert q.examples == meta.data.train_count + meta.data.validation_count
    assert q.paired_p_value is not None and 0 <= q.paired_p_value <= 1
    assert q.argmax_agreement >= 0.9 and f"on {q.examples} training-time texts" in q.reason
    half = meta.fp16
    assert half is not None and half.served_on_cuda and half.file == "model.fp16.onnx"
    assert 0 < half.parity_max_abs_diff <= 1e-2 and half.argmax_agreement >= 0.99
    assert half.reason.startswith("fp16 served on CUDA: max |p_fp16 - p_fp32|")
    mv = registry.verify("ft", meta.version)  # every graph is a hashed file of the version
    assert set(meta.files) >= {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "tokenizer.json"}
    assert (mv.path / "model.fp16.onnx").stat().st_size < (
        mv.path / "model.onnx"
    ).stat().st_size * 0.6
    assert mv.graph_path(cuda=False).name == "model.int8.onnx"
    assert mv.graph_path(cuda=True).name == "model.fp16.onnx"
    assert mv.graph_path(cuda=False, allow_int8=False).name == "model.onnx"
    assert registry.aliases("ft") == {"production": meta.version}
    assert result.promoted


def test_test_labels_unknown_to_training_are_refused(tmp_path: Path, ten_classes) -> None:
    with pytest.raises(DataError, match="test data has labels not in the training data"):
        train(
            banking77_slice("train", ten_classes[:2], 4),
            TrainConfig(name="x"),
            registry=Registry(tmp_path),
            test_data=banking77_slice("test", ten_classes[2:4], 2),
        )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_train_json_and_models_commands(tmp_path: Path, ten_classes) -> None:
    data = tmp_path / "train.csv"
    rows = banking77_slice("train", ten_classes[:3], 6)
    data.write_text("text,category\n" + "".join(f'"{t}",{c}\n' for t, c in rows))
    test = tmp_path / "test.jsonl"
    test.write_text(
        "".join(
            json.dumps({"text": t, "label": c}) + "\n"
            for t, c in banking77_slice("test", ten_classes[:3], 5)
        )
    )
    home = str(tmp_path / "home")
    proc = run_cli(
        "--home",
        home,
        "train",
        str(data),
        "--name",
        "cli",
        "--test",
        str(test),
        "--json",
        "--promote",
        "--quantize",  # the bare flag: int8 always built and served on CPU
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "cli" and out["strategy"] == "feature_extraction"
    assert set(out["metrics"]) >= {"accuracy", "macro_f1"} and out["test_metrics"]["count"] == 15
    listed = json.loads(run_cli("--home", home, "models", "list", "--json").stdout)
    assert [(r["version"], r["aliases"]) for r in listed] == [(out["version"], ["production"])]
    verified = json.loads(run_cli("--home", home, "models", "verify", "cli", "--json").stdout)
    assert verified == [{"name": "cli", "version": out["version"], "ok": True, "files": 3}]
    (Path(out["path"]) / "tokenizer.json").write_text("{}")
    bad = run_cli("--home", home, "models", "verify", "cli")
    assert bad.returncode == 2
    assert f"cli {out['version']}: CORRUPT: " in bad.stdout
    assert "tokenizer.json: sha256" in bad.stdout and "Traceback" not in bad.stderr


def test_cli_promote_goes_through_the_gate_and_force_skips_it(tmp_path: Path, ten_classes) -> None:
    """`refit train --promote` is judged like a service retrain: production is scored on the
    new version's validation examples. A challenger on a tiny random encoder is worse than
    the MiniLM champion on the same examples and is kept as a candidate; with `--force` it
    becomes production anyway."""
    from tests.integration.test_backbones import _words, make_bert

    home = str(tmp_path / "home")
    rows = banking77_slice("train", ten_classes, 8)
    data = tmp_path / "train.csv"
    data.write_text("text,category\n" + "".join(f'"{t}",{c}\n' for t, c in rows))
    tiny = tmp_path / "tiny-bert"
    make_bert(tiny, _words(rows))

    def cli_train(*flags: str) -> dict:
        proc = run_cli("--home", home, "train", str(data), "--name", "g", "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = cli_train("--promote")
    assert first["promoted"] is True and first["promotion_reason"] == "no production model yet"
    weak = cli_train("--backbone", str(tiny), "--promote")
    assert weak["promoted"] is False, weak
    assert weak["promotion_reason"].endswith("held-out examples: kept as a candidate")
    forced = cli_train("--backbone", str(tiny), "--promote", "--force")
    assert forced["promoted"] is True and forced["promotion_reason"] == "promote=always"
    listed = json.loads(run_cli("--home", home, "models", "list", "g", "--json").stdout)
    assert [r["version"] for r in listed if "production" in r["aliases"]] == [forced["version"]]


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("text,label\nhello,a\nhi,a\nlonely,b\n")
    proc = run_cli("--home", str(tmp_path / "home"), "train", str(data))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "refit: class 'b' has 1 example after de-duplication, need at least 2; add examples or remove the class"
    )
    assert not (tmp_path / "home").exists() or Registry(tmp_path / "home").list_models() == []


def test_cli_refuses_a_lone_surrogate_in_a_training_file(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    rows = [("fine", "a"), ("also fine", "a"), ("broken \\ud800 here", "b"), ("ok", "b")]
    data.write_text("".join(f'{{"text": "{t}", "label": "{y}"}}\n' for t, y in rows))
    proc = run_cli("--home", str(tmp_path / "home"), "train", str(data))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "refit: bad.jsonl line 3: text contains lone surrogate U+D800 at position 7;"
        " remove it or send the whole character (valid Unicode)"
    )
    assert not (tmp_path / "home").exists() or Registry(tmp_path / "home").list_models() == []


def test_strong_probe_is_not_adapted(fe_result) -> None:
    result, _, _ = fe_result
    probe = result.details["probe"]
    assert probe["strength"] >= 0.6  # intents fit the frozen geometry ...
    assert "fine_tuning" not in result.details  # ... so auto neither fine-tunes
    assert "the probe is weak" not in result.metadata.reason  # nor says it would
    assert result.metadata.strategy == "feature_extraction"
    assert probe["selection"] == "cross-validation"
    assert {"10", "10+names"} <= set(probe["search"])


def trec_slice(per_class: int) -> list[tuple[str, str]]:
    rows = read_shared("trec", "train")
    random.Random(0).shuffle(rows)
    classes = sorted({y for _, y in rows})
    return [r for c in classes for r in [x for x in rows if x[1] == c][:per_class]]


def test_weak_probe_with_few_labels_is_fine_tuned_anyway(tmp_path: Path) -> None:
    """TREC question types: the frozen probe is weak, so auto fine-tunes even at 8/class
    (LP-FT when the contrastive step is turned off)."""
    result = train(
        trec_slice(8),
        TrainConfig(name="trec", min_steps=12, max_epochs=4, contrastive_steps=0),
        registry=Registry(tmp_path),
    )
    meta = result.metadata
    assert result.decision.plan == "feature_extraction"  # by the counts alone
    assert result.details["probe"]["strength"] < 0.6
    assert "the probe is weak" in meta.reason and "fine-tuned from it (LP-FT)" in meta.reason
    assert "McNemar p=" in meta.reason
    assert "contrastive" not in result.details
    comparison = result.details["probe_vs_fine_tuning"]
    expected = "feature_extraction" if comparison["probe_better_beyond_noise"] else "fine_tuning"
    assert meta.strategy == expected


def test_a_weak_probe_is_adapted_only_when_cross_fitting_favours_it(tmp_path: Path) -> None:
    result = train(
        trec_slice(8),
        TrainConfig(name="trec", contrastive_steps=12, contrastive_batch_size=24),
        registry=Registry(tmp_path),
    )
    meta = result.metadata
    assert result.details["probe"]["strength"] < 0.6
    estimate = result.details["honest_estimate"]
    assert estimate["folds"] == 3 and estimate["steps_per_fold"] == 8
    assert estimate["examples"] == meta.data.train_count == 42  # out-of-fold: every one
    paired = estimate["probe_vs_contrastive"]
    assert paired["n"] == 42
    ahead = paired["b_macro_f1"] > paired["a_macro_f1"] and (
        paired["b_only_right"] > paired["a_only_right"]
    )
    assert estimate["adapt"] == ahead
    assert ("contrastive" in result.details) == ahead
    assert meta.strategy == ("fine_tuning" if ahead else "feature_extraction")
    assert "an honest estimate (3-fold cross-fitting on the training split" in meta.reason
    assert "out-of-fold macro-F1 contrastive" in meta.reason
    assert ("favours contrastive few-shot fine-tuning" in meta.reason) == ahead
    assert "fine_tuning" not in result.details  # instead of LP-FT, not as well
    if ahead:
        assert result.details["contrastive"]["steps"] == 12
    assert meta.onnx.parity_max_abs_diff <= 1e-4  # an adapted encoder exports like any other


def test_small_data_fine_tuning_reaches_its_steps_and_refits_the_head(tmp_path: Path) -> None:
    classes = sorted({y for _, y in read_banking77("train")})[:3]
    result = train(
        banking77_slice("train", classes, per_class=20),
        TrainConfig(name="sd", min_steps=24, max_epochs=8),
        registry=Registry(tmp_path),
    )
    ft = result.details["fine_tuning"]
    # 54 training examples: 4 epochs at batch 32 is 8 steps < 24, so the small-data recipe
    assert ft["recipe"]["small_data"] and ft["recipe"]["batch_size"] == 16
    assert ft["recipe"]["epochs"] == 6  # 4 steps per epoch at batch 16 -> 24 steps
    assert ft["head"] == "refit logistic regression"
    assert ft["history"][-1]["epoch"] == 6
    comparison = result.details["probe_vs_fine_tuning"]
    assert comparison["n"] == result.metadata.data.validation_count
    assert "crossover zone" in result.metadata.reason and "McNemar p=" in result.metadata.reason
