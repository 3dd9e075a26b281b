"""`train(dataset, config) -> published metadata`: the whole job, callable as a library."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models import BackboneInfo, DataSummary, Metrics, ModelMetadata, Registry, validate_model_name
from training.config import TrainConfig
from training.data import DataError, Dataset, load_dataset, stratified_split
from training.policy import Decision, adapts_anyway, decide
from training.progress import CancelCheck, ProgressCallback, Reporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    metadata: ModelMetadata
    promoted: bool
    decision: Decision
    validation: Dataset
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _as_dataset(data: Dataset | str | Path | Iterable[Any]) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data)


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
    data: Dataset | str | Path | Iterable[Any],
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
    timings: dict[str, float] = {}
    started = time.perf_counter()

    report("validating", 0.0, "checking examples")
    dataset = _as_dataset(data)
    test = _as_dataset(test_data) if test_data is not None else None
    train_set, val_set = stratified_split(dataset, config.validation_fraction, config.seed)
    labels = dataset.classes
    label_id = {label: i for i, label in enumerate(labels)}
    if test is not None:
        unknown = sorted(set(test.labels) - set(labels))
        if unknown:
            raise DataError([f"test data has labels not in the training data: {unknown[:10]}"])
    report("validating", 1.0, f"{len(dataset)} examples, {len(labels)} classes")

    import torch

    from training.backbone import load_backbone
    from training.classifier import SentenceClassifier
    from training.embeddings import EmbeddingCache, embed_with_cache, encode
    from training.evaluate import OnnxRunner, compute_metrics
    from training.export import INT8_FILE, choose_int8, export_onnx
    from training.head import fit_probe, label_name_text

    if config.threads:
        torch.set_num_threads(config.threads)
    device = _select_device(config.device)
    decision = decide(
        dataset.counts(),
        config.thresholds,
        forced=config.strategy,
        train_examples=len(train_set),
        on_cuda=device.type == "cuda",
    )
    log.info("strategy plan: %s (%s)", decision.plan, decision.reason)

    backbone = load_backbone(config.backbone)
    model = SentenceClassifier(backbone.encoder, len(labels)).to(device)
    y_train = np.asarray([label_id[x] for x in train_set.labels])
    y_val = np.asarray([label_id[x] for x in val_set.labels])

    # 1. Frozen embeddings (cached) and the tuned linear probe: every plan starts here.
    t0 = time.perf_counter()
    cache = EmbeddingCache((config.cache_dir or registry.root / ".cache") / "embeddings.sqlite")
    all_texts = list(train_set.texts) + list(val_set.texts)
    vectors, embed_stats = embed_with_cache(
        model,
        backbone.tokenizer,
        all_texts,
        backbone_sha=backbone.sha256,
        max_length=config.max_length,
        batch_size=config.embed_batch_size,
        device=device,
        cache=cache,
        on_batch=lambda done, total: report("embedding", done / total, f"{done}/{total} texts"),
    )
    timings["embedding_s"] = round(time.perf_counter() - t0, 2)
    x_train, x_val = vectors[: len(train_set)], vectors[len(train_set) :]
    # Label names are words more often than not (card_arrival, joy): their embeddings are a
    # free prior, one extra example per class, used when cross-validation says it helps.
    name_vectors, _ = embed_with_cache(
        model,
        backbone.tokenizer,
        [label_name_text(x) for x in labels],
        backbone_sha=backbone.sha256,
        max_length=config.max_length,
        batch_size=config.embed_batch_size,
        device=device,
        cache=cache,
    )

    t0 = time.perf_counter()
    report("training", 0.0, "fitting the linear probe")
    may_adapt = decision.plan == "feature_extraction" and config.strategy == "auto"
    probe_share = 0.2 if decision.plan != "feature_extraction" or may_adapt else 1.0
    head = fit_probe(
        x_train,
        y_train,
        x_val,
        y_val,
        len(labels),
        c_grid=config.head_c_grid,
        max_iter=config.head_max_iter,
        seed=config.seed,
        name_vectors=name_vectors if config.label_name_prior else None,
        on_step=lambda i, n, msg: report("training", probe_share * i / n, msg),
    )
    model.set_head(torch.from_numpy(head.weight), torch.from_numpy(head.bias))
    timings["probe_s"] = round(time.perf_counter() - t0, 2)
    strength = head.chance_corrected(len(labels))
    details: dict[str, Any] = {
        "embedding": embed_stats,
        "probe": {
            "c": head.c,
            "label_names": head.label_names,
            "selection": head.selection,
            "strength": round(strength, 4),
            "validation_macro_f1": head.validation_macro_f1,
            "search": head.search,
        },
    }

    strategy = "feature_extraction"
    reason = decision.reason
    probe_pred = head.predict(x_val)

    def probe_on_adapted_encoder(c_grid: tuple[float, ...], *, cv: bool, names: bool):
        """A new probe on the adapted encoder's embeddings, set as the model's head; returns
        it and its validation predictions (the same choices as the first probe)."""
        name_texts = [label_name_text(x) for x in labels] if names else []
        tuned = encode(
            model,
            backbone.tokenizer,
            all_texts + name_texts,
            max_length=config.max_length,
            batch_size=config.embed_batch_size,
            device=device,
        )
        n_train, n_all = len(train_set), len(all_texts)
        new_head = fit_probe(
            tuned[:n_train],
            y_train,
            tuned[n_train:n_all],
            y_val,
            len(labels),
            c_grid=c_grid,
            max_iter=config.head_max_iter,
            seed=config.seed,
            name_vectors=tuned[n_all:] if names else None,
            **({} if cv else {"cv_max_examples": 0}),
        )
        model.set_head(torch.from_numpy(new_head.weight), torch.from_numpy(new_head.bias))
        return new_head, new_head.predict(tuned[n_train:n_all])

    def evidence_of(comparison) -> dict[str, Any]:
        return {**comparison.to_dict(), "probe_better_beyond_noise": comparison.a_better()}

    # 1b. Few labels and a weak probe (the frozen geometry does not fit the labels: question
    #     type, affect): adapt the encoder anyway. By default LP-FT with the small-data recipe
    #     (step 2); opt-in (`contrastive_steps` > 0), SetFit-style contrastive fine-tuning and
    #     a new probe. Either is kept unless the probe is better beyond noise.
    weak = config.strategy == "auto" and adapts_anyway(
        decision.plan, strength, config.weak_probe_below
    )
    weak_text = (
        f"the probe is weak (chance-corrected {head.selection} macro-F1 {strength:.3f} < "
        f"{config.weak_probe_below:g})"
    )
    fine_tune_plan = decision.plan != "feature_extraction" or (
        weak and config.contrastive_steps == 0
    )
    # the probe as it is, restored if it stays the better model
    probe_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()}
        if weak or fine_tune_plan
        else None
    )
    if weak and not fine_tune_plan:
        from training.contrastive import contrastive_adapt
        from training.evidence import paired_compare

        t0 = time.perf_counter()
        adapted = contrastive_adapt(
            model,
            backbone.tokenizer,
            train_set.texts,
            y_train,
            steps=config.contrastive_steps,
            batch_size=config.contrastive_batch_size,
            per_class=4,
            learning_rate=config.contrastive_learning_rate,
            max_length=config.max_length,
            device=device,
            seed=config.seed,
            time_budget_s=config.contrastive_time_budget_s,
            on_step=lambda i, n, msg: report("training", 0.2 + 0.75 * i / n, msg),
        )
        adapted_head, adapted_pred = probe_on_adapted_encoder(
            config.head_c_grid, cv=True, names=config.label_name_prior
        )
        comparison = paired_compare(y_val, probe_pred, adapted_pred, seed=config.seed)
        evidence = comparison.summary("probe", "contrastive")
        if comparison.a_better():
            assert probe_state is not None
            model.load_state_dict(probe_state)
            reason += (
                f"; {weak_text}, tried contrastive few-shot fine-tuning, kept the probe "
                f"({evidence})"
            )
        else:
            strategy = "fine_tuning"
            reason += (
                f"; {weak_text}: contrastive few-shot fine-tuning of the encoder (SetFit-style, "
                f"{adapted.steps} steps) and a new probe, kept: the probe is not better beyond "
                f"noise ({evidence})"
            )
        timings["contrastive_s"] = round(time.perf_counter() - t0, 2)
        details["contrastive"] = {
            "steps": adapted.steps,
            "seconds": adapted.seconds,
            "final_loss": adapted.final_loss,
            "stopped": adapted.stopped,
            "probe_strength": round(strength, 4),
            "head": {"c": adapted_head.c, "label_names": adapted_head.label_names},
            "probe_vs_contrastive": evidence_of(comparison),
            "kept": strategy == "fine_tuning",
        }
    elif weak:
        reason += f"; {weak_text}: fine-tuned from it (LP-FT)"
    elif may_adapt:
        report("training", 1.0, "probe kept")

    # 2. Fine-tuning (LP-FT) when the plan asks for it; kept unless the probe is better
    #    beyond noise on the same validation examples (training/evidence.py).
    if fine_tune_plan:
        from training.evidence import paired_compare
        from training.finetune import fine_tune

        if test is not None:  # for benchmarks: what the probe alone scores on test (never used)
            x_test, _ = embed_with_cache(
                model,
                backbone.tokenizer,
                list(test.texts),
                backbone_sha=backbone.sha256,
                max_length=config.max_length,
                batch_size=config.embed_batch_size,
                device=device,
                cache=cache,
            )
            test_pred = head.predict(x_test)
            probe_test = compute_metrics([label_id[x] for x in test.labels], test_pred, labels)
            details["probe_test_metrics"] = {
                "accuracy": probe_test.accuracy,
                "macro_f1": probe_test.macro_f1,
            }
        t0 = time.perf_counter()
        budget = config.max_train_seconds
        if budget is None and config.strategy == "auto":
            budget = config.thresholds.time_budget_s
        ft = fine_tune(
            model,
            backbone.tokenizer,
            train_set.texts,
            y_train,
            val_set.texts,
            y_val,
            config,
            device,
            time_budget_s=budget,
            on_step=lambda i, n, msg: report(
                "training", probe_share + (1 - probe_share) * i / n, msg
            ),
        )
        assert ft.val_pred is not None and ft.recipe is not None  # last epoch is evaluated
        ft_pred = ft.val_pred
        if ft.recipe.small_data:
            # SetFit's head: a fresh regularised logistic regression on the fine-tuned
            # embeddings generalises better than the head trained to ~zero loss alongside
            # the encoder (+2.4 and +3.0 points on emotion 64/class, dev split).
            report("training", 1.0, "refitting the head on fine-tuned embeddings")
            _, ft_pred = probe_on_adapted_encoder((head.c,), cv=False, names=False)
        timings["fine_tuning_s"] = round(time.perf_counter() - t0, 2)
        comparison = paired_compare(y_val, probe_pred, ft_pred, seed=config.seed)
        details["fine_tuning"] = {
            "best_epoch": ft.best_epoch,
            "recipe": dataclasses.asdict(ft.recipe),
            "head": "refit logistic regression" if ft.recipe.small_data else "trained",
            "history": ft.history,
            "samples_per_s": ft.samples_per_s,
            "stopped": ft.stopped,
        }
        details["probe_vs_fine_tuning"] = evidence_of(comparison)
        evidence = comparison.summary("probe", "fine-tuning")
        if config.strategy == "auto" and comparison.a_better():
            assert probe_state is not None
            model.load_state_dict(probe_state)
            reason += f"; kept the probe: it is better beyond noise ({evidence})"
        else:
            strategy = "fine_tuning"
            if config.strategy == "auto":
                reason += f"; kept fine-tuning: the probe is not better beyond noise ({evidence})"
    model.to("cpu").float().eval()

    # 3. Export to a private staging folder, check parity, evaluate what will be served.
    staging = registry.stage(config.name)
    try:
        t0 = time.perf_counter()
        report("exporting", 0.0, "exporting to ONNX")
        exported = export_onnx(
            model,
            backbone.tokenizer,
            staging.path,
            parity_texts=val_set.texts,
            max_length=config.max_length,
            opset=config.opset,
            tolerance=config.parity_tolerance,
            quantize=config.quantize != "never",
        )
        timings["export_s"] = round(time.perf_counter() - t0, 2)
        report("exporting", 1.0, "parity checked")

        t0 = time.perf_counter()
        report("evaluating", 0.0, "scoring the held-out split")
        runner = OnnxRunner(staging.path / "model.onnx", staging.path / "tokenizer.json")

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

        def score_graph(path: Path, ds: Dataset) -> Metrics:
            return score(ds, OnnxRunner(path, staging.path / "tokenizer.json"))

        metrics = score(val_set)
        quantization = exported.quantization
        if quantization is not None:
            quantization = choose_int8(
                quantization,
                policy=config.quantize,
                fp32=metrics,
                int8=score_graph(staging.path / INT8_FILE, val_set),
                staging=staging.path,
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
            backbone=BackboneInfo(name=backbone.name, sha256=backbone.sha256),
            strategy=strategy,
            reason=reason,
            policy_inputs={"plan": decision.plan, **decision.inputs},
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
                train_count=len(train_set),
                validation_count=len(val_set),
                duplicates_dropped=dataset.duplicates_dropped,
                conflicts=len(dataset.conflicts),
            ),
            metrics=metrics,
            test_metrics=test_metrics,
            max_length=config.max_length,
            onnx=exported.info,
            quantized=quantization is not None and quantization.served_on_cpu,
            quantization=quantization,
            parent_version=parent,
        )
        report("publishing", 0.5, "writing the version")
        published = registry.publish(staging, metadata)
    except BaseException:
        registry.discard(staging)
        raise
    promoted = False
    if config.promote:
        registry.promote(config.name, published.version)
        promoted = True
    report("done", 1.0, f"published {published.version}")
    log.info(
        "published %s/%s: %s, validation accuracy %.4f macro-F1 %.4f in %.0f s",
        config.name,
        published.version,
        strategy,
        metrics.accuracy,
        metrics.macro_f1,
        timings["total_s"],
    )
    return TrainResult(published.metadata, promoted, decision, val_set, timings, details)
