"""Calibration on held-out test splits: expected calibration error (15 bins) and Brier score
of the served probabilities, before (temperature 1) and after (the version's temperature,
fitted at training time on out-of-fold + validation logits, never on test), for
Banking77, emotion and TREC. Strategy forced to feature extraction at the sizes given
(fine-tuning takes minutes to hours here; `auto` would pick it at 64 per class).

    python bench/calibration_bench.py [--per-class 8 64] [--out bench/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.learning_curve import read, sample, shared  # noqa: E402
from models import Registry  # noqa: E402
from models._inference import softmax  # noqa: E402
from training import TrainConfig  # noqa: E402
from training.calibration import brier, ece  # noqa: E402
from training.evaluate import OnnxRunner  # noqa: E402
from training.pipeline import train  # noqa: E402

DATA = ("banking77", "emotion", "trec")


def measure(data: str, per_class: int, seed: int, home: Path) -> dict:
    data_dir = shared() / "data" / data
    train_rows, test_rows = read("train", data_dir), read("test", data_dir)
    classes = sorted({label for _, label in train_rows})
    started = time.perf_counter()
    result = train(
        sample(train_rows, per_class, seed, classes),
        TrainConfig(name=f"{data}-{per_class}", strategy="feature_extraction", seed=seed),
        registry=Registry(home),
    )
    meta = result.metadata
    mv = Registry(home).get(meta.name, meta.version)
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    texts = [t for t, y in test_rows if y in meta.labels]
    y = np.asarray([meta.labels.index(lab) for t, lab in test_rows if lab in meta.labels])
    logits = runner.predict_logits(texts)
    before, after = softmax(logits), softmax(logits / meta.temperature)
    cal = meta.calibration
    return {
        "data": data,
        "per_class": per_class,
        "seed": seed,
        "test_count": len(y),
        "accuracy": round(float((after.argmax(1) == y).mean()), 4),
        "temperature": meta.temperature,
        "fitted_on": cal.fitted_on if cal else None,
        "fit_count": cal.count if cal else 0,
        "test_ece_before": round(ece(before, y), 4),
        "test_ece_after": round(ece(after, y), 4),
        "test_brier_before": round(brier(before, y), 4),
        "test_brier_after": round(brier(after, y), 4),
        "train_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--data", nargs="+", default=list(DATA))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "calibration.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for per_class in args.per_class:
                row = measure(data, per_class, args.seed, Path(tmp))
                print(json.dumps(row), flush=True)  # noqa: T201 - progress of a script
                rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "calibration",
        "machine": {"python": platform.python_version()},
        "protocol": "feature extraction; temperature fitted on out-of-fold training + validation"
        " logits; ECE (15 bins) and Brier on the official test split",
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
