"""Batch scoring throughput: `refit predict`'s engine (service/batch.py) against raw
onnxruntime on the same graph, threads and batch size (issue: fast by default).

Writes a JSONL file of `--rows` rows (Banking77 test texts, cycled, with ids), then times,
in one run and interleaved (raw, Refit, raw): raw = tokenizers' padded batches of
`--batch` texts + `session.run` + argmax, nothing read or written (and "raw sorted": the
same after sorting each chunk's texts by length, as the engine does, so the comparison
isolates what the engine adds); Refit = the whole
`score_file` (stream the file, check every row, score, write one JSON answer per row in
resumable chunks, assemble the output). Goal: Refit rows/s ≥ 0.9× raw.

    python bench/batch_bench.py [--rows 100000] [--threads 1] [--batch 64]

The model: `--home DIR --model NAME` (its production), or a 10-class Banking77 model
trained here (feature extraction, 8 per class, `auto` quantization).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models._inference import BUCKET  # noqa: E402
from service.batch import BatchSpec, score_file  # noqa: E402
from service.harness.data import banking77_slice, read_banking77  # noqa: E402
from service.loading import load_model  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.state import open_state  # noqa: E402

OUT = REPO / "bench" / "results" / "batch_bench.json"


def first_model(tmp: Path) -> Path:
    classes = sorted({label for _, label in read_banking77("train")})[:10]
    data = tmp / "train.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(banking77_slice("train", classes, per_class=8, seed=0))
    home = tmp / "home"
    cmd = [sys.executable, "-m", "service.cli", "--home", str(home), "train", str(data)]
    subprocess.run([*cmd, "--promote"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return home


def raw_rows_per_s(model, texts: list[str], batch: int, sort_within: int = 0) -> float:
    """Tokenize in padded batches and run the graph: the floor any server adds to. With
    `sort_within`, texts are first sorted by length within blocks of that many (what the
    engine does with each chunk), so batches pad less."""
    tokenizer = model.tokenizer
    tokenizer.enable_padding(pad_id=model.pad_id)
    started = time.perf_counter()
    if sort_within:
        blocks = [texts[i : i + sort_within] for i in range(0, len(texts), sort_within)]
        texts = [t for block in blocks for t in sorted(block, key=len)]
    for i in range(0, len(texts), batch):
        enc = tokenizer.encode_batch(texts[i : i + batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        probs = model.session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})
        probs[0].argmax(1)
    seconds = time.perf_counter() - started
    tokenizer.no_padding()
    return len(texts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--raw-rows", type=int, default=20_000, help="rows of each raw pass (rates per row)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--batch", type=int, default=BUCKET, help="raw batch size (default: the engine's)"
    )
    parser.add_argument("--chunk-rows", type=int, default=1000)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refit-batch-bench-"))
    home = args.home or first_model(tmp)
    registry = open_state(Settings(home=home))[1]
    mv = registry.verify(args.model, "production")
    model = load_model(mv, threads=args.threads, graph_optimization="all", device="cpu")
    pool = [t for t, _ in read_banking77("test")]
    texts = [pool[i % len(pool)] for i in range(args.rows)]
    source = tmp / "rows.jsonl"
    with source.open("w") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")

    some = texts[: args.raw_rows]
    raw = [raw_rows_per_s(model, some, args.batch)]
    raw_sorted = [raw_rows_per_s(model, some, args.batch, args.chunk_rows)]
    spec = BatchSpec(
        model=mv.name,
        version=mv.version,
        source=str(source),
        output=str(tmp / "rows.predictions.jsonl"),
        chunk_rows=args.chunk_rows,
    )
    started = time.perf_counter()
    result = score_file(spec, model)
    refit = result.scored / (time.perf_counter() - started)
    raw.append(raw_rows_per_s(model, some, args.batch))
    raw_sorted.append(raw_rows_per_s(model, some, args.batch, args.chunk_rows))
    raw_mean = sum(raw) / len(raw)
    sorted_mean = sum(raw_sorted) / len(raw_sorted)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "settings": {
            "rows": args.rows,
            "raw_rows": len(some),
            "threads": args.threads,
            "raw_batch": args.batch,
            "chunk_rows": args.chunk_rows,
            "graph": model.graph,
        },
        "raw_rows_per_s": [round(r, 1) for r in raw],
        "refit_rows_per_s": round(refit, 1),
        "raw_sorted_rows_per_s": [round(r, 1) for r in raw_sorted],
        "refit_vs_raw": round(refit / raw_mean, 3),
        "refit_vs_raw_sorted": round(refit / sorted_mean, 3),
        "goal_met": refit / raw_mean >= 0.9,
        "rows_scored": result.scored,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
