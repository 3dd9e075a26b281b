"""The benchmarks' --quick modes: each script runs end to end and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def test_learning_curve_quick(tmp_path: Path) -> None:
    out = tmp_path / "curve.json"
    proc = run("learning_curve.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["classes"] == 10
    assert {(r["size"], r["strategy"], r["chosen"]) for r in result["runs"]} == {
        ("4", "feature_extraction", "feature_extraction"),
        ("4", "auto", "feature_extraction"),
    }
    for r in result["runs"]:
        assert r["test_accuracy"] >= 0.7
        assert r["peak_rss_mb"] > 100 and r["train_export_s"] > 0
        assert "p10 of examples per class is 4" in r["reason"]
        if r["strategy"] == "auto":
            assert "4 < 16: few labels per class" in r["reason"]


def test_serve_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = run("serve_bench.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"]["labels"] == 77
    graphs = result["graphs"]
    assert {name: g["file"] for name, g in graphs.items()} == {
        "fp32": "model.onnx",
        "int8": "model.int8.onnx",
    }
    assert {name: g["service"]["graph"] for name, g in graphs.items()} == {
        "fp32": "model.onnx",
        "int8": "model.int8.onnx",
    }
    assert graphs["int8"]["size_mb"] < graphs["fp32"]["size_mb"] / 2
    for g in graphs.values():
        assert g["service"]["errors"] == 0
        assert len(g["service"]["worker_rss_mb"]) == 2
        assert g["raw_onnxruntime"]["p50_ms_c1"] > 0 and g["service"]["p50_ms_c1"] > 0
        assert g["ratios"]["p50_c1_service_vs_raw"] > 0
        assert g["every_request_through_the_thread"]["p50_c1_service_vs_raw"] > 0
        # the c=1 phase read the service's own histograms: every request was scored
        assert g["service"]["inside_c1"]["inference_mean_ms"] > 0
        assert g["service"]["mean_batch_size"] >= 1
        assert g["test"]["examples"] == 3080 and g["test"]["accuracy"] > 0.5
    assert abs(result["int8_vs_fp32"]["test_accuracy_points"]) < 5
    assert set(result["targets"]) == {
        "int8_p50_ms_c1_le_5",
        "p50_c1_service_vs_raw_le_1.3",
        "throughput_ratio_ge_1.0",
    }


def test_peers_quick(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = run("peers.py", "--quick", "--out", str(out))  # creates bench/.venv-peers on first use
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["setfit"]
    assert row["per_class"] == 8 and row["refit_auto"]["chosen"] == "feature_extraction"
    assert 0 < row["setfit"]["test_accuracy"] <= 1 and row["setfit"]["train_s"] > 0
    assert result["fine_tuning"]["refit"]["epochs_run"] == 1
    assert result["fine_tuning"]["hf_trainer"]["epochs"] == 1
    assert result["inference"]["refit_onnx"]["texts_per_s_batch32"] > 0
    assert result["inference"]["transformers_pipeline"]["texts_per_s_batch1"] > 0
    assert not (REPO / "checkpoints").exists()  # peers never write into the checkout


def test_swap_under_load_quick(tmp_path: Path) -> None:
    out = tmp_path / "swap.json"
    proc = run("swap_under_load.py", "--quick", "--out", str(out))
    assert out.exists(), proc.stderr[-2000:]
    result = json.loads(out.read_text())
    # the behaviour: no failed request and only known versions, both workers, every swap
    # issued under load; how fast swaps spread and the strict per-worker order (client-side
    # timestamps: jitter on a busy machine) are the full benchmark's numbers
    assert result["workers"] == 2 and result["non_2xx"] == 0, result
    assert result["unknown_versions"] == []
    assert [e["kind"] for e in result["events"]] == ["promote"] * 3 + ["rollback"]
    assert result["latency_idle"]["requests"] > 0 and result["latency_during_swaps"]["requests"] > 0
    reached = [e for e in result["swap_reached_all_workers"] if e["all_workers_after_s"]]
    assert reached, result["swap_reached_all_workers"]  # the swaps really happened
