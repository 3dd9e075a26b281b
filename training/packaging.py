"""From trained weights to a published version: export to ONNX in a private staging folder
(parity-checked against torch), calibrate its scores (temperature scaling on the held-out
split: training/calibration.py), evaluate what will be served, decide on the int8 graph,
describe it all in `metadata.json`, publish atomically. Nothing is published unless every
step succeeded; the staging folder is removed on any failure."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models import BackboneInfo, DataSummary, Metrics, ModelMetadata, OutOfScope, Registry
from models.data import Dataset
from training.policy import Decision
from training.strategies import Workbench


@dataclass(frozen=True)
class Trained:
    """What the strategies produced: the weights are the workbench's model."""

    strategy: str
    reason: str
    decision: Decision
    details: dict[str, Any]
    timings: dict[str, float]
    suspects: list[dict[str, Any]] | None = None  # label-error hints (training/suspects.py)


def package(
    bench: Workbench,
    trained: Trained,
    *,
    dataset: Dataset,
    outside: Dataset,
    test: Dataset | None,
    registry: Registry,
    started: float,
    extra_metadata: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    from training.calibration import calibrate
    from training.evaluate import OnnxRunner, compute_metrics
    from training.quantization import guard_texts, judge_fp16, judge_int8

    config, report, labels = bench.config, bench.report, bench.labels
    label_id = {label: i for i, label in enumerate(labels)}
    timings = trained.timings
    staging = registry.stage(config.name)
    try:
        exported = export_version(bench, staging.path, timings)
        report("exporting", 1.0, "parity checked")

        t0 = time.perf_counter()
        report("evaluating", 0.0, "scoring the held-out split")
        runner = OnnxRunner(staging.path / "model.onnx", staging.path / "tokenizer.json")
        # calibrated scores: one temperature, fitted on the held-out split's logits, applied
        # by the inference loop wherever this version runs (models/_inference.py)
        # (a probe kept as it is also has out-of-fold logits on the training split from its
        # cross-validation: few-shot validation splits alone are too small to fit on)
        logits = runner.predict_logits(list(bench.val_set.texts))
        y = bench.y_val
        fitted_on = "validation"
        oof = bench.head.oof_logits if bench.head is not None else None
        if trained.strategy == "feature_extraction" and oof is not None:
            logits, y = np.vstack([oof, logits]), np.concatenate([bench.y_train, y])
            fitted_on = "out-of-fold training + validation"
        calibration = calibrate(logits, y, fitted_on=fitted_on)
        runner.temperature = calibration.temperature

        def score(ds: Dataset, graph: Any = None) -> Metrics:
            probs = (graph or runner).predict_proba(list(ds.texts))
            predicted = probs.argmax(1)
            metrics = compute_metrics([label_id[x] for x in ds.labels], predicted, labels)
            return metrics.model_copy(
                update={
                    "mean_confidence": round(float(probs.max(1).mean()), 6),
                    "predicted_counts": {
                        labels[i]: int(n)
                        for i, n in enumerate(np.bincount(predicted, minlength=len(labels)))
                    },
                }
            )

        metrics = score(bench.val_set)
        quantization, int8_runner = None, None
        if exported.int8 is not None:
            int8_runner = OnnxRunner(
                exported.int8, staging.path / "tokenizer.json", temperature=runner.temperature
            )
            quantization = judge_int8(
                runner,
                int8_runner,
                texts=guard_texts(bench.train_set.texts, bench.val_set.texts),
                validation=list(bench.val_set.texts),
                truth=np.array([label_id[x] for x in bench.val_set.labels]),
                decide=lambda p: p.argmax(1),
                labels=labels,
                policy=config.quantize,
                fp32=metrics.macro_f1,
                int8=score(bench.val_set, int8_runner).macro_f1,
                count=metrics.count,
                staging=staging.path,
            )
        fp16 = None
        if exported.fp16 is not None:
            fp16 = judge_fp16(
                runner,
                OnnxRunner(
                    exported.fp16, staging.path / "tokenizer.json", temperature=runner.temperature
                ),
                parity=list(bench.val_set.texts)[:64],
                texts=guard_texts(bench.train_set.texts, bench.val_set.texts),
                decide=lambda p: p.argmax(1),
                labels=labels,
                staging=staging.path,
            )
        # the detector is chosen on the graph CPU serves (int8 moves the embedding a little)
        int8_served = quantization is not None and quantization.served_on_cpu
        served = int8_runner if int8_served else runner
        out_of_scope = _out_of_scope(
            bench, trained, served, outside, staging.path, cached=not int8_served
        )
        report(
            "evaluating",
            0.5 if test is not None else 1.0,
            f"validation accuracy {metrics.accuracy:.4f}",
        )
        test_metrics = score(test) if test is not None else None
        timings["evaluation_s"] = round(time.perf_counter() - t0, 2)

        report("publishing", 0.0, "publishing")
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
            strategy=trained.strategy,
            reason=trained.reason,
            policy_inputs={"plan": trained.decision.plan, **trained.decision.inputs},
            training_config={
                **config.to_dict(),
                "details": trained.details,
                "timings": timings,
                **(extra_metadata or {}),
            },
            data=DataSummary(
                count=len(dataset),
                per_class=dataset.counts(),
                sha256=dataset.sha256(),
                train_count=len(bench.train_set),
                validation_count=len(bench.val_set),
                duplicates_dropped=dataset.duplicates_dropped,
                conflicts=len(dataset.conflicts),
                out_of_scope_count=len(outside),
            ),
            metrics=metrics,
            test_metrics=test_metrics,
            max_length=config.max_length,
            onnx=exported.info,
            quantized=quantization is not None and quantization.served_on_cpu,
            quantization=quantization,
            fp16=fp16,
            calibration=calibration,
            out_of_scope=out_of_scope,
            parent_version=parent,
            suspects=trained.suspects,
        )
        report("publishing", 0.5, "writing the version")
        return registry.publish(staging, metadata).metadata
    except BaseException:
        registry.discard(staging)
        raise


def export_version(bench: Workbench, folder: Path, timings: dict[str, float]) -> Any:
    """The workbench's model exported into `folder` (parity-checked, int8 unless `never`),
    its seconds added to `timings`."""
    from training.export import export_onnx
    from training.quantization import wants_fp16

    config = bench.config
    t0 = time.perf_counter()
    bench.report("exporting", 0.0, "exporting to ONNX")
    exported = export_onnx(
        bench.model,
        bench.backbone.tokenizer,
        folder,
        parity_texts=bench.val_set.texts,
        max_length=config.max_length,
        opset=config.opset,
        tolerance=config.parity_tolerance,
        quantize=config.quantize != "never",
        fp16=wants_fp16(config.fp16),
    )
    timings["export_s"] = round(time.perf_counter() - t0, 2)
    return exported


def _out_of_scope(
    bench: Workbench,
    trained: Trained,
    runner: Any,
    outside: Dataset,
    folder: Path,
    *,
    cached: bool,
) -> OutOfScope:
    """The version's out-of-scope detector (training/out_of_scope.py), its parameters written
    next to the graph. The pooled embeddings are the served graph's (a probe kept as it is
    served in fp32 reuses the training split's cached ones: the same frozen encoder)."""
    from models._detector import DETECTOR_FILE
    from training.out_of_scope import choose, evidence

    config = bench.config
    if config.out_of_scope == "off":
        return OutOfScope(method="off", label=config.out_of_scope_label, reason="out_of_scope: off")
    bench.report("evaluating", 0.1, "choosing the out-of-scope threshold")
    frozen = trained.strategy == "feature_extraction" and bench.x_train is not None
    if frozen and cached and len(bench.x_train) == len(bench.train_set):
        x_train = bench.x_train
    else:
        x_train = runner.outputs(list(bench.train_set.texts), ("pooled",))[0]
    logits_val, x_val = runner.outputs(list(bench.val_set.texts), ("logits", "pooled"))
    oos_logits = oos_pooled = None
    if len(outside):
        oos_logits, oos_pooled = runner.outputs(list(outside.texts), ("logits", "pooled"))
    oof = bench.head.oof_logits if frozen and bench.head is not None else None
    detector, gaussian = choose(
        evidence(
            x_train=x_train,
            y_train=bench.y_train,
            x_val=x_val,
            y_val=bench.y_val,
            logits_val=logits_val,
            oof_logits=oof,
            seed=config.seed,
        ),
        label=config.out_of_scope_label,
        target_recall=config.out_of_scope_target_recall,
        temperature=runner.temperature,
        classes=len(bench.labels),
        seed=config.seed,
        oos_pooled=oos_pooled,
        oos_logits=oos_logits,
    )
    if detector.method == "mahalanobis":
        gaussian.save(folder / DETECTOR_FILE)
    return detector
