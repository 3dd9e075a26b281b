"""The int8 guard's decisions against test accuracy (issue: fast by default).

For each data set and size (examples per class from the official train split, `all` for
the whole split), trains with `refit train --quantize always` (both graphs kept), reads
the guard's evidence from the version's metadata, works out what `auto` would have decided
(`training.quantization.int8_problems`: the same rule), and scores both graphs on the
official test split (never used by the guard). The goal: `auto` keeps int8 wherever its
test accuracy is within 0.3 points of fp32's, and refuses it where it is not.

    python bench/quant_guard.py [--data banking77 emotion trec] [--sizes 8 64 all]

Results are merged into bench/results/quant_guard.json (keyed by data set, size, seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.harness.data import read_shared  # noqa: E402
from training.evaluate import OnnxRunner  # noqa: E402
from training.quantization import Agreement, int8_problems  # noqa: E402

OUT = REPO / "bench" / "results" / "quant_guard.json"


def sample(rows: list[tuple[str, str]], per_class: int | None, seed: int) -> list:
    if per_class is None:
        return rows
    rng, by = random.Random(seed), {}
    for row in rows:
        by.setdefault(row[1], []).append(row)
    out = []
    for label in sorted(by):
        members = by[label][:]
        rng.shuffle(members)
        out += members[:per_class]
    return out


def run(dataset: str, size: str, seed: int) -> dict:
    per_class = None if size == "all" else int(size)
    rows = sample(read_shared(dataset, "train"), per_class, seed)
    test = read_shared(dataset, "test")
    with tempfile.TemporaryDirectory(prefix="refit-qguard-") as tmp:
        data = Path(tmp) / "train.csv"
        with data.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(rows)
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "service.cli", "--home", str(home), "train", str(data)]
        cmd += ["--quantize", "always", "--seed", str(seed)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        train_s = time.perf_counter() - t0
        folder = next(home.glob("**/model.int8.onnx")).parent
        meta = json.loads((folder / "metadata.json").read_text())
        q = meta["quantization"]
        labels = meta["labels"]
        texts = [t for t, _ in test]
        y = np.array([labels.index(label) for _, label in test])
        tokenizer = folder / "tokenizer.json"
        acc = {
            name: float(
                np.mean(OnnxRunner(folder / f, tokenizer).predict_proba(texts).argmax(1) == y)
            )
            for name, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))
        }
    agreed = Agreement(
        rate=q["argmax_agreement"],
        texts=q["examples"],
        worst_class=q["worst_class"],
        worst_flips=q["worst_class_flips"] or 0,
        worst_count=q["worst_class_count"] or 0,
    )
    problems = int8_problems(agreed, q["paired_p_value"])
    loss = round((acc["fp32"] - acc["int8"]) * 100, 2)
    return {
        "dataset": dataset,
        "size": size,
        "seed": seed,
        "strategy": meta["strategy"],
        "train_texts": len(rows),
        "train_s": round(train_s, 1),
        "guard": {
            "agreement": q["argmax_agreement"],
            "texts": q["examples"],
            "worst_class": [q["worst_class"], q["worst_class_flips"], q["worst_class_count"]],
            "paired": [q["paired_lost"], q["paired_gained"], q["paired_p_value"]],
            "auto_serves_int8": not problems,
            "problems": problems,
        },
        "test_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "int8_test_loss_points": loss,
        "decision_right": (not problems) == (loss <= 0.3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["banking77", "emotion", "trec"])
    parser.add_argument("--sizes", nargs="+", default=["8", "64", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    for dataset in args.data:
        for size in args.sizes:
            for seed in args.seeds:
                row = run(dataset, size, seed)
                results["runs"][f"{dataset}/{size}/{seed}"] = row
                args.out.write_text(json.dumps(results, indent=1) + "\n")
                print(json.dumps(row), flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
