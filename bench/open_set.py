"""Open-intent detection on Banking77 (the TEXTOIR protocol, Zhang et al. 2021): train on a
random 25%, 50% or 75% of the classes, test on the whole test split, where texts of the
unseen classes must be answered out of scope.

Per run, on the same trained version: the service's own answer (its detector and
threshold, chosen at training time without seeing any unseen class) next to the
maximum-softmax baseline (out of scope when the top raw softmax probability < 0.5, the
TEXTOIR convention). Reported: accuracy with "out of scope" as one more class, macro-F1 over
known classes + out of scope, out-of-scope F1, in-scope accuracy (a known-class text
answered out of scope is wrong) next to the same model's accuracy without a detector, and
AUROC of each score. Results are written after every run.

    python bench/open_set.py [--ratios 0.25 0.5 0.75] [--draws 3] [--sizes 8 all]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.learning_curve import read, sample, shared  # noqa: E402
from models import Registry  # noqa: E402
from models._detector import Detector  # noqa: E402
from models._inference import softmax  # noqa: E402
from training import TrainConfig  # noqa: E402
from training.evaluate import OnnxRunner  # noqa: E402
from training.out_of_scope import auroc, fit_gaussian  # noqa: E402
from training.pipeline import train  # noqa: E402


def open_set_scores(pred: np.ndarray, truth: np.ndarray, n_known: int) -> dict[str, float]:
    """`pred`/`truth`: class ids, `n_known` meaning out of scope."""
    from sklearn.metrics import f1_score

    ids = list(range(n_known + 1))
    per_class = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
    inside = truth < n_known
    return {
        "accuracy": round(float(np.mean(pred == truth)), 4),
        "macro_f1": round(float(np.mean(per_class)), 4),
        "known_macro_f1": round(float(np.mean(per_class[:-1])), 4),
        "oos_f1": round(float(per_class[-1]), 4),
        "oos_recall": round(float(np.mean(pred[~inside] == n_known)), 4),
        "in_scope_accuracy": round(float(np.mean(pred[inside] == truth[inside])), 4),
    }


def run(ratio: float, size: int | None, draw: int, home: Path) -> dict:
    data_dir = shared() / "data" / "banking77"
    train_rows, test_rows = read("train", data_dir), read("test", data_dir)
    classes = sorted({y for _, y in train_rows})
    known = sorted(random.Random(draw).sample(classes, round(ratio * len(classes))))
    started = time.perf_counter()
    result = train(
        sample(train_rows, size, draw, known),
        TrainConfig(name=f"b77-{int(ratio * 100)}-{size or 'all'}-{draw}", seed=draw),
        registry=Registry(home),
    )
    meta = result.metadata
    mv = Registry(home).get(meta.name, meta.version)
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    texts = [t for t, _ in test_rows]
    index = {label: i for i, label in enumerate(meta.labels)}
    n = len(meta.labels)
    truth = np.asarray([index.get(y, n) for _, y in test_rows])
    logits, pooled = runner.outputs(texts, ("logits", "pooled"))
    raw, calibrated = softmax(logits), softmax(logits / meta.temperature)
    argmax = calibrated.argmax(1)
    detector = Detector.for_version(meta.out_of_scope, mv.path)
    assert detector is not None
    ours = detector.scores(calibrated, pooled)
    msp = 1.0 - raw.max(1)
    inside = truth < n
    # diagnostics only (the choice was made at training time): each candidate's test AUROC
    seen = sample(train_rows, size, draw, known)
    x_fit = runner.outputs([t for t, _ in seen], ("pooled",))[0]
    gaussian = fit_gaussian(x_fit, np.asarray([index[y] for _, y in seen]), n)
    by_method = {
        "max_probability": 1.0 - calibrated.max(1),
        "mahalanobis": gaussian.score(pooled),
        "max_raw_softmax": msp,
    }
    oos = meta.out_of_scope
    return {
        "ratio": ratio,
        "per_class": size or "all",
        "draw": draw,
        "known_classes": n,
        "strategy": meta.strategy,
        "train_s": round(time.perf_counter() - started, 1),
        "detector": {
            "method": oos.method,
            "threshold": oos.threshold,
            "evidence": oos.evidence.model_dump() if oos.evidence else None,
        },
        "in_scope_accuracy_without_detector": round(
            float(np.mean(argmax[inside] == truth[inside])), 4
        ),
        "refit": {
            **open_set_scores(np.where(ours > oos.threshold, n, argmax), truth, n),
            "auroc": round(auroc(ours[inside], ours[~inside]), 4),
        },
        "max_softmax_0.5": {
            **open_set_scores(np.where(raw.max(1) < 0.5, n, argmax), truth, n),
            "auroc": round(auroc(msp[inside], msp[~inside]), 4),
        },
        "test_auroc_by_score": {
            m: round(auroc(v[inside], v[~inside]), 4) for m, v in by_method.items()
        },
        "test_count": len(truth),
        "unseen_count": int((~inside).sum()),
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["ratio"], str(r["per_class"])) for r in rows}):
        group = [r for r in rows if (r["ratio"], str(r["per_class"])) == key]

        def mean(path: tuple[str, ...], group: list[dict] = group) -> float:
            values = []
            for r in group:
                v = r
                for p in path:
                    v = v[p]
                values.append(v)
            return round(float(np.mean(values)), 4)

        out.append(
            {
                "ratio": key[0],
                "per_class": key[1],
                "draws": len(group),
                **{
                    f"{who}_{m}": mean((who, m))
                    for who in ("refit", "max_softmax_0.5")
                    for m in ("accuracy", "macro_f1", "oos_f1", "in_scope_accuracy", "auroc")
                },
                "in_scope_accuracy_without_detector": mean(("in_scope_accuracy_without_detector",)),
            }
        )
    return out


def plot(summary: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, size in zip(axes, ("8", "all"), strict=True):
        rows = [r for r in summary if r["per_class"] == size]
        if not rows:
            continue
        ratios = [r["ratio"] for r in rows]
        for who, style in (("refit", "o-"), ("max_softmax_0.5", "s--")):
            ax.plot(ratios, [r[f"{who}_oos_f1"] for r in rows], style, label=f"{who} OOS F1")
            ax.plot(
                ratios, [r[f"{who}_accuracy"] for r in rows], style, alpha=0.5, label=f"{who} acc"
            )
        ax.set_title(f"Banking77 open set, {size} per class")
        ax.set_xlabel("share of classes known")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--all-draws", type=int, default=None, help="draws at all data")
    parser.add_argument("--sizes", nargs="+", default=["8", "all"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "open_set.json"))
    args = parser.parse_args()
    out = Path(args.out)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            size = None if size_text == "all" else int(size_text)
            draws = args.all_draws if size is None and args.all_draws else args.draws
            for ratio in sorted(args.ratios, reverse=True):
                for draw in range(draws):
                    row = run(ratio, size, draw, Path(tmp))
                    rows.append(row)
                    print(json.dumps({k: row[k] for k in ("ratio", "per_class", "draw", "refit")}))
                    summary = summarise(rows)
                    out.write_text(
                        json.dumps(
                            {
                                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                                "protocol": __doc__.split("\n\n")[0],
                                "summary": summary,
                                "runs": rows,
                            },
                            indent=1,
                        )
                    )
                    plot(summary, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
