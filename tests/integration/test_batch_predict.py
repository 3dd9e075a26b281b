"""`refit predict`: a file scored in resumable chunks by a real trained version (real
MiniLM, onnxruntime), bad rows recorded, a SIGKILLed run resumed without re-scoring."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import Registry
from service.loading import load_model
from service.settings import Settings
from service.state import open_state
from tests.conftest import REPO, banking77_slice
from training import TrainConfig
from training.pipeline import train


@pytest.fixture(scope="module")
def home(tmp_path_factory, ten_classes) -> Path:
    root = tmp_path_factory.mktemp("batch-home")
    classes = ten_classes[:4]
    registry = service_registry(root)
    result = train(
        banking77_slice("train", classes, 8),
        TrainConfig(name="b", strategy="feature_extraction"),
        registry=registry,
    )
    registry.promote("b", result.metadata.version)
    return root


@pytest.fixture(scope="module")
def texts(ten_classes) -> list[str]:
    return [t for t, _ in banking77_slice("test", ten_classes[:4], None)]


def service_registry(home: Path) -> Registry:
    """The registry with the aliases in the home's store, as `refit` opens it."""
    return open_state(Settings(home=home))[1]


def refit(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "service.cli", "--home", str(home), "predict", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def _csv(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    writer.writerows(rows)
    return buffer.getvalue()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_file_is_scored_as_predict_answers_and_bad_rows_are_recorded(home, texts, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(texts[:120])]
    lines[10] = "{not json"
    lines[20] = json.dumps({"id": "s", "text": "half \ud800 a pair"})
    lines[30] = json.dumps({"id": "n"})
    src.write_text("\n".join(lines) + "\n")
    done = refit(home, str(src), "--model", "b", "--chunk-rows", "50", "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rows"], summary["scored"], summary["errors"]) == (120, 117, 3)
    assert summary["chunks"] == 3 and summary["resumed_chunks"] == 0
    out = jsonl(tmp_path / "in.predictions.jsonl")
    assert [r["id"] for r in out] == [f"t{i}" for i in range(120) if i not in (10, 20, 30)]
    errors = jsonl(tmp_path / "in.predictions.jsonl.errors.jsonl")
    assert [(e["row"], e["id"]) for e in errors] == [(11, "11"), (21, "s"), (31, "n")]
    assert errors[0]["error"].startswith("not JSON")
    assert "lone surrogate U+D800" in errors[1]["error"] and errors[2]["error"] == "missing text"
    assert not (tmp_path / "in.predictions.jsonl.parts").exists()
    # the same answers as the served model gives, row for row
    registry = service_registry(home)
    model = load_model(registry.get("b"), threads=1, graph_optimization="all", device="cpu")
    labels = model.labels
    probe = out[:40]
    scored = model.score([texts[int(r["id"][1:])] for r in probe])
    for k, row in enumerate(probe):
        assert row["label"] in labels and len(row["top"]) == 2
        assert row["label"] == labels[int(scored.probabilities[k].argmax())] or row["out_of_scope"]
        assert row["score"] == pytest.approx(float(scored.probabilities[k].max()), abs=1e-3)


def test_csv_from_stdin_to_stdout_and_stop_on_the_first_bad_row(home, texts, tmp_path):
    rows = _csv([(f"c{i}", t) for i, t in enumerate(texts[:5])])
    piped = refit(home, "-", "--model", "b", "--format", "csv", "--out", "-", input=rows)
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(x)["id"] for x in piped.stdout.splitlines()] == [f"c{i}" for i in range(5)]
    bad = tmp_path / "bad.csv"
    bad.write_text(_csv([*((f"c{i}", t) for i, t in enumerate(texts[:5])), ("c5", "")]))
    stopped = refit(home, str(bad), "--model", "b", "--on-error", "stop", "--chunk-rows", "3")
    assert stopped.returncode == 2
    assert "row 6: empty text; stopped (on_error=stop) after 3 rows" in stopped.stderr
    assert not (tmp_path / "bad.predictions.jsonl").exists()  # nothing half-written
    assert len(list((tmp_path / "bad.predictions.jsonl.parts").glob("*.out"))) == 1
    # the same parts with other options are another batch's: refused, not mixed in
    other = refit(home, str(bad), "--model", "b", "--top-k", "3", "--chunk-rows", "3")
    assert other.returncode == 2 and "holds the parts of another batch (different top_k)" in (
        other.stderr
    )
    # the input changed since those parts were written: another batch, refused
    bad.write_text(bad.read_text() + "c6,one more\n")
    changed = refit(home, str(bad), "--model", "b", "--chunk-rows", "3")
    assert changed.returncode == 2 and "different input_bytes" in changed.stderr
    missing = refit(home, str(tmp_path / "nope.csv"), "--model", "b")
    assert missing.returncode == 2 and "no file" in missing.stderr
    unknown = refit(home, str(bad), "--model", "b", "--version", "v0")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    onto = refit(home, str(bad), "--model", "b", "--out", str(bad))
    assert onto.returncode == 2 and "would overwrite the input" in onto.stderr
    # Excel's "CSV UTF-8" (a byte-order mark), an id that is not valid Unicode
    excel = tmp_path / "excel.csv"
    excel.write_bytes(
        b"\xef\xbb\xbf"
        + _csv([("e0", texts[0]), ("e\udc80", texts[1])]).encode("utf-8", "surrogateescape")
    )
    read = refit(home, str(excel), "--model", "b", "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["scored"] == 1
    refused = jsonl(tmp_path / "excel.predictions.jsonl.errors.jsonl")
    assert refused == [
        {"row": 2, "id": None, "error": "id contains lone surrogate U+DC80 at position 1"}
    ]


def test_a_killed_run_resumes_from_its_finished_chunks(home, texts, tmp_path):
    src = tmp_path / "big.jsonl"
    n = 4000
    src.write_text(
        "".join(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n" for i in range(n))
    )
    parts = tmp_path / "big.predictions.jsonl.parts"
    args = [str(src), "--model", "b", "--chunk-rows", "100", "--threads", "1", "--json"]
    cmd = [sys.executable, "-m", "service.cli", "--home", str(home), "predict", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list(parts.glob("*.out"))) < 3:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no 3 chunks within 240 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in parts.glob("*.out"))
    first = (parts / finished[0]).read_bytes()
    assert not (tmp_path / "big.predictions.jsonl").exists()

    done = refit(home, *args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == n and summary["resumed_chunks"] >= len(finished)
    assert summary["scored"] == n - 100 * summary["resumed_chunks"]  # finished ones not re-scored
    out = (tmp_path / "big.predictions.jsonl").read_bytes()
    assert out.startswith(first)  # the chunk finished before the kill, byte for byte
    assert [json.loads(x)["id"] for x in out.splitlines()] == [str(i) for i in range(n)]
    assert not parts.exists()
