"""HTTP request and response bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.data import LabelList


class Example(BaseModel):
    """One labeled text: `label` (single-label) or `labels` (multi-label, [] for none)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    label: str | None = None
    labels: list[str] | None = Field(None, max_length=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> Example:
        if (self.label is None) == (self.labels is None):
            raise ValueError(
                "send `label` (one class) or `labels` (a list, multi-label), exactly one"
            )
        return self

    @property
    def target(self) -> Any:
        """The row's label as models/data.py reads it (a list: a label set)."""
        return LabelList(self.labels) if self.labels is not None else self.label


class FeedbackExample(Example):
    prediction_id: str | None = Field(None, max_length=100)


def _name_field(description: str) -> Any:
    """An optional model or backbone name: the registry's rules (validate_model_name)."""
    return Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description=description
    )


class FeedbackRequest(BaseModel):
    """Body of `POST /feedback`: labeled examples, pending until a retrain uses them."""

    model_config = ConfigDict(extra="forbid")
    examples: list[FeedbackExample] = Field(min_length=1)
    model: str | None = _name_field("the model the examples are for (default: REFIT_MODEL_NAME)")


class RetrainOptions(BaseModel):
    """The options of `POST /retrain/submit` (query parameters for CSV/JSONL bodies)."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["auto", "feature_extraction", "fine_tuning"] = "auto"
    mode: Literal["append", "replace"] = "append"
    promote: Literal["auto", "always", "never", "shadow"] = "auto"
    model: str | None = _name_field(
        "the model to train (default: REFIT_MODEL_NAME); a new name creates it"
    )
    backbone: str | None = _name_field(
        "minilm (the packaged MiniLM), an encoder from REFIT_BACKBONES, or auto (the policy"
        " picks among them); default: the model's `backbone` setting, else REFIT_BACKBONE"
    )
    task: Literal["auto", "multi_label"] = Field(
        "auto",
        description="multi_label: read a `label` as a set of one; auto: multi-label when the"
        " examples have `labels` lists",
    )


class RetrainRequest(RetrainOptions):
    """Body of `POST /retrain/submit` (JSON). CSV/JSONL bodies carry the options as query parameters."""

    examples: list[Example] = Field(min_length=1)


class ModelSettings(BaseModel):
    """Per-model overrides (`PUT /models/{name}/settings`); a field left out keeps its value,
    `null` goes back to the service-wide REFIT_* setting."""

    model_config = ConfigDict(extra="forbid")
    feature_extraction_below: int | None = Field(None, ge=2, le=100_000)
    fine_tuning_at: int | None = Field(None, ge=2, le=100_000)
    time_budget_s: float | None = Field(None, ge=1, le=86_400)
    promotion_tolerance: float | None = Field(None, ge=0, le=1)
    auto_retrain: bool | None = Field(None, description="triggers start jobs for this model")
    retrain_min_pending: int | None = Field(None, ge=0)
    retrain_interval_s: float | None = Field(None, ge=0)
    drift_threshold: float | None = Field(None, ge=0, le=1)
    shadow_min_labeled: int | None = Field(None, ge=1, le=1_000_000)
    canary_fraction: float | None = Field(None, ge=0, le=1)
    canary_min_labeled: int | None = Field(None, ge=1, le=1_000_000)
    canary_latency_factor: float | None = Field(None, ge=1, le=100)
    keep_versions: int | None = Field(None, ge=0, le=10_000)
    out_of_scope: Literal["auto", "off"] | None = None
    out_of_scope_label: str | None = Field(
        None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    out_of_scope_target_recall: float | None = Field(None, ge=0.5, le=0.999)
    backbone: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="the encoder of new versions: minilm, one from REFIT_BACKBONES, or auto"
        " (another name: 400 with the allowed ones)",
    )
    max_p50_ms: float | None = Field(
        None, ge=0.1, le=60_000, description="backbone auto: the single-text p50 budget (ms)"
    )
    store_texts: bool | None = Field(
        None, description="queue served texts worth a label (personal data: see README)"
    )
    query_strategy: Literal["margin", "entropy", "diverse"] | None = None
    queue_retention_s: float | None = Field(None, ge=60, le=366 * 86_400)


class TopLabel(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    id: str = Field(description="send it back as `prediction_id` in POST /feedback")
    label: str | None = Field(
        None, description="single-label models: the answer, a class or the out-of-scope label"
    )
    labels: list[TopLabel] | None = Field(
        None,
        description="multi-label models: the labels at or above their thresholds, most"
        " probable first (empty: none of them)",
    )
    out_of_scope: bool = Field(
        description="no known class fits (label is the model's out-of-scope label; multi-label:"
        " `labels` is empty); always false for single-label versions made without a detector"
    )
    score: float | None = Field(
        None, description="single-label models: the top known label's calibrated probability"
    )
    top: list[TopLabel] = Field(
        description="the known labels, ranked (multi-label: by their own sigmoid probability)"
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class CanaryRequest(BaseModel):
    """`POST /models/{name}/canary`: a version answering a share of the model's callers."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(
        pattern=r"^(v\d{8}-\d{6}-\d{6}-[0-9a-f]{4}|previous)$",
        description="a version id or the alias `previous`",
    )
    fraction: float | None = Field(
        None,
        ge=0,  # (not gt: OpenAPI 3.0 has no numeric exclusiveMinimum)
        le=1,
        description="share of callers it answers (stored as the model's canary_fraction;"
        " default: the current one)",
    )


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(
        pattern=r"^(v\d{8}-\d{6}-\d{6}-[0-9a-f]{4}|production|previous|shadow)$",
        description="a version id (`vYYYYMMDD-HHMMSS-ffffff-xxxx`) or the alias `previous`"
        " or `shadow`",
    )


class BatchRequest(BaseModel):
    """Body of `POST /models/{name}/batch`: a file under REFIT_BATCH_ROOT scored by a job."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(
        min_length=1,
        max_length=4096,
        description="CSV (a `text` column, optional `id`) or JSONL (`text`, optional `id`),"
        " relative to REFIT_BATCH_ROOT",
    )
    output: str | None = Field(
        None,
        max_length=4096,
        description="results (JSONL) relative to REFIT_BATCH_ROOT; default: the input's name"
        " + `.predictions.jsonl` beside it (refused rows: + `.errors.jsonl`)",
    )
    version: str = Field(
        "production",
        pattern=r"^(v\d{8}-\d{6}-\d{6}-[0-9a-f]{4}|production|previous|shadow|canary)$",
        description="the version that scores every row (an alias is pinned when the job is queued)",
    )
    top_k: int = Field(1, ge=1, le=1000)
    chunk_rows: int = Field(1000, ge=1, le=100_000, description="rows per resumable chunk")
    on_error: Literal["skip", "stop"] = Field(
        "skip", description="a malformed row: record it and go on, or stop the batch"
    )


class ErrorBody(BaseModel):
    error: str
    fix: str | None = None
    scope: str | None = Field(None, description="401/403: the token scope the route needs")


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error statuses a route answers with."""
    text = {
        400: "the body could not be parsed",
        401: "missing or wrong bearer token",
        403: "the token's scope is too narrow for this route (`scope` says which it needs)",
        404: "no such job, model, version or queue item",
        409: "conflicts with the current state",
        413: "request body too large",
        415: "unsupported content type",
        503: "the store or the registry is unavailable (or busy); retry after Retry-After",
    }
    if 401 in codes:  # a token of a narrower scope is refused with 403
        codes = tuple(sorted({*codes, 403}))
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


ANNOTATOR = Field(
    "anonymous",
    min_length=1,
    max_length=100,
    pattern=r"^[^\x00-\x1f\x7f]+$",
    description="who answers (stored with each answer)",
)


class QueueNext(BaseModel):
    """`POST /models/{name}/queue/next`: lease the next items worth a label."""

    model_config = ConfigDict(extra="forbid")
    annotator: str = ANNOTATOR
    count: int = Field(1, ge=1, le=100)
    lease_s: float = Field(300, ge=10, le=86_400, description="how long the items stay yours")


class QueueAnswer(BaseModel):
    """One answer: `label` (single-label), `labels` (multi-label) or `skip: true`."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=2**62, description="the queue item's id")
    label: str | None = Field(None, min_length=1, max_length=200)
    labels: list[str] | None = Field(None, max_length=1000)
    skip: bool = False
    new_label: bool = Field(
        False, description="true: a label the model does not have is a new class"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> QueueAnswer:
        if (self.label is not None) + (self.labels is not None) + self.skip != 1:
            raise ValueError("send exactly one of `label`, `labels` or `skip: true`")
        return self


class QueueAnswers(BaseModel):
    """`POST /models/{name}/queue/answers`: all applied, or none (one transaction)."""

    model_config = ConfigDict(extra="forbid")
    annotator: str = ANNOTATOR
    lease: str | None = Field(
        None, max_length=64, description="the token from /queue/next (items leased to you)"
    )
    answers: list[QueueAnswer] = Field(min_length=1, max_length=1000)


class QueueUndo(BaseModel):
    """`POST /models/{name}/queue/{item}/undo`: reopen an answer and lease it back."""

    model_config = ConfigDict(extra="forbid")
    annotator: str = ANNOTATOR
    lease_s: float = Field(300, ge=10, le=86_400)


class SuspectReview(BaseModel):
    """`POST /models/{name}/versions/{v}/suspects/{index}`: keep or correct the label."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["confirm", "relabel"]
    label: str | None = Field(None, min_length=1, max_length=200)
    new_label: bool = False

    @model_validator(mode="after")
    def _label_for_relabel(self) -> SuspectReview:
        if (self.action == "relabel") != (self.label is not None):
            raise ValueError("`relabel` needs `label`; `confirm` takes none")
        return self
