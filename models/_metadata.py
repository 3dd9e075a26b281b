"""The schema of `metadata.json`, the self-description of every published model version."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Strategy = Literal["feature_extraction", "fine_tuning"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackboneInfo(_Frozen):
    name: str
    sha256: str = Field(description="sha256 of the backbone's weights file")
    pooling: Literal["mean"] = "mean"
    normalize: bool = True


class DataSummary(_Frozen):
    count: int = Field(description="examples after normalisation and de-duplication")
    per_class: dict[str, int]
    sha256: str = Field(description="sha256 of the canonical (sorted) dataset")
    train_count: int
    validation_count: int
    duplicates_dropped: int = 0
    conflicts: int = Field(0, description="texts seen with more than one label (dropped)")
    out_of_scope_count: int = Field(0, description="examples with the out-of-scope label")


class ClassMetrics(_Frozen):
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(_Frozen):
    accuracy: float
    macro_f1: float
    count: int = Field(description="size of the evaluation set")
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    mean_confidence: float | None = Field(
        None, description="mean top-1 probability: the drift signal's reference"
    )
    predicted_counts: dict[str, int] | None = Field(
        None, description="predicted labels: the reference for the live label distribution"
    )
    confusion: list[list[int]] | None = Field(
        None, description="rows: true label, columns: predicted label, in `labels` order"
    )
    # multi-label versions (`accuracy` is then subset accuracy: the exact label set)
    micro_f1: float | None = None
    hamming_loss: float | None = Field(None, description="wrong label decisions / all decisions")


class OnnxInfo(_Frozen):
    opset: int
    inputs: list[str]
    outputs: list[str]
    parity_max_abs_diff: float = Field(description="max |p_onnx - p_torch| on real examples")
    fused: dict[str, int] | None = Field(
        default=None,
        description="operators fused by onnxruntime's transformer optimizer (None: not fused)",
    )


class QuantizationReport(_Frozen):
    """The int8 graph against fp32 (training/quantization.py has the guard's rule)."""

    method: str
    argmax_agreement: float = Field(
        description="share of the `examples` texts where int8 decides as fp32 does"
    )
    max_abs_diff: float
    examples: int = Field(description="training-time texts both graphs scored")
    file: str | None = Field(
        "model.onnx",
        description="the int8 graph (None: not kept); versions before the policy replaced model.onnx",
    )
    policy: Literal["auto", "always", "legacy"] = "legacy"
    metric: str = Field(
        "macro_f1", description="what the fields below hold (micro_f1: multi-label)"
    )
    fp32_macro_f1: float | None = Field(None, description="validation score of model.onnx")
    int8_macro_f1: float | None = Field(None, description="validation score of the int8 graph")
    served_on_cpu: bool = True
    reason: str = ""
    worst_class: str | None = Field(None, description="the class int8 flips most (if any)")
    worst_class_flips: int | None = None
    worst_class_count: int | None = Field(None, description="texts fp32 gives that class")
    paired_lost: int | None = Field(None, description="validation texts only fp32 gets right")
    paired_gained: int | None = Field(None, description="validation texts only int8 gets right")
    paired_p_value: float | None = Field(None, description="one-sided exact McNemar")


class HalfPrecisionReport(_Frozen):
    """The fp16 graph against fp32: served on CUDA only when it passed its gate."""

    file: str | None = Field(None, description="the fp16 graph (None: not kept)")
    parity_max_abs_diff: float = Field(description="max |p_fp16 - p_fp32|, parity texts")
    argmax_agreement: float
    examples: int = Field(description="training-time texts both graphs scored")
    served_on_cuda: bool = False
    reason: str = ""


class Calibration(_Frozen):
    """How the version's probabilities were calibrated, and what it changed (on the data it
    was fitted on): expected calibration error (15 equal-width bins of the top score) and
    Brier score, before and after."""

    method: Literal["temperature", "none"] = "temperature"
    temperature: float = 1.0
    fitted_on: str = "validation"
    count: int = 0
    ece_before: float | None = None
    ece_after: float | None = None
    brier_before: float | None = None
    brier_after: float | None = None
    reason: str = ""


class OutOfScopeEvidence(_Frozen):
    """What the detector's choice rests on, measured on held-out data."""

    source: Literal["out_of_scope_examples", "simulated_unknown_classes", "none"]
    in_scope_count: int = Field(description="validation examples (in scope)")
    out_of_scope_count: int = Field(0, description="out-of-scope examples (0: simulated)")
    auroc: float | None = None
    in_scope_recall: float | None = Field(None, description="validation kept in scope")
    out_of_scope_recall: float | None = Field(
        None, description="out-of-scope answered so (simulated: mean over folds)"
    )
    candidates: dict[str, float] = Field(default_factory=dict, description="AUROC per score")


class OutOfScope(_Frozen):
    """The version's out-of-scope decision: a text whose score is above `threshold` is
    answered with `label` (`method` off: never)."""

    method: Literal["max_probability", "mahalanobis", "off"]
    threshold: float | None = None
    label: str = "out_of_scope"
    target_recall: float = 0.95
    file: str | None = Field(None, description="the score's parameters (mahalanobis)")
    evidence: OutOfScopeEvidence | None = None
    reason: str = ""


class MultiLabel(_Frozen):
    """How a multi-label version decides: label j is in the answer when its sigmoid
    probability is at least `thresholds[j]` (no label above: an empty answer)."""

    thresholds: dict[str, float]
    global_threshold: float = Field(description="for labels too rare to tune their own")
    tuned_labels: list[str] = Field(description="labels with their own threshold")
    tuned_on: str
    count: int = Field(description="held-out rows the thresholds were chosen on")
    min_tuned_positives: int
    none_count: int = Field(0, description="training rows with no label")
    merged_duplicates: int = Field(0, description="rows whose text was seen before (sets joined)")
    dropped_labels: list[str] = Field(
        default_factory=list, description="labels on fewer than 2 rows: dropped"
    )


class Suspect(_Frozen):
    """A training example whose label looks wrong to a probe that never saw it."""

    text: str
    label: str = Field(description="the label it was trained with")
    suggested: str = Field(description="the label the out-of-fold probe is confident in")
    label_probability: float
    suggested_probability: float


class ModelMetadata(_Frozen):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    labels: list[str]
    backbone: BackboneInfo
    strategy: Strategy
    reason: str
    policy_inputs: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    data: DataSummary
    metrics: Metrics = Field(description="on the held-out validation split")
    test_metrics: Metrics | None = None
    max_length: int
    onnx: OnnxInfo
    quantized: bool = False
    quantization: QuantizationReport | None = None
    fp16: HalfPrecisionReport | None = None
    calibration: Calibration | None = Field(
        None, description="absent in versions made before calibration: temperature 1"
    )
    out_of_scope: OutOfScope | None = Field(
        None, description="absent in versions made before the detector: never out of scope"
    )
    task: Literal["single_label", "multi_label"] = "single_label"
    multi_label: MultiLabel | None = Field(None, description="multi-label versions: thresholds")
    parent_version: str | None = None
    suspects: list[Suspect] | None = Field(
        None, description="label-error hints on the training split (None: not computed)"
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 of every file of the version but metadata.json"
    )

    @property
    def temperature(self) -> float:
        """What `/predict` divides the logits by (1: uncalibrated, a version made before)."""
        return self.calibration.temperature if self.calibration is not None else 1.0
