"""`backbone: auto`: which of the allowed encoders a model gets, and why.

The cheapest encoder (smallest weights file) is the default. Each allowed encoder embeds the
same split and fits the same probe (the options cross-validated on the training split, as
always); the evidence is the probe's out-of-fold predictions on the training split (the
validation predictions when the split is too large to cross-validate), so every encoder is
judged on the same examples by the same paired test as the strategies
(training/evidence.py). A bigger encoder is chosen only when it is better beyond noise
*and* its single-text p50 fits the model's budget (`max_p50_ms`).

The p50 is measured here, on the training machine: torch eager, one thread, batch 1, on
up to 24 of the model's own texts. onnxruntime serves the exported graph faster than torch
eager runs it (docs/benchmarks.md), so the estimate errs on the safe side; a trainer on
another kind of machine than the servers measures that machine.

The probe is the evidence whatever the strategy: fine-tuning a bigger encoder usually
keeps its lead from the frozen probe, and comparing fine-tuned encoders would double the
training time. A choice between backbones is recorded in `training_config.details.backbone`
and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.strategies import Workbench, embed_split, probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    folder: Path | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _weights_bytes(folder: Path | None) -> int:
    from training.backbone import default_backbone_path, weights_file

    return weights_file(folder or default_backbone_path()).stat().st_size


def single_text_p50_ms(bench: Workbench, texts: list[str], rounds: int = 24) -> float:
    """Median latency of the encoder + head on one text at a time, one torch thread."""
    import torch

    tokenizer, model = bench.backbone.tokenizer, bench.model
    sample = (texts * (1 + rounds // max(len(texts), 1)))[:rounds]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i, text in enumerate(sample[:3] + sample):
                batch = tokenizer(
                    [text], truncation=True, max_length=bench.config.max_length, return_tensors="pt"
                ).to(bench.device)
                started = time.perf_counter()
                model(batch["input_ids"], batch["attention_mask"])
                if bench.device.type == "cuda":  # kernels run asynchronously
                    torch.cuda.synchronize()
                if i >= 3:  # the first three warm up
                    times.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    return round(statistics.median(times), 2)


def _evidence(bench: Workbench) -> tuple[np.ndarray, np.ndarray, str]:
    head = bench.head
    if head.oof_logits is not None:
        return bench.y_train, head.oof_logits.argmax(axis=1), "out-of-fold on the training split"
    assert bench.x_val is not None
    return bench.y_val, head.predict(bench.x_val), "validation split"


def choose_backbone(
    config: TrainConfig, make_bench: Callable[[TrainConfig], Workbench]
) -> tuple[Workbench, BackboneChoice]:
    """The workbench of the chosen encoder (its embeddings cached) and the choice."""
    from training.evidence import paired_compare

    options = sorted(config.backbone_choices, key=lambda item: _weights_bytes(item[1]))
    budget = config.max_p50_ms
    rows: list[dict[str, Any]] = []
    kept: tuple[Workbench, int] | None = None
    base_pred: np.ndarray | None = None
    for index, (name, folder) in enumerate(options):
        bench = make_bench(dataclasses.replace(config, backbone=folder, backbone_choices=()))
        bench.report("validating", index / len(options), f"scoring backbone {name}")
        embed_split(bench)
        probe(bench, share=0.0, keep_snapshot=False)
        y, pred, basis = _evidence(bench)
        texts = list(bench.val_set.texts) + list(bench.train_set.texts)
        row: dict[str, Any] = {
            "name": name,
            "probe_macro_f1": bench.head.selection_score,
            "p50_ms": single_text_p50_ms(bench, texts[:24]),
            "evidence": basis,
        }
        row["fits_budget"] = budget is None or row["p50_ms"] <= budget
        if base_pred is None:
            base_pred = pred
            kept = (bench, index)
        else:
            comparison = paired_compare(y, base_pred, pred, seed=config.seed)
            row["vs_cheapest"] = comparison.to_dict()
            row["better_beyond_noise"] = comparison.b_better()
            best = rows[kept[1]] if kept else rows[0]
            if (
                row["better_beyond_noise"]
                and row["fits_budget"]
                and row["probe_macro_f1"] > best["probe_macro_f1"]
            ):
                kept = (bench, index)
        rows.append(row)
        log.info("backbone %s: %s", name, row)
    assert kept is not None
    bench, index = kept
    chosen, cheapest = rows[index], rows[0]
    where = f"probe macro-F1 {chosen['evidence']}"
    if index == 0:
        others = [
            f"{r['name']} {r['probe_macro_f1']:.4f}"
            + ("" if r["fits_budget"] else f" (p50 {r['p50_ms']:.0f} ms > budget {budget:g} ms)")
            + ("" if r.get("better_beyond_noise") else " (not better beyond noise)")
            for r in rows[1:]
        ]
        reason = (
            f"backbone auto: {cheapest['name']}, the cheapest ({where} {cheapest['probe_macro_f1']:.4f}"
            f" vs {', '.join(others)})"
        )
    else:
        reason = (
            f"backbone auto: {chosen['name']}, better beyond noise than {cheapest['name']} ({where}"
            f" {chosen['probe_macro_f1']:.4f} vs {cheapest['probe_macro_f1']:.4f}, McNemar"
            f" p={chosen['vs_cheapest']['p_value']:.3g}) and within the latency budget"
            f" (p50 {chosen['p50_ms']:.0f} ms"
            + (f" <= {budget:g} ms)" if budget is not None else ", no budget set)")
        )
    return bench, BackboneChoice(
        chosen["name"], options[index][1], reason, {"chosen": chosen["name"], "options": rows}
    )
