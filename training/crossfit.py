"""Is adapting the encoder worth it on *these* few examples? An honest estimate.

With 8 examples per class the validation split holds one per class, and the probe's
cross-validated score is the best of six options on a few dozen examples: neither can
tell a probe that generalises from one that got lucky, nor say whether contrastive
adaptation helps (it gains ~25 points on question types, and loses a few on emotions).

Cross-fitting answers on the training split itself: split it in two stratified halves;
for each half, adapt a fresh copy of the encoder (SetFit-style contrastive steps,
training/contrastive.py) on the *other* half, fit the probe there with the options the
full probe chose, and predict the held-out half; the frozen probe is fit and scored on the
same halves. Every training example gets one out-of-fold prediction from each model, so
the two are compared paired, on all of them, and neither has seen the example it is
scored on. It costs one adaptation's worth of steps (two halves, half the steps each); the
encoder is restored afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.evidence import PairedComparison, paired_compare
from training.strategies import Workbench

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossFit:
    comparison: PairedComparison  # A: frozen probe, B: adapted encoder + probe
    steps_per_half: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def adapt(self) -> bool:
        """The adapted encoder's out-of-fold macro-F1 is higher: both estimates are equally
        honest, so the better point estimate wins (ties keep the cheaper probe)."""
        return self.comparison.b_macro_f1 > self.comparison.a_macro_f1

    def summary(self) -> str:
        return self.comparison.summary("probe", "contrastive", basis="out-of-fold")


def crossfit_contrastive(bench: Workbench, *, steps: int, share: tuple[float, float]) -> CrossFit:
    from training.contrastive import contrastive_adapt
    from training.embeddings import encode
    from training.head import fit_predict, label_name_text, stratified_folds

    c, head = bench.config, bench.head
    assert bench.x_train is not None and head is not None
    started = time.perf_counter()
    texts = list(bench.train_set.texts)
    y = bench.y_train
    k = len(bench.labels)
    names = [label_name_text(x) for x in bench.labels] if head.label_names else []
    folds = stratified_folds(y, 2, c.seed)
    original = bench.snapshot()
    frozen_pred = np.zeros(len(y), dtype=np.int64)
    adapted_pred = np.zeros(len(y), dtype=np.int64)
    half_steps = max(1, steps // 2)
    lo, hi = share
    try:
        for f, held in enumerate(folds):
            keep = np.setdiff1d(np.arange(len(y)), held)
            frozen_pred[held] = fit_predict(
                head.c,
                bench.x_train[keep],
                y[keep],
                bench.x_train[held],
                k,
                names=bench.name_vectors if head.label_names else None,
                max_iter=c.head_max_iter,
                seed=c.seed,
            )
            bench.model.load_state_dict(original)
            contrastive_adapt(
                bench.model,
                bench.backbone.tokenizer,
                [texts[i] for i in keep],
                y[keep],
                steps=half_steps,
                batch_size=c.contrastive_batch_size,
                per_class=4,
                learning_rate=c.contrastive_learning_rate,
                max_length=c.max_length,
                device=bench.device,
                seed=c.seed + f,
                time_budget_s=c.contrastive_time_budget_s / 2,
                on_step=lambda i, n, msg, f=f: bench.report(
                    "training",
                    lo + (hi - lo) * (f + i / n) / 2,
                    f"honest estimate, half {f + 1}/2: {msg}",
                ),
            )
            order = list(keep) + list(held)
            vectors = encode(
                bench.model,
                bench.backbone.tokenizer,
                [texts[i] for i in order] + names,
                max_length=c.max_length,
                batch_size=c.embed_batch_size,
                device=bench.device,
            )
            n_keep, n_all = len(keep), len(order)
            adapted_pred[held] = fit_predict(
                head.c,
                vectors[:n_keep],
                y[keep],
                vectors[n_keep:n_all],
                k,
                names=vectors[n_all:] if names else None,
                max_iter=c.head_max_iter,
                seed=c.seed,
            )
    finally:
        bench.model.load_state_dict(original)
    comparison = paired_compare(y, frozen_pred, adapted_pred, seed=c.seed)
    seconds = round(time.perf_counter() - started, 1)
    log.info("cross-fit probe vs contrastive: %s (%.0f s)", comparison, seconds)
    return CrossFit(comparison, half_steps, seconds, {"folds": 2, "examples": len(y)})
