"""`refit train`: train, evaluate, export and publish a version from a data file, with the
service's settings (REFIT_*) and, with --promote, through the one promotion gate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from models import RegistryError
from service.cli_common import EXIT_BAD_INPUT, err, out, registry_for, settings_for


def _metrics_dict(m: Any) -> dict[str, Any] | None:
    if m is None:
        return None
    return m.model_dump(
        include={"accuracy", "macro_f1", "count", "micro_f1", "hamming_loss"}, exclude_none=True
    )


def _scores(m: Any) -> str:
    if m.micro_f1 is not None:  # multi-label
        return (
            f"micro-F1 {m.micro_f1:.4f}  macro-F1 {m.macro_f1:.4f}  subset accuracy"
            f" {m.accuracy:.4f}  Hamming loss {m.hamming_loss:.4f}"
        )
    return f"accuracy {m.accuracy:.4f}  macro-F1 {m.macro_f1:.4f}"


class _ProgressBar:
    """A tqdm bar over the job's overall fraction, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=1000,
                unit="‰",
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
            )

    def __call__(self, event) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"{event.phase} {event.message}"[:60])
        self.bar.update(int(event.fraction * 1000) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(path: str, args: argparse.Namespace) -> Any:
    """A data file; `.tsv` is the GoEmotions layout (`text<TAB>label ids<TAB>...`, ids
    into `--label-names`, one name a line): a multi-label import."""
    from models.data import DataError, load_dataset
    from models.multilabel import read_label_id_tsv

    if Path(path).suffix.lower() == ".tsv":
        if not args.label_names:
            raise DataError([f"{path}: a .tsv holds label ids; name their file with --label-names"])
        return load_dataset(
            read_label_id_tsv(Path(path), Path(args.label_names)), check_classes=False
        )
    return load_dataset(path, check_classes=False, task=args.task)


def _backbone(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """`--backbone`: a folder, or a name (minilm, a shipped one such as mpnet once
    installed, one from REFIT_BACKBONES, auto); default: REFIT_BACKBONE."""
    from models.backbones import SHIPPED
    from service.trainer import backbone_options

    choice = args.backbone or settings.backbone
    if "/" in choice or Path(choice).is_dir():
        return {"backbone": Path(choice)}
    shipped = {n: None for n in SHIPPED if n != "minilm" and n not in settings.backbones}
    if choice in shipped or choice == "auto":  # the operator may use what is installed
        installed = {
            n: None for n in shipped if (settings.backbone_dir / SHIPPED[n].folder).is_dir()
        }
        extra = {choice: None} if choice in shipped else installed
        settings = settings.model_copy(update={"backbones": {**settings.backbones, **extra}})
    if args.max_p50_ms is not None:
        settings = settings.model_copy(update={"max_p50_ms": args.max_p50_ms})
    return backbone_options(settings, choice)


def cmd_train(args: argparse.Namespace) -> int:
    from models.data import DataError
    from service.trainer import train_config

    try:
        settings = settings_for(args)
        config = train_config(
            settings,
            name=args.name,
            strategy=args.strategy,
            **_backbone(args, settings),
            quantize=args.quantize,
            **({"fp16": args.fp16} if args.fp16 else {}),
            promote="always" if args.force else "auto" if args.promote else "never",
            seed=args.seed,
            epochs=args.epochs,
            device=args.device,
            threads=None,  # all cores: the command line is not sharing them with a service
        )
        dataset = _load(args.data, args)  # out-of-scope rows: train()
        test = _load(args.test, args) if args.test else None
    except (DataError, ValueError) as exc:
        err(str(exc))
        return EXIT_BAD_INPUT

    from training.pipeline import train

    registry = registry_for(args)
    bar = _ProgressBar(enabled=not args.no_progress and sys.stderr.isatty() or args.progress)
    started = time.perf_counter()
    try:
        result = train(dataset, config, registry=registry, test_data=test, progress=bar)
    except (DataError, RegistryError, ValueError) as exc:
        bar.close()
        err(str(exc))
        return EXIT_BAD_INPUT
    bar.close()
    wall = time.perf_counter() - started
    meta = result.metadata
    summary = {
        "name": meta.name,
        "version": meta.version,
        "strategy": meta.strategy,
        "reason": meta.reason,
        "promoted": result.promoted,
        "promotion_reason": result.promotion_reason,
        "metrics": _metrics_dict(meta.metrics),
        "test_metrics": _metrics_dict(meta.test_metrics),
        "out_of_scope": meta.out_of_scope.model_dump() if meta.out_of_scope else None,
        "task": meta.task,
        "thresholds": meta.multi_label.thresholds if meta.multi_label else None,
        "data": {
            "count": meta.data.count,
            "classes": len(meta.labels),
            "train": meta.data.train_count,
            "validation": meta.data.validation_count,
        },
        "quantized": meta.quantized,
        "wall_time_s": round(wall, 1),
        "timings": result.timings,
        "path": str(registry.model_dir(meta.name) / meta.version),
    }
    if args.json:
        out(json.dumps(summary))
        return 0
    out(f"model      {meta.name} {meta.version}{'  (production)' if result.promoted else ''}")
    out(f"strategy   {meta.strategy}: {meta.reason}")
    out(
        f"data       {meta.data.count} examples, {len(meta.labels)} classes ({meta.data.train_count} train / {meta.data.validation_count} validation)"
    )
    out(f"validation {_scores(meta.metrics)}")
    if meta.test_metrics is not None:
        out(f"test       {_scores(meta.test_metrics)} ({meta.test_metrics.count} examples)")
    out(f"wall time  {wall:.1f} s")
    if result.promotion_reason is not None:
        out(f"promotion  {result.promotion_reason}")
    if not result.promoted:
        out(f"promote it with: refit models promote {meta.name} {meta.version}")
    return 0


def add_train_command(sub: Any) -> None:
    t = sub.add_parser("train", help="train, evaluate, export and publish a model version")
    t.add_argument(
        "data",
        help="CSV (text,label|category; text,labels for label sets split by '|'), JSONL or JSON"
        " list of {text, label} or {text, labels}; .tsv: GoEmotions layout (with --label-names)",
    )
    t.add_argument(
        "--task",
        default="auto",
        choices=["auto", "multi_label"],
        help="multi_label: read a `label` as a set of one (auto: label lists make it multi-label)",
    )
    t.add_argument(
        "--label-names",
        help="for a .tsv DATA: the file naming label ids (one name a line, id = line number - 1)",
    )
    t.add_argument("--name", default="default", help="model name (default: default)")
    t.add_argument(
        "--strategy", default="auto", choices=["auto", "feature_extraction", "fine_tuning"]
    )
    t.add_argument(
        "--test", help="a labeled test file to report accuracy on (never used for training)"
    )
    t.add_argument(
        "--quantize",
        nargs="?",
        const="always",
        default="auto",
        choices=["auto", "always", "never"],
        help="int8 graph for CPU serving: auto (default) serves it when it agrees with fp32 on"
        " >= 99%% of the training texts, always (or the bare flag) serves it anyway, never builds"
        " none",
    )
    t.add_argument(
        "--fp16",
        choices=["auto", "always", "never"],
        default=None,
        help="fp16 graph for CUDA serving (default: REFIT_FP16, auto = where training sees a"
        " GPU); served on CUDA when it passes its parity and agreement gate",
    )
    t.add_argument(
        "--promote",
        action="store_true",
        help="make the new version production if it passes the promotion gate (not worse than"
        " production on the same held-out examples, within REFIT_PROMOTION_TOLERANCE)",
    )
    t.add_argument(
        "--force", action="store_true", help="with --promote: make it production, skip the gate"
    )
    t.add_argument(
        "--backbone",
        help="minilm (the packaged all-MiniLM-L6-v2), mpnet (after `refit backbones install"
        " mpnet`), a name from REFIT_BACKBONES, a local Hugging Face folder, or auto: the"
        " cheapest unless another is better beyond noise (default: REFIT_BACKBONE, minilm)",
    )
    t.add_argument(
        "--max-p50-ms",
        type=float,
        default=None,
        help="with --backbone auto: the single-text p50 latency budget (default: REFIT_MAX_P50_MS)",
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs at most (default: 4, more on small data to reach 300 steps)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    t.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not on a terminal"
    )
    t.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    t.set_defaults(func=cmd_train)
