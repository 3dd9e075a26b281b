"""`train(dataset, config) -> published metadata`: the whole job, callable as a library."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import ModelMetadata, Registry, validate_model_name
from models.data import DataError, Dataset, load_dataset, set_aside, stratified_split
from models.multilabel import MultiDataset
from training.config import TrainConfig
from training.packaging import Trained, package
from training.policy import Decision, adapts_anyway, decide
from training.progress import CancelCheck, ProgressCallback, Reporter
from training.selection import Reason, Selection, compare
from training.strategies import Workbench, contrastive, embed_split, lp_ft, probe
from training.suspects import suspects_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    metadata: ModelMetadata
    promoted: bool
    decision: Decision
    validation: Dataset | MultiDataset
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    promotion_reason: str | None = None  # when the config asked to promote: why it did or not
    outside: Dataset | None = None  # the out-of-scope examples (no class), for the gate


def _as_dataset(
    data: Dataset | MultiDataset | str | Path | Iterable[Any], *, task: str = "auto"
) -> Dataset | MultiDataset:
    if isinstance(data, Dataset | MultiDataset):
        return data
    return load_dataset(data, check_classes=False, task=task)


def _select_device(choice: str):
    import torch

    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but torch sees no CUDA device; use 'cpu' or 'auto'"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def train(
    data: Dataset | MultiDataset | str | Path | Iterable[Any],
    config: TrainConfig | None = None,
    *,
    registry: Registry | None = None,
    test_data: Dataset | str | Path | Iterable[Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Validate, pick a strategy, train, evaluate, export to ONNX and publish one version.

    Raises `DataError` for unusable data (before any heavy work), `Cancelled` when `cancel`
    returns True, `ExportError` when ONNX disagrees with torch. Nothing is published unless
    every step succeeded.
    """
    config = config or TrainConfig()
    registry = registry or Registry()
    validate_model_name(config.name)
    report = Reporter(progress, cancel)
    started = time.perf_counter()

    report("validating", 0.0, "checking examples")
    examples = _as_dataset(data, task=config.task)
    if isinstance(examples, MultiDataset):
        from training.multilabel import train_multi_label

        if config.backbone_choices:  # backbone auto compares single-label probes only
            name, folder = config.backbone_choices[0]
            log.info("backbone auto: multi-label data, %s (the first allowed) is used", name)
            config = dataclasses.replace(config, backbone=folder, backbone_choices=())

        multi_test = None
        if test_data is not None:
            multi_test = _as_dataset(test_data, task="multi_label")
            assert isinstance(multi_test, MultiDataset)
        return train_multi_label(
            examples,
            config,
            registry=registry,
            test=multi_test,
            report=report,
            started=started,
            extra_metadata=extra_metadata,
        )
    # examples with the out-of-scope label are no class: they choose and check the detector
    dataset, outside = set_aside(examples, config.out_of_scope_label)
    test = None
    if test_data is not None:  # its out-of-scope rows are no class either
        single_test = _as_dataset(test_data)
        if isinstance(single_test, MultiDataset):
            raise DataError(["test data has label sets but the training data is single-label"])
        test, _ = set_aside(single_test, config.out_of_scope_label)
    train_set, val_set = stratified_split(dataset, config.validation_fraction, config.seed)
    labels = dataset.classes
    if test is not None:
        unknown = sorted(set(test.labels) - set(labels))
        if unknown:
            raise DataError([f"test data has labels not in the training data: {unknown[:10]}"])
    described = f"{len(dataset)} examples, {len(labels)} classes"
    if len(outside):
        described += f", {len(outside)} out of scope"
    report("validating", 1.0, described)

    choice = None
    if len(config.backbone_choices) > 1:
        from training.backbone_choice import choose_backbone

        bench, choice = choose_backbone(
            config, lambda c: workbench(c, report, registry, labels, train_set, val_set)
        )
        config = bench.config
    else:
        if config.backbone_choices:
            config = dataclasses.replace(
                config, backbone=config.backbone_choices[0][1], backbone_choices=()
            )
        bench = workbench(config, report, registry, labels, train_set, val_set)
    decision = decide(
        dataset.counts(),
        config.thresholds,
        forced=config.strategy,
        train_examples=len(train_set),
        on_cuda=bench.device.type == "cuda",
    )
    log.info("strategy plan: %s (%s)", decision.plan, decision.reason)
    trained = _fit(bench, decision, test)
    if choice is not None:
        trained.details["backbone"] = choice.evidence
        trained = dataclasses.replace(trained, reason=f"{trained.reason}; {choice.reason}")
    metadata = package(
        bench,
        trained,
        dataset=dataset,
        outside=outside,
        test=test,
        registry=registry,
        started=started,
        extra_metadata=extra_metadata,
    )
    promotion = None
    if config.promote != "never":
        from training.promotion import promote_candidate

        promotion = promote_candidate(
            registry,
            metadata,
            val_set,
            mode=config.promote,
            tolerance=config.promotion_tolerance,
            outside=outside,
        )
    report("done", 1.0, f"published {metadata.version}")
    log.info(
        "published %s/%s: %s, validation accuracy %.4f macro-F1 %.4f in %.0f s",
        config.name,
        metadata.version,
        metadata.strategy,
        metadata.metrics.accuracy,
        metadata.metrics.macro_f1,
        trained.timings["total_s"],
    )
    return TrainResult(
        metadata,
        promotion is not None and promotion.promoted,
        decision,
        val_set,
        trained.timings,
        trained.details,
        promotion.reason if promotion is not None else None,
        outside,
    )


def workbench(
    config: TrainConfig,
    report: Reporter,
    registry: Registry,
    labels: list[str],
    train_set: Dataset | MultiDataset,
    val_set: Dataset | MultiDataset,
) -> Workbench:
    """The backbone with a new head, the split and its targets: class ids, or (multi-label)
    a 0/1 matrix of label sets."""
    import torch

    from training.backbone import load_backbone
    from training.classifier import SentenceClassifier
    from training.embeddings import EmbeddingCache

    if config.threads:
        torch.set_num_threads(config.threads)
    device = _select_device(config.device)
    backbone = load_backbone(config.backbone)
    multi = isinstance(train_set, MultiDataset)

    def targets(ds: Dataset | MultiDataset) -> np.ndarray:
        if isinstance(ds, MultiDataset):
            return ds.matrix(labels)
        label_id = {label: i for i, label in enumerate(labels)}
        return np.asarray([label_id[x] for x in ds.labels])

    return Workbench(
        config=config,
        report=report,
        labels=labels,
        train_set=train_set,
        val_set=val_set,
        backbone=backbone,
        model=SentenceClassifier(backbone.encoder, len(labels), multi_label=multi).to(device),
        device=device,
        cache=EmbeddingCache((config.cache_dir or registry.root / ".cache") / "embeddings.sqlite"),
        y_train=targets(train_set),
        y_val=targets(val_set),
    )


def _fit(bench: Workbench, decision: Decision, test: Dataset | None) -> Trained:
    """The probe first, then at most one challenger that adapts the encoder (contrastive or
    LP-FT), and the one selection rule between them (training/selection.py)."""
    config, report = bench.config, bench.report
    timings = {"embedding_s": embed_split(bench)}
    may_adapt = decision.plan == "feature_extraction" and config.strategy == "auto"
    share = 0.2 if decision.plan != "feature_extraction" or may_adapt else 1.0
    # decided before the probe exists only in part: whether a challenger may follow
    first = probe(bench, share=share, keep_snapshot=False)
    started = time.perf_counter()
    suspects = suspects_of(bench)
    timings["suspects_s"] = round(time.perf_counter() - started, 2)
    strength = bench.head.chance_corrected(len(bench.labels))
    weak = config.strategy == "auto" and adapts_anyway(
        decision.plan, strength, config.weak_probe_below
    )
    # cross-fitting needs every class on both sides of each fold: two training examples
    can_cross_fit = int(np.bincount(bench.y_train).min()) >= 2
    fine_tune_plan = decision.plan != "feature_extraction" or (
        weak and (config.contrastive_steps == 0 or not can_cross_fit)
    )
    if weak or fine_tune_plan:  # the probe as it is, restored if it stays the better model
        first.snapshot = bench.snapshot()
    timings.update(first.timings)
    details: dict[str, Any] = {"embedding": bench.embed_stats, "probe": first.details}
    weak_text = (
        f"the probe is weak (chance-corrected {bench.head.selection} macro-F1"
        f" {strength:.3f} < {config.weak_probe_below:g})"
        if weak
        else None
    )
    challenger = None
    estimate = None
    if weak and not fine_tune_plan:  # adapt only if an honest estimate says it pays
        from training.crossfit import crossfit_contrastive

        estimate = crossfit_contrastive(bench, steps=config.contrastive_steps, share=(share, 0.6))
        timings["honest_estimate_s"] = estimate.seconds
        details["honest_estimate"] = {
            **estimate.details,
            "steps_per_fold": estimate.steps_per_fold,
            "probe_vs_contrastive": estimate.comparison.to_dict(),
            "adapt": estimate.adapt,
        }
        if estimate.adapt:
            challenger = contrastive(bench, share=(0.6, 0.95))
        else:
            report("training", 1.0, "probe kept")
    elif may_adapt and not weak:
        report("training", 1.0, "probe kept")
    if fine_tune_plan:
        if test is not None:  # for benchmarks: what the probe alone scores on test (never used)
            details["probe_test_metrics"] = _probe_on_test(bench, test)
        challenger = lp_ft(bench, share=share)
    selection = None
    if challenger is not None and estimate is not None:
        selection = Selection(
            challenger, challenger, False, False, details["honest_estimate"], estimate.summary()
        )
    elif challenger is not None:
        selection = compare(
            bench.y_val,
            first,
            challenger,
            seed=config.seed,
            forced=config.strategy != "auto",
        )
        if selection.kept is first:
            bench.restore(first)
    if challenger is not None and selection is not None:
        timings.update(challenger.timings)
        if challenger.name == "contrastive":
            details["contrastive"] = {
                **challenger.details,
                "probe_strength": first.details["strength"],
                "probe_vs_contrastive": selection.evidence,
                "kept": selection.kept is challenger,
            }
        else:
            details["fine_tuning"] = challenger.details
            details["probe_vs_fine_tuning"] = selection.evidence
    bench.model.to("cpu").float().eval()
    kept = selection.kept if selection is not None else first
    reason = Reason(decision.reason, weak_text, selection, estimate)
    strategy = "feature_extraction" if kept is first else "fine_tuning"
    return Trained(strategy, reason.text(), decision, details, timings, suspects)


def _probe_on_test(bench: Workbench, test: Dataset) -> dict[str, float]:
    from training.evaluate import compute_metrics

    label_id = {label: i for i, label in enumerate(bench.labels)}
    x_test, _ = bench.embed(list(test.texts))
    scored = compute_metrics(
        [label_id[x] for x in test.labels], bench.head.predict(x_test), bench.labels
    )
    return {"accuracy": scored.accuracy, "macro_f1": scored.macro_f1}
