"""Simulated annotation: which query strategy needs the fewest labels.

The unlabeled pool is a data set's train split with its labels hidden until queried; the
model starts from `--start` labeled examples per class; each round queries `--round`
labels with a strategy, retrains the service's feature-extraction head (`fit_probe`: the
tuned logistic-regression probe on frozen embeddings, C chosen by cross-validation, as the
trainer does below REFIT_FEATURE_EXTRACTION_BELOW) and scores the evaluation split.
Strategies: random and the labeling queue's own (service/ranking.py).

    python bench/active_learning.py --data ../shared/data/banking77 --seeds 3
    python bench/active_learning.py --data ../shared/data/emotion --seeds 3

`--eval dev` scores 1,000 held-out rows of the train split instead of the test split
(for choosing things; the test split only reports). Embeddings are computed once with the
default backbone and cached. Writes bench/results/active_learning_<data>[_dev].json + .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.learning_curve import read, shared  # noqa: E402
from service.ranking import rank, uncertainty  # noqa: E402

STRATEGIES = ("random", "margin", "entropy", "diverse")


def embed(texts: list[str]) -> np.ndarray:
    """MiniLM sentence embeddings (the trainer's own code path), cached on disk."""
    import torch

    from training.backbone import load_backbone
    from training.classifier import SentenceClassifier
    from training.embeddings import EmbeddingCache, embed_with_cache

    torch.set_num_threads(int(os.environ.get("REFIT_BENCH_THREADS", "1")))
    backbone = load_backbone()
    model = SentenceClassifier(backbone.encoder, 2)
    cache = EmbeddingCache(Path.home() / ".cache" / "refit-bench" / "embeddings.sqlite")
    vectors, _ = embed_with_cache(
        model,
        backbone.tokenizer,
        texts,
        backbone_sha=backbone.sha256,
        max_length=64,
        batch_size=64,
        device=torch.device("cpu"),
        cache=cache,
    )
    return vectors


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def simulate(
    strategy: str,
    seed: int,
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    classes: int,
    args: argparse.Namespace,
) -> list[dict]:
    from training.head import fit_probe

    rng = random.Random(seed)
    labeled: list[int] = []
    for c in range(classes):
        members = np.flatnonzero(y_pool == c).tolist()
        labeled += rng.sample(members, min(args.start, len(members)))
    rounds = []
    while True:
        started = time.perf_counter()
        idx = np.asarray(labeled)
        head = fit_probe(
            x_pool[idx],
            y_pool[idx],
            x_pool[idx],
            y_pool[idx],
            classes,
            c_grid=(10.0, 1.0, 100.0),
            max_iter=500,
            seed=seed,
        )
        fit_s = time.perf_counter() - started
        accuracy = float((head.predict(x_eval) == y_eval).mean())
        rounds.append({"labels": len(labeled), "accuracy": round(accuracy, 4)})
        if len(labeled) >= args.max_labels:
            break
        started = time.perf_counter()
        mask = np.ones(len(y_pool), dtype=bool)
        mask[idx] = False
        unlabeled = np.flatnonzero(mask)
        step = min(args.round, args.max_labels - len(labeled))
        if strategy == "random":
            chosen = rng.sample(unlabeled.tolist(), step)
        else:
            x = x_pool[unlabeled]
            probs = softmax(x @ head.weight.T + head.bias)
            kind = "entropy" if strategy == "entropy" else "margin"
            chosen = unlabeled[
                rank(uncertainty(probs, kind), step, diverse=strategy == "diverse", embeddings=x)
            ].tolist()
        labeled += chosen
        rounds[-1].update(fit_s=round(fit_s, 2), rank_s=round(time.perf_counter() - started, 3))
        print(f"{strategy} seed {seed}: {len(labeled) - step} labels -> {accuracy:.4f}", flush=True)
    return rounds


def at(curve: list[tuple[int, float]], labels: float) -> float:
    """Accuracy at `labels`, linear between rounds."""
    xs, ys = zip(*curve, strict=True)
    return float(np.interp(labels, xs, ys))


def needed(curve: list[tuple[int, float]], target: float) -> float | None:
    """The labels at which a curve first reaches `target` (linear between rounds)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if y0 >= target:
            return float(x0)
        if y1 >= target:
            return round(x0 + (target - y0) / (y1 - y0) * (x1 - x0), 1)
    return float(curve[0][0]) if curve[0][1] >= target else None


def summarize(runs: dict[str, list[list[dict]]]) -> dict:
    mean = {}
    for strategy, seeds in runs.items():
        labels = [r["labels"] for r in seeds[0]]
        acc = np.mean([[r["accuracy"] for r in s] for s in seeds], axis=0)
        mean[strategy] = list(zip(labels, [round(float(a), 4) for a in acc], strict=True))
    random_curve = mean["random"]
    out: dict = {"mean_accuracy": {k: [list(p) for p in v] for k, v in mean.items()}}
    targets = {str(n): at(random_curve, n) for n in (1000, 2000)}
    out["random_accuracy_at"] = {k: round(v, 4) for k, v in targets.items()}
    out["labels_to_reach_random_at"] = {
        s: {k: needed(curve, v) for k, v in targets.items()} for s, curve in mean.items()
    }
    out["area_over_random_points"] = {
        s: round(100 * float(np.mean([a for _, a in c]) - np.mean([a for _, a in random_curve])), 2)
        for s, c in mean.items()
    }
    out["rounds_below_random"] = {
        s: [n for (n, a), (_, r) in zip(c, random_curve, strict=True) if a < r]
        for s, c in mean.items()
    }
    return out


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, curve in result["summary"]["mean_accuracy"].items():
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, [100 * y for y in ys], marker=".", label=strategy)
    ax.set_xlabel("labels")
    ax.set_ylabel(f"{result['eval']} accuracy (%)")
    ax.set_title(f"active learning, {result['data']} (mean of {result['seeds']} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(shared() / "data" / "banking77"))
    parser.add_argument("--eval", choices=("test", "dev"), default="test")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start", type=int, default=2, help="labeled examples per class")
    parser.add_argument("--round", type=int, default=100, help="labels queried per round")
    parser.add_argument("--max-labels", type=int, default=2000)
    parser.add_argument("--pool-max", type=int, default=10_000)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    data = Path(args.data)
    train = read("train", data)
    rng = random.Random(1234)
    rng.shuffle(train)
    if args.eval == "dev":
        evaluation, train = train[:1000], train[1000:]
    else:
        evaluation = read("test", data)
    pool = train[: args.pool_max]
    classes = sorted({y for _, y in pool})
    index = {c: i for i, c in enumerate(classes)}
    evaluation = [(t, y) for t, y in evaluation if y in index]
    started = time.perf_counter()
    x_all = embed([t for t, _ in pool] + [t for t, _ in evaluation])
    embed_s = time.perf_counter() - started
    x_pool, x_eval = x_all[: len(pool)], x_all[len(pool) :]
    y_pool = np.asarray([index[y] for _, y in pool])
    y_eval = np.asarray([index[y] for _, y in evaluation])
    runs: dict[str, list[list[dict]]] = {}
    for strategy in args.strategies.split(","):
        runs[strategy] = [
            simulate(strategy, seed, x_pool, y_pool, x_eval, y_eval, len(classes), args)
            for seed in range(args.seeds)
        ]
    result = {
        "data": data.name,
        "eval": args.eval,
        "pool": len(pool),
        "eval_count": len(evaluation),
        "classes": len(classes),
        "seeds": args.seeds,
        "start_per_class": args.start,
        "round": args.round,
        "head": "fit_probe (service feature extraction), C in (10, 1, 100) by 3-fold CV",
        "embed_s": round(embed_s, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "summary": summarize(runs),
    }
    suffix = "" if args.eval == "test" else "_dev"
    out = Path(args.out or REPO / "bench" / "results" / f"active_learning_{data.name}{suffix}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
