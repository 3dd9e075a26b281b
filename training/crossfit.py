"""Is adapting the encoder worth it on *these* few examples? An honest estimate.

With 8 examples per class the validation split holds one per class, and the probe's
cross-validated score is the best of six options on a few dozen examples: neither can
tell a probe that generalises from one that got lucky, nor say whether contrastive
adaptation helps (it gains ~25 points on question types, and loses a few on emotions).

Cross-fitting answers on the training split itself: split it in three stratified folds;
for each fold, adapt a fresh copy of the encoder (SetFit-style contrastive steps,
training/contrastive.py) on the *other two*, fit the probe there with the options the full
probe chose, and predict the held-out fold; the frozen probe is fit and scored on the same
folds. Every training example gets one out-of-fold prediction from each model, so the two
are compared paired, on all of them, and neither has seen the example it is scored on.
Each adaptation makes as many passes over its two folds as the full run makes over all the
data (2/3 of its steps), and the encoder is restored afterwards. Two halves were tried
first: adapting on 3-4 examples per class learnt too little (TREC, 8 per class: the halves
said "probe" where the full adaptation gains ~29 points on a dev split).
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
FOLDS = 3  # each adaptation sees 2/3 of the examples: 1/2 was too few at 8 per class


@dataclass(frozen=True)
class CrossFit:
    comparison: PairedComparison  # A: frozen probe, B: adapted encoder + probe
    steps_per_fold: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def adapt(self) -> bool:
        """The adapted encoder is ahead on both counts: higher out-of-fold macro-F1, and
        alone right on more examples than the probe alone. Both estimates are equally
        honest, so no significance is asked for (with ~50 examples it would almost never be
        reached, and a missed adaptation costs far more than a needless one: ~29 points on
        question types vs ~2 on emotions, dev splits); a tie keeps the cheaper probe."""
        c = self.comparison
        return c.b_macro_f1 > c.a_macro_f1 and c.b_only_right > c.a_only_right

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
    counts = np.bincount(y, minlength=k)
    n_folds = max(2, min(FOLDS, int(counts.min())))
    folds = stratified_folds(y, n_folds, c.seed)
    original = bench.snapshot()
    frozen_pred = np.zeros(len(y), dtype=np.int64)
    adapted_pred = np.zeros(len(y), dtype=np.int64)
    # as many passes over its data as the full run makes over all of it
    fold_steps = max(1, round(steps * (n_folds - 1) / n_folds))
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
                steps=fold_steps,
                batch_size=c.contrastive_batch_size,
                per_class=4,
                learning_rate=c.contrastive_learning_rate,
                max_length=c.max_length,
                device=bench.device,
                seed=c.seed + f,
                time_budget_s=c.contrastive_time_budget_s * (n_folds - 1) / n_folds,
                on_step=lambda i, n, msg, f=f: bench.report(
                    "training",
                    lo + (hi - lo) * (f + i / n) / n_folds,
                    f"honest estimate, fold {f + 1}/{n_folds}: {msg}",
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
    return CrossFit(comparison, fold_steps, seconds, {"folds": n_folds, "examples": len(y)})
