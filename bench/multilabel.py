"""Multi-label learning curve on GoEmotions (28 labels), and the hand-written baseline.

Samples of the train split: `rows4000` (4,000 random rows, the issue's reference setting),
or at least N positives per label (8, 16, 64: `goemotions_sample`), or `all`. Each sample is
trained with `refit`'s pipeline (`auto`, or a forced strategy) and scored on the second half
of dev.tsv (odd rows: `dev-B`; GoEmotions' test split is kept aside). The baseline is the
30 lines a user writes by hand: frozen MiniLM mean-pooled embeddings, scikit-learn
one-vs-rest logistic regression, per-label thresholds tuned on the *first* half of dev
(`dev-A`, which Refit never sees), scored on dev-B.

    python bench/multilabel.py --sample rows4000 --strategy auto          # one run
    python bench/multilabel.py --sample rows4000 --baseline               # the baseline
    python bench/multilabel.py --sample 8 --setfit                        # SetFit, same sample
    python bench/multilabel.py --summary                                  # table + plot

Records are merged into bench/results/multilabel_goemotions.json (keyed by sample,
strategy, seed); each run is its own process (`--sample` runs in this one).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "multilabel_goemotions.json"
REFERENCE = {"name": "BERT-base fine-tuned, all data (Demszky et al. 2020; test)", "macro_f1": 0.46}


def _sample(name: str, seed: int) -> list[tuple[str, list[str]]]:
    from service.harness.data import goemotions_sample, read_goemotions

    rows = read_goemotions("train")
    if name.startswith("rows"):
        rng = random.Random(seed)
        return rng.sample(rows, int(name[4:]))
    return goemotions_sample(rows, None if name == "all" else int(name), seed)


def _dev() -> tuple[list, list]:
    from service.harness.data import read_goemotions

    dev = read_goemotions("dev")
    return dev[0::2], dev[1::2]


def _per_label(metrics) -> dict[str, float]:
    return {k: v.f1 for k, v in metrics.per_class.items()}


def run_refit(sample: str, strategy: str, seed: int) -> dict:
    from models import Registry
    from training import TrainConfig
    from training.pipeline import train

    rows = _sample(sample, seed)
    _, dev_b = _dev()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            name="goemotions", strategy=strategy, seed=seed, cache_dir=Path(tmp) / "cache"
        )
        started = time.perf_counter()
        result = train(rows, config, registry=Registry(tmp), test_data=dev_b)
        wall = time.perf_counter() - started
    meta = result.metadata
    test = meta.test_metrics
    assert test is not None
    return {
        "sample": sample,
        "strategy": strategy,
        "seed": seed,
        "rows": len(rows),
        "chosen": meta.strategy,
        "reason": meta.reason,
        "test_macro_f1": test.macro_f1,
        "test_micro_f1": test.micro_f1,
        "test_subset_accuracy": test.accuracy,
        "test_hamming_loss": test.hamming_loss,
        "test_per_label_f1": _per_label(test),
        "validation_macro_f1": meta.metrics.macro_f1,
        "validation_micro_f1": meta.metrics.micro_f1,
        "thresholds": meta.multi_label.thresholds if meta.multi_label else None,
        "quantization": meta.quantization.reason if meta.quantization else None,
        "wall_s": round(wall, 1),
        "timings": result.timings,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "details": {k: v for k, v in result.details.items() if k != "embedding"},
    }


def run_baseline(sample: str, seed: int) -> dict:
    """Frozen embeddings + one-vs-rest LR + per-label thresholds tuned on dev-A."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from training.backbone import load_backbone
    from training.classifier import SentenceClassifier
    from training.embeddings import encode
    from training.evaluate import compute_multi_metrics

    rows = _sample(sample, seed)
    dev_a, dev_b = _dev()
    labels = sorted({x for _, ls in rows for x in ls})
    started = time.perf_counter()
    backbone = load_backbone(None)
    model = SentenceClassifier(backbone.encoder, len(labels)).eval()

    def embed(texts):
        return encode(
            model,
            backbone.tokenizer,
            texts,
            max_length=128,
            batch_size=64,
            device=torch.device("cpu"),
        )

    def matrix(rs):
        return np.array([[x in ls for x in labels] for _, ls in rs], dtype=np.int64)

    x = embed([t for t, _ in rows])
    clf = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(x, matrix(rows))
    pa = clf.predict_proba(embed([t for t, _ in dev_a]))
    ya = matrix(dev_a)
    thresholds = np.zeros(len(labels))
    for j in range(len(labels)):
        grid = np.arange(0.05, 0.95, 0.05)
        f1 = [
            2
            * ((pa[:, j] >= t) & (ya[:, j] == 1)).sum()
            / max(1, (pa[:, j] >= t).sum() + ya[:, j].sum())
            for t in grid
        ]
        thresholds[j] = grid[int(np.argmax(f1))]
    pb = clf.predict_proba(embed([t for t, _ in dev_b]))
    test = compute_multi_metrics(matrix(dev_b), pb >= thresholds, pb, labels)
    return {
        "sample": sample,
        "strategy": "baseline",
        "seed": seed,
        "rows": len(rows),
        "test_macro_f1": test.macro_f1,
        "test_micro_f1": test.micro_f1,
        "test_subset_accuracy": test.accuracy,
        "test_hamming_loss": test.hamming_loss,
        "test_per_label_f1": _per_label(test),
        "wall_s": round(time.perf_counter() - started, 1),
    }


SETFIT_STEPS = {"8": 200, "64": 500}  # as in bench/peers.py


def run_setfit(sample: str, seed: int) -> dict:
    """SetFit 1.2 with its one-vs-rest multi-label head, same MiniLM and sample, in the
    peers' virtualenv (bench/peers.py makes it). Its reported numbers use per-label
    thresholds tuned on dev-A (at its default 0.5 it answers almost no label on small
    samples: also recorded, `default_threshold_test_*`)."""
    from bench.peers import ensure_peer_venv, peer
    from training.backbone import default_backbone_path

    rows = _sample(sample, seed)
    dev_a, dev_b = _dev()
    python = ensure_peer_venv()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in (("train", rows), ("test", dev_b), ("tune", dev_a)):
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text(
                "\n".join(json.dumps({"text": t, "labels": ls}) for t, ls in data) + "\n"
            )
            paths.append(str(path))
        started = time.perf_counter()
        out = peer(
            python,
            "setfit_multilabel",
            str(default_backbone_path()),
            *paths[:2],
            str(SETFIT_STEPS.get(sample, 500)),
            str(Path(tmp) / "out"),
            paths[2],
        )
        wall = time.perf_counter() - started
    return {
        **{k: v for k, v in out.items() if k != "peer"},
        "sample": sample,
        "strategy": "setfit",
        "seed": seed,
        "rows": len(rows),
        "test_hamming_loss": None,
        "wall_s": round(wall, 1),
    }


def _merge(record: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    key = (record["sample"], record["strategy"], record["seed"])
    data["runs"] = [r for r in data["runs"] if (r["sample"], r["strategy"], r["seed"]) != key] + [
        record
    ]
    data["reference"] = REFERENCE
    data["evaluated_on"] = "GoEmotions dev.tsv odd rows (dev-B, 2,713); test split kept aside"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def summary() -> str:
    data = json.loads(RESULTS.read_text())
    lines = [
        "| sample | strategy | seed | chosen | rows | macro-F1 | micro-F1 | subset acc. |"
        " probe alone macro-F1 | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"8": 0, "16": 1, "64": 2, "rows4000": 3, "all": 4}
    for r in sorted(data["runs"], key=lambda r: (order.get(r["sample"], 9), r["strategy"])):
        probe = (r.get("details") or {}).get("probe_test_metrics")
        probe_text = f"{probe['macro_f1']:.3f}" if probe else ""
        lines.append(
            f"| {r['sample']} | {r['strategy']} | {r['seed']} | {r.get('chosen', '')} |"
            f" {r['rows']} | {r['test_macro_f1']:.3f} | {r['test_micro_f1']:.3f} |"
            f" {r['test_subset_accuracy']:.3f} | {probe_text} | {r['wall_s']:.0f} |"
        )
    _plot(data)
    return "\n".join(lines)


def _plot(data: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    samples = ["8", "16", "64", "all"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in ("auto", "feature_extraction", "fine_tuning", "setfit"):
        points = [
            (i, r["test_macro_f1"])
            for i, s in enumerate(samples)
            for r in data["runs"]
            if r["sample"] == s and r["strategy"] == strategy
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=strategy)
    ax.axhline(REFERENCE["macro_f1"], ls="--", c="grey", label="BERT-base, all data")
    ax.set_xticks(range(len(samples)), [f"{s}/label" if s != "all" else s for s in samples])
    ax.set_ylabel("macro-F1 (dev-B)")
    ax.set_title("GoEmotions, 28 labels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS.with_suffix(".png"), dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", default="rows4000")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--setfit", action="store_true", help="SetFit's multi-label head")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        print(summary())  # noqa: T201
        return 0
    if args.baseline:
        record = run_baseline(args.sample, args.seed)
    elif args.setfit:
        record = run_setfit(args.sample, args.seed)
    else:
        record = run_refit(args.sample, args.strategy, args.seed)
    _merge(record)
    print(json.dumps({k: v for k, v in record.items() if "per_label" not in k}, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
