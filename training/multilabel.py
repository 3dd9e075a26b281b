"""Training a multi-label version: `train()` comes here when the data holds label sets.

The same steps as single-label (training/pipeline.py), with multi-label pieces
(training/multilabel_head.py): split with every label on both sides, frozen embeddings,
the one-vs-rest probe, the policy on per-label positive counts (its percentile, 10 by
default), LP-FT with binary cross-entropy when the policy (or a weak probe: macro-F1 under
`weak_probe_below`) says so, the noise-aware choice between them, per-label thresholds,
export with a sigmoid per label, int8 judged on validation micro-F1, publish, the gate.

Out-of-scope answers: a multi-label model answers "none of these" as an empty label list;
rows labeled with the out-of-scope label (alone) are rows with no label, trained on as
negatives of every label. No temperature: each label's threshold is chosen on held-out
probabilities, which is what calibration is for in single-label models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models import (
    BackboneInfo,
    Calibration,
    DataSummary,
    ModelMetadata,
    MultiLabel,
    OutOfScope,
    Registry,
)
from models.data import DataError
from models.multilabel import MultiDataset, check_label_counts, multi_split
from training.config import TrainConfig
from training.multilabel_head import (
    MIN_TUNED_POSITIVES,
    Thresholds,
    choose_thresholds,
    fit_multi_probe,
    multi_label_objective,
    paired_bootstrap,
)
from training.policy import decide
from training.progress import Reporter
from training.strategies import Workbench, embed_split

log = logging.getLogger(__name__)


def train_multi_label(
    data: MultiDataset,
    config: TrainConfig,
    *,
    registry: Registry,
    test: MultiDataset | None,
    report: Reporter,
    started: float,
    extra_metadata: Mapping[str, Any] | None,
):
    from training.pipeline import TrainResult, workbench

    outside = sum(1 for s in data.label_sets if s == (config.out_of_scope_label,))
    dataset = data.without(config.out_of_scope_label).drop_rare()
    check_label_counts(dataset)
    train_set, val_set = multi_split(dataset, config.validation_fraction, config.seed)
    labels = dataset.classes
    if test is not None:
        unknown = sorted(
            set(test.without(config.out_of_scope_label).classes)
            - set(labels)
            - set(dataset.dropped_labels)
        )
        if unknown:
            raise DataError([f"test data has labels not in the training data: {unknown[:10]}"])
    report(
        "validating",
        1.0,
        f"{len(dataset)} examples, {len(labels)} labels (multi-label), {dataset.none_count} with none",
    )
    bench = workbench(config, report, registry, labels, train_set, val_set)
    decision = decide(
        dataset.counts(),
        config.thresholds,
        forced=config.strategy,
        train_examples=len(train_set),
        on_cuda=bench.device.type == "cuda",
    )
    timings = {"embedding_s": embed_split(bench)}
    t0 = time.perf_counter()
    report("training", 0.0, "fitting the one-vs-rest probe")
    assert bench.x_train is not None and bench.x_val is not None
    head = fit_multi_probe(
        bench.x_train,
        bench.y_train,
        bench.x_val,
        bench.y_val,
        c_grid=config.head_c_grid,
        max_iter=config.head_max_iter,
        seed=config.seed,
        on_step=lambda i, n, msg: report("training", 0.2 * i / n, msg),
    )
    _set_head(bench, head.weight, head.bias)
    timings["probe_s"] = round(time.perf_counter() - t0, 2)
    probe_val = head.probs(bench.x_val)
    if head.oof_probs is not None:
        evidence = np.vstack([head.oof_probs, probe_val])
        y_evidence = np.vstack([bench.y_train, bench.y_val])
        tuned_on = "out-of-fold training + validation"
    else:
        evidence, y_evidence, tuned_on = probe_val, bench.y_val, "validation"
    thresholds = choose_thresholds(evidence, y_evidence, tuned_on=tuned_on)
    weak = (
        config.strategy == "auto"
        and decision.plan == "feature_extraction"
        and head.selection_score < config.weak_probe_below
    )
    details: dict[str, Any] = {
        "embedding": bench.embed_stats,
        "probe": {
            "c": head.c,
            "selection": head.selection,
            "macro_f1": head.selection_score,
            "search": head.search,
        },
    }
    reason = decision.reason
    strategy = "feature_extraction"
    if decision.plan != "feature_extraction" or weak:
        if test is not None:  # for benchmarks: what the probe alone scores on test (never used)
            details["probe_test_metrics"] = _probe_on_test(bench, head, thresholds, test)
        if weak:
            reason += (
                f"; the probe is weak ({head.selection} macro-F1 {head.selection_score:.3f}"
                f" < {config.weak_probe_below:g}): fine-tuned from it (LP-FT)"
            )
        snapshot = bench.snapshot()
        ft_thresholds, ft_details, comparison = _fine_tune(bench, probe_val)
        timings["fine_tuning_s"] = ft_details.pop("seconds")
        details["fine_tuning"] = ft_details
        details["probe_vs_fine_tuning"] = comparison.to_dict()
        if config.strategy == "auto" and comparison.probe_better:
            bench.model.load_state_dict(snapshot)
            reason += f"; kept the probe: it is better beyond noise ({comparison.summary()})"
        else:
            strategy, thresholds = "fine_tuning", ft_thresholds
            if config.strategy == "auto":
                reason += (
                    f"; kept fine-tuning: the probe is not better beyond noise"
                    f" ({comparison.summary()})"
                )
    bench.model.to("cpu").float().eval()
    metadata = _package(
        bench,
        strategy=strategy,
        reason=reason,
        plan=decision.plan,
        policy_inputs=decision.inputs,
        thresholds=thresholds,
        dataset=dataset,
        out_of_scope_rows=outside,
        test=test,
        registry=registry,
        details=details,
        timings=timings,
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
        )
    report("done", 1.0, f"published {metadata.version}")
    log.info(
        "published %s/%s (multi-label): %s, validation micro-F1 %.4f macro-F1 %.4f in %.0f s",
        config.name,
        metadata.version,
        strategy,
        metadata.metrics.micro_f1 or 0.0,
        metadata.metrics.macro_f1,
        timings["total_s"],
    )
    return TrainResult(
        metadata,
        promotion is not None and promotion.promoted,
        decision,
        val_set,
        timings,
        details,
        promotion.reason if promotion is not None else None,
        None,
    )


def _probe_on_test(
    bench: Workbench, head: Any, thresholds: Thresholds, test: MultiDataset
) -> dict[str, float]:
    from training.evaluate import compute_multi_metrics

    probs = head.probs(bench.embed(list(test.texts))[0])
    y = test.matrix(bench.labels)
    m = compute_multi_metrics(y, thresholds.apply(probs), probs, bench.labels)
    return {"macro_f1": m.macro_f1, "micro_f1": m.micro_f1 or 0.0, "subset_accuracy": m.accuracy}


def _set_head(bench: Workbench, weight: np.ndarray, bias: np.ndarray) -> None:
    import torch

    bench.model.set_head(torch.from_numpy(weight), torch.from_numpy(bias))


def _fine_tune(bench: Workbench, probe_val: np.ndarray):
    """LP-FT with binary cross-entropy from the probe; thresholds on validation; the
    paired comparison with the probe (both at thresholds chosen on validation alone)."""
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
        on_step=lambda i, n, msg: bench.report("training", 0.2 + 0.8 * i / n, msg),
        objective=multi_label_objective(),
    )
    assert ft.val_pred is not None and ft.recipe is not None
    thresholds = choose_thresholds(ft.val_pred, bench.y_val, tuned_on="validation")
    probe_alike = choose_thresholds(probe_val, bench.y_val, tuned_on="validation")
    comparison = paired_bootstrap(
        bench.y_val,
        probe_alike.apply(probe_val),
        thresholds.apply(ft.val_pred),
        seed=c.seed,
    )
    details = {
        "best_epoch": ft.best_epoch,
        "recipe": ft.recipe.__dict__,
        "history": ft.history,
        "samples_per_s": ft.samples_per_s,
        "stopped": ft.stopped,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return thresholds, details, comparison


def _package(
    bench: Workbench,
    *,
    strategy: str,
    reason: str,
    plan: str,
    policy_inputs: dict[str, Any],
    thresholds: Thresholds,
    dataset: MultiDataset,
    out_of_scope_rows: int,
    test: MultiDataset | None,
    registry: Registry,
    details: dict[str, Any],
    timings: dict[str, float],
    started: float,
    extra_metadata: Mapping[str, Any] | None,
) -> ModelMetadata:
    from training.evaluate import OnnxRunner, compute_multi_metrics
    from training.packaging import export_version
    from training.quantization import INT8_FILE, guard_texts, judge_fp16, judge_int8

    config, report, labels = bench.config, bench.report, bench.labels
    staging = registry.stage(config.name)
    try:
        exported = export_version(bench, staging.path, timings)
        t0 = time.perf_counter()
        report("evaluating", 0.0, "scoring the held-out split")

        def score(graph: str, ds: MultiDataset):
            runner = OnnxRunner(staging.path / graph, staging.path / "tokenizer.json")
            probs = runner.predict_proba(list(ds.texts))
            return compute_multi_metrics(ds.matrix(labels), thresholds.apply(probs), probs, labels)

        metrics = score("model.onnx", bench.val_set)
        quantization = None
        if exported.int8 is not None:
            tokenizer = staging.path / "tokenizer.json"
            quantization = judge_int8(
                OnnxRunner(staging.path / "model.onnx", tokenizer),
                OnnxRunner(exported.int8, tokenizer),
                texts=guard_texts(bench.train_set.texts, bench.val_set.texts),
                validation=list(bench.val_set.texts),
                truth=bench.val_set.matrix(labels).astype(bool),
                decide=thresholds.apply,
                labels=labels,
                policy=config.quantize,
                fp32=metrics.micro_f1 or 0.0,
                int8=score(INT8_FILE, bench.val_set).micro_f1 or 0.0,
                count=metrics.count,
                metric="micro_f1",
                staging=staging.path,
            )
        fp16 = None
        if exported.fp16 is not None:
            fp16 = judge_fp16(
                OnnxRunner(staging.path / "model.onnx", staging.path / "tokenizer.json"),
                OnnxRunner(exported.fp16, staging.path / "tokenizer.json"),
                parity=list(bench.val_set.texts)[:64],
                texts=guard_texts(bench.train_set.texts, bench.val_set.texts),
                decide=thresholds.apply,
                labels=labels,
                staging=staging.path,
            )
        test_metrics = score("model.onnx", test) if test is not None else None
        timings["evaluation_s"] = round(time.perf_counter() - t0, 2)
        try:
            parent = registry.resolve(config.name, "production")
        except LookupError:
            parent = None
        timings["total_s"] = round(time.perf_counter() - started, 2)
        metadata = ModelMetadata(
            name=config.name,
            version=staging.version,
            created_at=datetime.now(UTC),
            labels=labels,
            backbone=BackboneInfo(name=bench.backbone.name, sha256=bench.backbone.sha256),
            strategy=strategy,  # type: ignore[arg-type]
            reason=reason,
            policy_inputs={"plan": plan, **policy_inputs},
            training_config={
                **config.to_dict(),
                "details": details,
                "timings": timings,
                **(extra_metadata or {}),
            },
            data=DataSummary(
                count=len(dataset),
                per_class=dataset.counts(),
                sha256=dataset.sha256(),
                train_count=len(bench.train_set),
                validation_count=len(bench.val_set),
                duplicates_dropped=dataset.merged,
                out_of_scope_count=out_of_scope_rows,
            ),
            metrics=metrics,
            test_metrics=test_metrics,
            max_length=config.max_length,
            onnx=exported.info,
            quantized=quantization is not None and quantization.served_on_cpu,
            quantization=quantization,
            fp16=fp16,
            calibration=Calibration(
                method="none",
                reason="multi-label: a sigmoid per label, thresholds chosen per label on"
                " held-out probabilities",
            ),
            out_of_scope=OutOfScope(
                method="off",
                label=config.out_of_scope_label,
                reason="multi-label: no label above its threshold is the out-of-scope"
                " answer (an empty label list)",
            ),
            task="multi_label",
            multi_label=MultiLabel(
                thresholds={
                    x: round(float(t), 4) for x, t in zip(labels, thresholds.values, strict=True)
                },
                global_threshold=thresholds.global_threshold,
                tuned_labels=[x for x, t in zip(labels, thresholds.tuned, strict=True) if t],
                tuned_on=thresholds.tuned_on,
                count=thresholds.count,
                min_tuned_positives=MIN_TUNED_POSITIVES,
                none_count=dataset.none_count,
                merged_duplicates=dataset.merged,
                dropped_labels=list(dataset.dropped_labels),
            ),
            parent_version=parent,
        )
        report("publishing", 0.5, "writing the version")
        return registry.publish(staging, metadata).metadata
    except BaseException:
        registry.discard(staging)
        raise
