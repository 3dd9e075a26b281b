"""Learning curve on any `text,label` data set: test accuracy vs examples per class.

For each size in {4, 8, 16, 32, 64, all} and each strategy in {feature_extraction,
fine_tuning, auto}: sample `size` examples per class from the official train split (a
different sample per seed), train with the Refit pipeline, report accuracy and macro-F1 on
the official test split (never used for training or tuning), wall time of training +
export, peak RSS of the run's process, and what `auto` chose and why. Each run is its own
subprocess, so its peak RSS is its own.

`--derive` (the default for the grid) runs only `fine_tuning` and reads the other two off
the same run: it fits the same probe first (same split, same C search), scores that probe
on test (recorded as `probe_test_metrics`, never used for any decision), and records the
validation comparison `auto` would act on. So feature extraction's accuracy and `auto`'s
choice come from the run that also gives fine-tuning's, a third of the compute; real
`feature_extraction`/`auto` runs (`--strategies`) check the derivation and give their times.

    python bench/learning_curve.py --data ../shared/data/emotion   # one data set's grid
    python bench/learning_curve.py --quick         # smoke test: 10 classes, 4 per class, 1 seed
    python bench/learning_curve.py --sizes 8 --strategies feature_extraction auto --no-derive

Results are merged into bench/results/learning_curve_<data set>.json (keyed by size,
strategy, seed, device), so the grid can be filled in over several invocations; a plot is
drawn when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANCHORS = {
    "banking77": [
        {"name": "MTEB all-MiniLM-L6-v2 + LR (8/class)", "per_class": 8, "accuracy": 0.800},
        {
            "name": "BERT-large fine-tuned, all data (Casanueva et al. 2020)",
            "per_class": "all",
            "accuracy": 0.9366,
        },
    ],
    "emotion": [  # SetFit paper (Tunstall et al. 2022), see shared/data/emotion/SOURCE.md
        {"name": "SetFit MiniLM (8/class, paper)", "per_class": 8, "accuracy": 0.391},
        {"name": "RoBERTa-large fine-tuned (64/class, paper)", "per_class": 64, "accuracy": 0.65},
        {"name": "SetFit MPNet (64/class, paper)", "per_class": 64, "accuracy": 0.762},
    ],
    "trec": [{"name": "BERT-base fine-tuned, all data", "per_class": "all", "accuracy": 0.97}],
}
STRATEGIES = ("feature_extraction", "fine_tuning", "auto")


def shared() -> Path:
    return Path(os.environ.get("REFIT_SHARED") or REPO.parent / "shared")


def read(split: str, data_dir: Path) -> list[tuple[str, str]]:
    """`text,label` rows (Banking77 names its label column `category`)."""
    with (data_dir / f"{split}.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        column = "category" if "category" in (reader.fieldnames or []) else "label"
        return [(r["text"], r[column]) for r in reader]


def sample(
    rows: list[tuple[str, str]], per_class: int | None, seed: int, classes: list[str]
) -> list[tuple[str, str]]:
    by: dict[str, list[str]] = {}
    for text, label in rows:
        if label in classes:
            by.setdefault(label, []).append(text)
    rng = random.Random(seed)
    out = []
    for label in classes:
        texts = (
            by[label]
            if per_class is None
            else rng.sample(by[label], min(per_class, len(by[label])))
        )
        out.extend((t, label) for t in texts)
    return out


def one_run(args: argparse.Namespace) -> int:
    """Child process: one training run, one JSON line on stdout."""
    from models import Registry
    from training import TrainConfig
    from training.pipeline import train

    data_dir = Path(args.data)
    classes = json.loads(args.classes)
    size = None if args.size == "all" else int(args.size)
    train_rows = sample(read("train", data_dir), size, args.seed, classes)
    test_rows = [(t, y) for t, y in read("test", data_dir) if y in classes]
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            name="curve",
            strategy=args.strategy,
            epochs=args.epochs,  # None: the pipeline's step-based recipe
            seed=args.seed,
            device=args.device,
            backbone=Path(args.backbone) if args.backbone else None,
            cache_dir=Path(tmp) / "cache",
        )
        started = time.perf_counter()
        result = train(train_rows, config, registry=Registry(tmp), test_data=test_rows)
        wall = time.perf_counter() - started
    meta = result.metadata
    record = {
        "size": args.size,
        "strategy": args.strategy,
        "seed": args.seed,
        "device": args.device,
        "chosen": meta.strategy,
        "plan": result.decision.plan,
        "reason": meta.reason,
        "train_examples": meta.data.count,
        "per_class": meta.data.per_class,
        "test_accuracy": meta.test_metrics.accuracy,
        "test_macro_f1": meta.test_metrics.macro_f1,
        "validation_macro_f1": meta.metrics.macro_f1,
        "train_export_s": round(
            result.timings["total_s"] - result.timings.get("evaluation_s", 0), 1
        ),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fine_tuning": result.details.get("fine_tuning"),
        "probe": result.details.get("probe"),
        "probe_test_metrics": result.details.get("probe_test_metrics"),
        "probe_vs_fine_tuning": result.details.get("probe_vs_fine_tuning"),
        "honest_estimate": result.details.get("honest_estimate"),
        "contrastive": result.details.get("contrastive"),
        "backbone": meta.backbone.name,
        "timings": result.timings,
    }
    sys.stdout.write("RESULT " + json.dumps(record) + "\n")
    return 0


def derive(record: dict, classes: int) -> list[dict]:
    """From one `fine_tuning` run: the feature-extraction and `auto` records it implies."""
    from training import PolicyThresholds, TrainConfig, decide
    from training.policy import adapts_anyway

    counts = record["per_class"]
    plan = decide(counts, PolicyThresholds(), train_examples=record["train_examples"]).plan
    probe = record["probe_test_metrics"]
    fe = {
        **record,
        "strategy": "feature_extraction",
        "chosen": "feature_extraction",
        "test_accuracy": probe["accuracy"],
        "test_macro_f1": probe["macro_f1"],
        "train_export_s": None,
        "derived_from": "fine_tuning",
    }
    probe_info = record["probe"]
    strength = probe_info.get("strength")
    if strength is None:  # runs recorded before `strength` was: the chosen option's score
        chance = 1 / classes
        strength = (max(probe_info["search"].values()) - chance) / (1 - chance)
    weak = adapts_anyway(plan, strength, TrainConfig().weak_probe_below)
    keep_probe = (plan == "feature_extraction" and not weak) or record["probe_vs_fine_tuning"][
        "probe_better_beyond_noise"
    ]
    auto = {**(fe if keep_probe else record), "strategy": "auto", "plan": plan}
    auto["chosen"] = "feature_extraction" if keep_probe else "fine_tuning"
    auto["derived_from"] = "fine_tuning"
    return [fe, auto]


def rederive(runs: list[dict], classes: int) -> list[dict]:
    """Derived records recomputed with the current rule; real runs win over derived ones.
    Real `auto` runs that used the opt-in contrastive step are kept as `auto_contrastive`."""
    real = [r for r in runs if not r.get("derived_from")]
    for r in real:
        if r["strategy"] == "auto" and r.get("honest_estimate"):
            r["strategy"] = "auto_contrastive_cross_fit"  # opt-in, issue 26
        elif r["strategy"] == "auto" and "contrastive" in (r.get("reason") or ""):
            r["strategy"] = "auto_contrastive"
    have = {(r["size"], r["strategy"], r["seed"], r["device"]) for r in real}
    out = list(real)
    for r in real:
        if r["strategy"] == "fine_tuning" and r.get("probe_test_metrics"):
            out += [
                d
                for d in derive(r, classes)
                if (d["size"], d["strategy"], d["seed"], d["device"]) not in have
            ]
    return out


def summarize(runs: list[dict]) -> dict:
    table: dict = {}
    for r in runs:
        key = f"{r['size']}|{r['strategy']}|{r['device']}"
        table.setdefault(key, []).append(r)
    rows = []
    for key, rs in sorted(table.items()):
        size, strategy, device = key.split("|")
        accs = [r["test_accuracy"] for r in rs]
        rows.append(
            {
                "size": size,
                "strategy": strategy,
                "device": device,
                "runs": len(rs),
                "accuracy_mean": round(statistics.mean(accs), 4),
                "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                "macro_f1_mean": round(statistics.mean(r["test_macro_f1"] for r in rs), 4),
                "train_export_s_mean": (
                    round(statistics.mean(r["train_export_s"] for r in timed), 1)
                    if (timed := [r for r in rs if r.get("train_export_s") is not None])
                    else None
                ),
                "derived": sum(1 for r in rs if r.get("derived_from")),
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs),
                "auto_chose": sorted({r["chosen"] for r in rs}) if strategy == "auto" else None,
            }
        )
    regret = []
    for size in sorted({r["size"] for r in rows}, key=lambda s: 10**9 if s == "all" else int(s)):
        for device in sorted({r["device"] for r in rows}):
            by = {
                r["strategy"]: r["accuracy_mean"]
                for r in rows
                if r["size"] == size and r["device"] == device
            }
            if {"auto", "feature_extraction", "fine_tuning"} <= set(by):
                best = max(by["feature_extraction"], by["fine_tuning"])
                regret.append(
                    {
                        "size": size,
                        "device": device,
                        "best": round(best, 4),
                        "auto": by["auto"],
                        "regret_points": round(100 * (best - by["auto"]), 2),
                    }
                )
    # Across devices: each strategy's CPU result where there is one, else its CUDA result.
    mixed = []
    for size in sorted({r["size"] for r in rows}, key=lambda s: 10**9 if s == "all" else int(s)):
        pick = {}
        for strategy in STRATEGIES:
            cands = sorted(
                (r for r in rows if r["size"] == size and r["strategy"] == strategy),
                key=lambda r: r["device"],
            )
            if cands:
                pick[strategy] = cands[0]
        if len(pick) == 3:
            best = max(
                pick["feature_extraction"]["accuracy_mean"], pick["fine_tuning"]["accuracy_mean"]
            )
            mixed.append(
                {
                    "size": size,
                    "devices": {k: v["device"] for k, v in pick.items()},
                    "best": round(best, 4),
                    "auto": pick["auto"]["accuracy_mean"],
                    "regret_points": round(100 * (best - pick["auto"]["accuracy_mean"]), 2),
                }
            )
    return {"table": rows, "regret": regret, "regret_across_devices": mixed}


def plot(summary: dict, out: Path, dataset: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    order = ["4", "8", "16", "32", "64", "all"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in STRATEGIES:
        pts = [r for r in summary["table"] if r["strategy"] == strategy]
        for device in sorted({r["device"] for r in pts}):
            by_size = {r["size"]: r for r in pts if r["device"] == device}
            if by_size:  # NaN where a size is missing, so lines never bridge a gap
                ys = [
                    100 * by_size[s]["accuracy_mean"] if s in by_size else float("nan")
                    for s in order
                ]
                es = [100 * by_size[s]["accuracy_std"] if s in by_size else 0.0 for s in order]
                ax.errorbar(
                    range(len(order)),
                    ys,
                    yerr=es,
                    marker="o",
                    capsize=3,
                    label=f"{strategy} ({device})",
                )
    for a in ANCHORS.get(dataset, []):
        ax.scatter(
            [order.index(str(a["per_class"]))],
            [100 * a["accuracy"]],
            marker="*",
            s=160,
            zorder=5,
            label=a["name"],
        )
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel(f"examples per class ({dataset} train)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Refit on {dataset}: all-MiniLM-L6-v2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return True


def markdown(summary: dict) -> str:
    """The table docs/benchmarks.md shows: accuracy mean ± std per strategy, auto's regret."""
    order = ["4", "8", "16", "32", "64", "all"]
    rows = {(r["size"], r["strategy"]): r for r in summary["table"] if r["device"] == "cpu"}
    regret = {r["size"]: r for r in summary["regret"] if r["device"] == "cpu"}
    lines = [
        "| per class | runs | feature extraction | fine-tuning | auto | auto chose | regret |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in order:
        cells = []
        for strategy in STRATEGIES:
            r = rows.get((size, strategy))
            cells.append(
                f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}" if r else "—"
            )
        auto = rows.get((size, "auto"))
        if not any(c != "—" for c in cells):
            continue
        chose = ", ".join(auto["auto_chose"]) if auto else "—"
        runs = max((rows[(size, s)]["runs"] for s in STRATEGIES if (size, s) in rows), default=0)
        reg = f"{regret[size]['regret_points']:+.2f}" if size in regret else "—"
        lines.append(f"| {size} | {runs} | {' | '.join(cells)} | {chose} | {reg} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["4", "8", "16", "32", "64", "all"])
    parser.add_argument("--strategies", nargs="+", default=None, choices=STRATEGIES)
    parser.add_argument(
        "--derive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run fine_tuning only and read feature extraction and auto off it (default)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds for sizes up to 32 (larger sizes: 1)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--backbone", default=None, help="local backbone folder (default: packaged MiniLM)"
    )
    parser.add_argument("--data", default=str(shared() / "data" / "banking77"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 classes, 4 per class, 1 seed, feature extraction + auto",
    )
    parser.add_argument("--out", default=None, help="default: results/learning_curve_<data>.json")
    parser.add_argument(
        "--epochs", type=int, default=None, help="fine-tuning epochs (default: the recipe's)"
    )
    parser.add_argument(
        "--report", action="store_true", help="print the markdown table of --out and exit"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--classes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_run(args)

    dataset = Path(args.data).name
    classes = sorted({y for _, y in read("train", Path(args.data))})
    if args.strategies is None:
        args.strategies = ["fine_tuning"] if args.derive else list(STRATEGIES)
    if args.quick:
        classes, args.sizes, args.seeds = classes[:10], ["4"], 1
        args.strategies, args.derive = ["feature_extraction", "auto"], False
    default_out = REPO / "bench" / "results" / f"learning_curve_{dataset}.json"
    out = Path(args.out) if args.out else default_out
    if args.quick and args.out is None:
        out = Path(tempfile.mkdtemp(prefix="refit-curve-")) / "learning_curve.json"
    if args.report:
        data = json.loads(out.read_text())
        data["runs"] = rederive(data["runs"], len(classes))
        data.update(summarize(data["runs"]))
        out.write_text(json.dumps(data, indent=2) + "\n")
        summary = summarize(data["runs"])
        plot(summary, out.with_suffix(".png"), dataset)
        print(markdown(summary))
        return 0
    previous = json.loads(out.read_text()) if out.is_file() and not args.quick else {"runs": []}
    runs = [r for r in previous["runs"]]

    def key(r: dict) -> tuple:
        return (r["size"], r["strategy"], r["seed"], r["device"])

    # a real run replaces a derived record of the same key; a derived one never a real one
    done = {key(r) for r in runs if not r.get("derived_from")}
    for size in args.sizes:
        seeds = range(args.seeds) if size != "all" and int(size) <= 32 else range(1)
        for strategy in args.strategies:
            for seed in seeds:
                if (size, strategy, seed, args.device) in done:
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--size",
                    size,
                    "--strategy",
                    strategy,
                    "--seed",
                    str(seed),
                    "--device",
                    args.device,
                    "--data",
                    args.data,
                    "--classes",
                    json.dumps(classes),
                ]
                if args.epochs is not None:
                    cmd += ["--epochs", str(args.epochs)]
                if args.backbone:
                    cmd += ["--backbone", args.backbone]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stderr[-3000:])
                    raise SystemExit(f"run {size}/{strategy}/{seed} failed")
                record = json.loads(line.removeprefix("RESULT "))
                new = [record]
                if args.derive and strategy == "fine_tuning":
                    new += [
                        r
                        for r in derive(record, len(classes))
                        if (size, r["strategy"], seed, args.device) not in done
                    ]
                replaced = {key(r) for r in new}
                runs = [r for r in runs if key(r) not in replaced] + new
                done.add(key(record))
                for r in new:
                    print(
                        f"{size:>4} {r['strategy']:<18} seed {seed}: acc {r['test_accuracy']:.4f} "
                        f"({r['chosen']}, {r['train_export_s']} s, {r['peak_rss_mb']} MB"
                        f"{', derived' if r.get('derived_from') else ''})",
                        flush=True,
                    )
                result = {
                    "benchmark": "learning_curve",
                    "dataset": dataset,
                    "classes": len(classes),
                    "anchors": ANCHORS.get(dataset, []),
                    "runs": runs,
                    **summarize(runs),
                }
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2) + "\n")
    summary = summarize(runs)
    if plot(summary, out.with_suffix(".png"), dataset):
        print(f"plot: {out.with_suffix('.png')}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
