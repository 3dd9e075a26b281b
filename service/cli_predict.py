"""`refit predict`: score a file (or stdin) with a published version, in resumable chunks
(service/batch.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from service.cli_common import EXIT_BAD_INPUT, err, out, registry_for, settings_for


def cmd_predict(args: argparse.Namespace) -> int:
    from models import RegistryError
    from service.batch import BatchCancelled, BatchError, BatchSpec, default_output, score_file
    from service.loading import load_model

    if args.chunk_rows < 1 or args.top_k < 1:
        err("--chunk-rows and --top-k must be at least 1")
        return EXIT_BAD_INPUT
    settings = settings_for(args)
    registry = registry_for(args)
    try:
        mv = registry.verify(args.model, args.version)
    except (RegistryError, LookupError) as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    model = load_model(
        mv,
        threads=args.threads or os.cpu_count() or 1,
        graph_optimization=settings.graph_optimization,
        device=args.device or settings.device,
        allow_int8=settings.quantize != "never",
    )
    spec = BatchSpec(
        model=mv.name,
        version=mv.version,
        source=args.input,
        output=args.out or default_output(args.input),
        top_k=args.top_k,
        chunk_rows=args.chunk_rows,
        on_error=args.on_error,
    )
    started = time.perf_counter()
    last = [0.0]

    def progress(rows: int, total: int | None) -> None:
        now = time.perf_counter()
        if args.progress and now - last[0] >= 2:
            last[0] = now
            of = f" of ~{total}" if total else ""
            sys.stderr.write(f"refit: {rows}{of} rows ({rows / (now - started):.0f}/s)\n")

    try:
        result = score_file(spec, model, fmt=args.format, progress=progress)
    except (BatchError, BatchCancelled) as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    except OSError as exc:
        err(f"{exc.strerror or exc}: {exc.filename or spec.output}")
        return EXIT_BAD_INPUT
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        **result.to_dict(),
        "model": mv.name,
        "version": mv.version,
        "graph": model.graph,
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.scored / seconds, 1) if seconds else None,
    }
    if spec.output == "-":
        sys.stderr.write(json.dumps(summary) + "\n")
    elif args.json:
        out(json.dumps(summary))
    else:
        resumed = f", {result.resumed_chunks} chunks resumed" if result.resumed_chunks else ""
        errors = f"; {result.errors} rows refused: {result.errors_file}" if result.errors else ""
        out(
            f"{result.rows} rows, {result.scored} scored by {mv.name}/{mv.version}"
            f"{resumed} → {result.output}{errors}"
        )
    return 0


def add_predict_command(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="score a CSV or JSONL file (or stdin) with a published version; resumable",
    )
    p.add_argument(
        "input", help="CSV with a `text` column or JSONL with a `text` field; - for stdin"
    )
    p.add_argument("--model", default="default", help="model name (default: default)")
    p.add_argument(
        "--version", default="production", help="a version id or alias (default: production)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output JSONL (default: INPUT's name + .predictions.jsonl beside it; - for stdout)",
    )
    p.add_argument("--format", choices=["csv", "jsonl"], default=None, help="input format")
    p.add_argument("--top-k", type=int, default=1, help="labels ranked per row (default 1)")
    p.add_argument("--chunk-rows", type=int, default=1000, help="rows per resumable chunk")
    p.add_argument(
        "--on-error",
        choices=["skip", "stop"],
        default="skip",
        help="a malformed row: record it in OUT.errors.jsonl and go on (skip), or stop",
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--progress", action="store_true", help="rows done and rate on stderr")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
