"""The transfer-learning strategies, each a step that returns a `Candidate`: its validation
predictions, its details and, for the probe, a snapshot to come back to. They share one
`Workbench` (the backbone with a classification head, the split's frozen embeddings, the
progress reporter); `training/selection.py` decides which candidate is kept.

1. `probe`: frozen embeddings (cached) and a tuned logistic-regression head. Every plan
   starts here.
2. `contrastive`: SetFit-style contrastive fine-tuning of the encoder and a new probe
   (few labels, a weak probe, `contrastive_steps` > 0, and a cross-fitted estimate for it).
3. `lp_ft`: fine-tuning of all weights from the probe (LP-FT, Kumar et al. 2022).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.data import Dataset
from training.config import TrainConfig
from training.progress import Reporter


@dataclass
class Candidate:
    name: str  # probe | contrastive | fine_tuning
    val_pred: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    snapshot: dict[str, Any] | None = None  # the weights, when a later step may change them


@dataclass
class Workbench:
    config: TrainConfig
    report: Reporter
    labels: list[str]
    train_set: Dataset
    val_set: Dataset
    backbone: Any
    model: Any  # SentenceClassifier
    device: Any
    cache: Any  # EmbeddingCache
    y_train: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray | None = None
    x_val: np.ndarray | None = None
    name_vectors: np.ndarray | None = None
    head: Any = None  # the first probe (training.head.Probe)
    embed_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return list(self.train_set.texts) + list(self.val_set.texts)

    def embed(self, texts: list[str], on_batch: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        from training.embeddings import embed_with_cache

        c = self.config
        return embed_with_cache(
            self.model,
            self.backbone.tokenizer,
            texts,
            backbone_sha=self.backbone.sha256,
            max_length=c.max_length,
            batch_size=c.embed_batch_size,
            device=self.device,
            cache=self.cache,
            on_batch=on_batch,
        )

    def snapshot(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, candidate: Candidate) -> None:
        assert candidate.snapshot is not None
        self.model.load_state_dict(candidate.snapshot)

    def refit_probe(self, c_grid: tuple[float, ...], *, cv: bool, names: bool) -> tuple[Any, Any]:
        """A new probe on the adapted encoder's embeddings, set as the model's head; returns
        it and its validation predictions (the same choices as the first probe)."""
        import torch

        from training.embeddings import encode
        from training.head import fit_probe, label_name_text

        c = self.config
        name_texts = [label_name_text(x) for x in self.labels] if names else []
        texts = self.texts
        tuned = encode(
            self.model,
            self.backbone.tokenizer,
            texts + name_texts,
            max_length=c.max_length,
            batch_size=c.embed_batch_size,
            device=self.device,
        )
        n_train, n_all = len(self.train_set), len(texts)
        new_head = fit_probe(
            tuned[:n_train],
            self.y_train,
            tuned[n_train:n_all],
            self.y_val,
            len(self.labels),
            c_grid=c_grid,
            max_iter=c.head_max_iter,
            seed=c.seed,
            name_vectors=tuned[n_all:] if names else None,
            **({} if cv else {"cv_max_examples": 0}),
        )
        self.model.set_head(torch.from_numpy(new_head.weight), torch.from_numpy(new_head.bias))
        return new_head, new_head.predict(tuned[n_train:n_all])


def embed_split(bench: Workbench) -> float:
    """Frozen embeddings of the split and of the label names (a free prior: label names are
    words more often than not, card_arrival, joy); returns the seconds taken."""
    from training.head import label_name_text

    t0 = time.perf_counter()
    report = bench.report
    vectors, bench.embed_stats = bench.embed(
        bench.texts,
        on_batch=lambda done, total: report("embedding", done / total, f"{done}/{total} texts"),
    )
    seconds = round(time.perf_counter() - t0, 2)
    n = len(bench.train_set)
    bench.x_train, bench.x_val = vectors[:n], vectors[n:]
    bench.name_vectors, _ = bench.embed([label_name_text(x) for x in bench.labels])
    return seconds


def probe(bench: Workbench, *, share: float, keep_snapshot: bool) -> Candidate:
    """The tuned linear probe on frozen embeddings, set as the model's head."""
    import torch

    from training.head import fit_probe

    c = bench.config
    t0 = time.perf_counter()
    bench.report("training", 0.0, "fitting the linear probe")
    assert bench.x_train is not None and bench.x_val is not None
    head = fit_probe(
        bench.x_train,
        bench.y_train,
        bench.x_val,
        bench.y_val,
        len(bench.labels),
        c_grid=c.head_c_grid,
        max_iter=c.head_max_iter,
        seed=c.seed,
        name_vectors=bench.name_vectors if c.label_name_prior else None,
        on_step=lambda i, n, msg: bench.report("training", share * i / n, msg),
    )
    bench.model.set_head(torch.from_numpy(head.weight), torch.from_numpy(head.bias))
    bench.head = head
    details = {
        "c": head.c,
        "label_names": head.label_names,
        "selection": head.selection,
        "strength": round(head.chance_corrected(len(bench.labels)), 4),
        "selection_bias": head.selection_bias,
        "validation_macro_f1": head.validation_macro_f1,
        "search": head.search,
    }
    return Candidate(
        "probe",
        head.predict(bench.x_val),
        details,
        {"probe_s": round(time.perf_counter() - t0, 2)},
        bench.snapshot() if keep_snapshot else None,
    )


def contrastive(bench: Workbench, *, share: tuple[float, float] = (0.2, 0.95)) -> Candidate:
    """SetFit-style contrastive fine-tuning of the encoder, then a new probe on it."""
    from training.contrastive import contrastive_adapt

    c = bench.config
    t0 = time.perf_counter()
    adapted = contrastive_adapt(
        bench.model,
        bench.backbone.tokenizer,
        bench.train_set.texts,
        bench.y_train,
        steps=c.contrastive_steps,
        batch_size=c.contrastive_batch_size,
        per_class=4,
        learning_rate=c.contrastive_learning_rate,
        max_length=c.max_length,
        device=bench.device,
        seed=c.seed,
        time_budget_s=c.contrastive_time_budget_s,
        on_step=lambda i, n, msg: bench.report(
            "training", share[0] + (share[1] - share[0]) * i / n, msg
        ),
    )
    head, pred = bench.refit_probe(c.head_c_grid, cv=True, names=c.label_name_prior)
    details = {
        "steps": adapted.steps,
        "seconds": adapted.seconds,
        "final_loss": adapted.final_loss,
        "stopped": adapted.stopped,
        "head": {"c": head.c, "label_names": head.label_names},
    }
    return Candidate(
        "contrastive", pred, details, {"contrastive_s": round(time.perf_counter() - t0, 2)}
    )


def lp_ft(bench: Workbench, *, share: float) -> Candidate:
    """All weights fine-tuned from the probe; on small data, a new probe on the result
    (SetFit's head: a fresh regularised logistic regression on the fine-tuned embeddings
    generalises better than the head trained to ~zero loss alongside the encoder: +2.4 and
    +3.0 points on emotion 64/class, dev split)."""
    from training.finetune import fine_tune

    c = bench.config
    t0 = time.perf_counter()
    budget = c.fine_tuning_budget_s
    ft = fine_tune(
        bench.model,
        bench.backbone.tokenizer,
        bench.train_set.texts,
        bench.y_train,
        bench.val_set.texts,
        bench.y_val,
        c,
        bench.device,
        time_budget_s=budget,
        on_step=lambda i, n, msg: bench.report("training", share + (1 - share) * i / n, msg),
    )
    assert ft.val_pred is not None and ft.recipe is not None  # last epoch is evaluated
    pred = ft.val_pred
    if ft.recipe.small_data:
        bench.report("training", 1.0, "refitting the head on fine-tuned embeddings")
        _, pred = bench.refit_probe((bench.head.c,), cv=False, names=False)
    details = {
        "best_epoch": ft.best_epoch,
        "recipe": dataclasses.asdict(ft.recipe),
        "head": "refit logistic regression" if ft.recipe.small_data else "trained",
        "history": ft.history,
        "samples_per_s": ft.samples_per_s,
        "stopped": ft.stopped,
    }
    return Candidate(
        "fine_tuning", pred, details, {"fine_tuning_s": round(time.perf_counter() - t0, 2)}
    )
