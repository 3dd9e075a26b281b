"""Training configuration: one dataclass, checked once at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

StrategyChoice = Literal["auto", "feature_extraction", "fine_tuning"]
_STRATEGIES = ("auto", "feature_extraction", "fine_tuning")


def _require(condition: bool, name: str, expected: str, found: Any) -> None:
    if not condition:
        raise ValueError(f"{name} must be {expected}, got {found!r}")


@dataclass(frozen=True)
class PolicyThresholds:
    """When to extract features, when to fine-tune (see docs/policy.md).

    `k` is the `percentile`-th percentile of the per-class example counts: robust to one
    or two tiny classes, unlike the minimum (Banking77: min 35, p10 95, median 127).
    """

    feature_extraction_below: int = 16
    fine_tuning_at: int = 64
    percentile: float = 10.0
    time_budget_s: float = 1800.0
    finetune_samples_per_s_cpu: float = 30.0
    finetune_samples_per_s_cuda: float = 500.0

    def __post_init__(self) -> None:
        _require(
            self.feature_extraction_below >= 2,
            "feature_extraction_below",
            ">= 2",
            self.feature_extraction_below,
        )
        _require(
            self.fine_tuning_at >= self.feature_extraction_below,
            "fine_tuning_at",
            f">= feature_extraction_below ({self.feature_extraction_below})",
            self.fine_tuning_at,
        )
        _require(0 <= self.percentile <= 50, "percentile", "between 0 and 50", self.percentile)
        _require(self.time_budget_s > 0, "time_budget_s", "> 0", self.time_budget_s)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "default"
    strategy: StrategyChoice = "auto"
    # multi_label: read a `label` as a set of one; auto: multi-label when the data has sets
    task: Literal["auto", "single_label", "multi_label"] = "auto"
    backbone: Path | None = None  # a local Hugging Face folder; None: the packaged MiniLM
    # backbone auto: (name, folder) of every allowed encoder (folder None: the packaged
    # MiniLM); the cheapest unless another is better beyond noise within `max_p50_ms`
    backbone_choices: tuple[tuple[str, Path | None], ...] = ()
    max_p50_ms: float | None = None
    max_length: int = 128
    validation_fraction: float = 0.1
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    embed_batch_size: int = 64
    # feature extraction: L2 logistic regression, C picked on validation macro-F1
    head_c_grid: tuple[float, ...] = (
        10.0,
        1.0,
        100.0,
    )  # on ties the first wins: 10 is best on intent data (docs/policy.md)
    head_max_iter: int = 500
    label_name_prior: bool = True  # offer the label names as examples (kept if CV agrees)
    # few labels and a weak probe (chance-corrected, selection-bias-corrected CV macro-F1
    # below `weak_probe_below`): LP-FT; or, with `contrastive_steps` > 0 (opt-in),
    # SetFit-style contrastive fine-tuning of the encoder when a cross-fitted estimate on
    # the training split favours it (training/crossfit.py; docs/policy.md has the numbers)
    weak_probe_below: float = 0.6
    contrastive_steps: int = 0
    contrastive_batch_size: int = 32
    contrastive_learning_rate: float = 2e-5
    contrastive_time_budget_s: float = 120.0
    # fine-tuning (LP-FT: the head starts from the probe)
    epochs: int | None = None  # None: at least 4, more for small data (min_steps, max_epochs)
    min_steps: int = 300
    max_epochs: int = 40
    # small data (4 epochs would be < min_steps steps): smaller batches, higher rates
    small_data_batch_size: int = 16
    small_data_learning_rate: float = 1e-4
    small_data_head_learning_rate: float = 1e-3
    batch_size: int = 32
    learning_rate: float = 3e-5
    head_learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 1
    max_train_seconds: float | None = None
    # export
    opset: int = 17
    # int8 graph for CPU serving: auto = built, served when validation macro-F1 is within
    # 0.3 points of fp32; always = built and served; never = none
    quantize: str = "auto"
    # fp16 graph for CUDA serving (training/quantization.py): auto = built where training
    # sees a GPU, always = built anywhere (its parity gate runs on CPU too), never = none
    fp16: str = "auto"
    parity_tolerance: float = 1e-4
    # after publishing: never (a candidate), auto (through the promotion gate:
    # training/promotion.py), always (skip the gate); True means auto
    promote: Literal["never", "auto", "always"] | bool = "never"
    promotion_tolerance: float = 0.0  # macro-F1 a challenger may lose and still pass the gate
    # out-of-scope answers (training/out_of_scope.py): examples labeled `out_of_scope_label`
    # are no class; the threshold keeps `out_of_scope_target_recall` of in-scope texts
    out_of_scope: Literal["auto", "off"] = "auto"
    out_of_scope_label: str = "out_of_scope"
    out_of_scope_target_recall: float = 0.95
    cache_dir: Path | None = None  # embedding cache; None: <registry root>/.cache
    thresholds: PolicyThresholds = field(default_factory=PolicyThresholds)

    def __post_init__(self) -> None:
        if isinstance(self.promote, bool):
            object.__setattr__(self, "promote", "auto" if self.promote else "never")
        _require(
            self.promote in ("never", "auto", "always"),
            "promote",
            "never, auto or always",
            self.promote,
        )
        _require(self.strategy in _STRATEGIES, "strategy", f"one of {_STRATEGIES}", self.strategy)
        _require(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        _require(
            self.task in ("auto", "single_label", "multi_label"),
            "task",
            "auto, single_label or multi_label",
            self.task,
        )
        _require(8 <= self.max_length <= 512, "max_length", "between 8 and 512", self.max_length)
        _require(
            0 < self.validation_fraction < 0.5,
            "validation_fraction",
            "between 0 and 0.5 (exclusive)",
            self.validation_fraction,
        )
        _require(self.epochs is None or self.epochs >= 1, "epochs", ">= 1 or None", self.epochs)
        _require(self.min_steps >= 0, "min_steps", ">= 0", self.min_steps)
        _require(self.max_epochs >= 1, "max_epochs", ">= 1", self.max_epochs)
        _require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _require(self.embed_batch_size >= 1, "embed_batch_size", ">= 1", self.embed_batch_size)
        _require(0 < self.learning_rate < 1, "learning_rate", "in (0, 1)", self.learning_rate)
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)", self.warmup_ratio)
        _require(self.patience >= 0, "patience", ">= 0", self.patience)
        _require(
            bool(self.head_c_grid) and all(c > 0 for c in self.head_c_grid),
            "head_c_grid",
            "non-empty, all > 0",
            self.head_c_grid,
        )
        _require(
            self.quantize in ("auto", "always", "never"),
            "quantize",
            "auto, always or never",
            self.quantize,
        )
        _require(
            self.fp16 in ("auto", "always", "never"), "fp16", "auto, always or never", self.fp16
        )
        _require(self.parity_tolerance > 0, "parity_tolerance", "> 0", self.parity_tolerance)
        _require(
            self.out_of_scope in ("auto", "off"), "out_of_scope", "auto or off", self.out_of_scope
        )
        _require(
            0.5 <= self.out_of_scope_target_recall <= 0.999,
            "out_of_scope_target_recall",
            "between 0.5 and 0.999",
            self.out_of_scope_target_recall,
        )
        _require(
            bool(self.out_of_scope_label.strip()),
            "out_of_scope_label",
            "a non-empty label",
            self.out_of_scope_label,
        )
        _require(self.threads is None or self.threads >= 1, "threads", ">= 1 or None", self.threads)
        _require(
            self.max_p50_ms is None or self.max_p50_ms > 0, "max_p50_ms", "> 0", self.max_p50_ms
        )

    @property
    def fine_tuning_budget_s(self) -> float | None:
        """Seconds fine-tuning may take: `max_train_seconds`, else (auto) the policy's budget."""
        if self.max_train_seconds is None and self.strategy == "auto":
            return self.thresholds.time_budget_s
        return self.max_train_seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for `metadata.json`."""
        out = dataclasses.asdict(self)
        for key in ("backbone", "cache_dir"):
            out[key] = str(out[key]) if out[key] is not None else None
        out["head_c_grid"] = list(self.head_c_grid)
        out["backbone_choices"] = [
            [name, str(folder) if folder is not None else None]
            for name, folder in self.backbone_choices
        ]
        return out
