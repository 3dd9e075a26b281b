"""Labeled examples coming in over HTTP (`/retrain/submit` and `/feedback`): one set of
checks, answered with a 4xx that names every problem before anything is stored; a retrain
request becomes its examples and a queued job in one transaction."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from models.data import (
    DataError,
    Dataset,
    LabelList,
    build_examples,
    check_out_of_scope_label,
    parse_bytes,
)
from models.multilabel import (
    MultiDataset,
    build_multi_dataset,
    check_label_counts,
    decode_label_set,
    from_store,
)
from service.errors import ApiError, BadRequest, TooLarge, format_errors
from service.schemas import RetrainOptions, RetrainRequest
from service.settings import Settings

log = logging.getLogger(__name__)

PREDICT_FIELDS = {"texts", "top_k", "model"}
UPLOAD_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json": "json",
}


class UnsupportedType(ApiError):
    status = 415


def check_backbone(name: str, settings: Settings) -> None:
    allowed = [*settings.allowed_backbones, "auto"]
    if name not in allowed:
        raise BadRequest(
            f"unknown backbone {name!r}; allowed: {', '.join(allowed)}",
            fix="name one of them, or add it to REFIT_BACKBONES (`mpnet` once installed with"
            ' `refit backbones install mpnet`, or {"NAME": "/local/hf/folder"}) and restart',
        )


def accept_retrain(
    body: bytes, content_type: str, query: dict[str, str], settings: Settings, store: Any
) -> Any:
    """`POST /retrain/submit`: the examples validated against what the model already has,
    then stored with a queued job (returned); ApiError before anything is stored."""
    examples, options = _parse_retrain(body, content_type, query)
    if options.backbone is not None:
        check_backbone(options.backbone, settings)
    check_count(len(examples), settings, split="upload")
    dataset = validate(examples, task=options.task)
    model = options.model or settings.model_name
    stored = store.examples.dataset(model) if options.mode == "append" else []
    check_kind(model, dataset, stored_kind(stored), "stored examples", fix="or mode=replace")
    label = store.model_settings.get(model).get("out_of_scope_label") or settings.out_of_scope_label
    if isinstance(dataset, MultiDataset):
        rows = dataset.pairs()
        sets = [LabelList(list(s)) for s in dataset.label_sets]
        try:
            together = build_multi_dataset(
                (
                    (f"example {n}", t, y)
                    for n, (t, y) in enumerate(
                        [*from_store(stored), *zip(dataset.texts, sets, strict=True)]
                    )
                ),
                check_labels=False,
            )
            check_labels(set(together.classes), settings, trainable=True)
            check_label_counts(together.without(label).drop_rare())
        except DataError as exc:
            raise invalid(exc) from None
    else:
        rows = list(zip(dataset.texts, dataset.labels, strict=True))
        labeled = dict(stored)
        labeled.update(rows)
        combined: dict[str, int] = {}
        for value in labeled.values():
            combined[value] = combined.get(value, 0) + 1
        check_labels(set(combined), settings, trainable=True)
        check_trainable(combined, out_of_scope_label=label)
    job = store.jobs.create_job(
        model,
        options.model_dump(exclude={"model"}),
        rows,
        mode=options.mode,
        source="http",
        owner_pid=os.getpid() if settings.trainer == "embedded" else None,
    )
    log.info("job %s queued: %d examples, mode %s", job.id, len(dataset), options.mode)
    return job


def _parse_retrain(
    body: bytes, content_type: str, query: dict[str, str]
) -> tuple[list[tuple[Any, Any]], RetrainOptions]:
    if content_type == "application/json" and not query:
        try:
            request = RetrainRequest.model_validate_json(body)
        except ValidationError as exc:
            raise BadRequest(f"invalid retrain request: {_errors(exc)}") from None
        examples = [(e.text, e.target) for e in request.examples]
        return examples, RetrainOptions(**request.model_dump(exclude={"examples"}))
    fmt = UPLOAD_TYPES.get(content_type)
    if fmt is None:
        raise UnsupportedType(
            f"unsupported content type {content_type!r}",
            fix="send JSON {examples: [...]} or upload text/csv or application/x-ndjson with options as query parameters",
        )
    try:
        options = RetrainOptions.model_validate(query)
    except ValidationError as exc:
        raise BadRequest(f"invalid query parameters: {_errors(exc)}") from None
    try:
        dataset = parse_bytes(
            body, fmt, "upload", check_classes=False, extra_columns=False, task=options.task
        )
    except DataError as exc:
        raise invalid(exc) from None
    if isinstance(dataset, MultiDataset):
        sets = [LabelList(list(s)) for s in dataset.label_sets]
        return list(zip(dataset.texts, sets, strict=True)), options
    return list(zip(dataset.texts, dataset.labels, strict=True)), options


def _errors(exc: ValidationError) -> str:
    return format_errors(exc.errors(include_input=False))


def check_count(n: int, settings: Settings, *, split: str) -> None:
    limit = settings.max_examples_per_request
    if n > limit:
        raise TooLarge(
            f"{n} examples in one request, the limit is {limit}",
            fix=f"split the {split} or raise REFIT_MAX_EXAMPLES_PER_REQUEST",
        )


def validate(pairs: Sequence[tuple[Any, Any]], *, task: str = "auto") -> Dataset | MultiDataset:
    """The request's examples validated, normalised and de-duplicated (a text sent with two
    labels is refused: the caller must say which one it means; a multi-label text sent
    twice keeps the union of its sets)."""
    try:
        dataset = build_examples(
            ((f"examples[{i}]", t, y) for i, (t, y) in enumerate(pairs)),
            check_classes=False,
            task=task,
        )
        if isinstance(dataset, Dataset) and dataset.conflicts:
            shown = ", ".join(repr(t[:60]) for t in dataset.conflicts[:5])
            raise DataError(
                [
                    f"{len(dataset.conflicts)} text(s) appear with different labels in this request ({shown}); keep one label per text"
                ]
            )
    except DataError as exc:
        raise invalid(exc) from None
    return dataset


def stored_kind(stored: Sequence[tuple[str, str]]) -> str | None:
    """Whether stored examples are label sets (multi_label) or labels (None: none stored)."""
    if not stored:
        return None
    return "multi_label" if decode_label_set(stored[0][1]) is not None else "single_label"


def model_kind(registry: Any, store: Any, name: str) -> str | None:
    """The model's task as the next retrain sees it: its stored examples' (what feedback is
    added to), else its production version's (None: a new model)."""
    kind = stored_kind(store.examples.dataset(name))
    if kind is not None:
        return kind
    try:
        return registry.get(name, registry.resolve(name, "production")).metadata.task
    except Exception:  # no production version (or the registry is away): anything goes
        return None


def check_kind(
    model: str, dataset: Dataset | MultiDataset, kind: str | None, what: str, *, fix: str = ""
) -> None:
    """A 400 when `dataset`'s kind differs from the model's (`kind` None: anything goes)."""
    sent = "multi_label" if isinstance(dataset, MultiDataset) else "single_label"
    if kind is None or kind == sent:
        return
    wanted = "`labels` lists" if kind == "multi_label" else "one `label` per example"
    raise BadRequest(
        f"model {model!r} is {kind.replace('_', '-')} ({what}), these examples are"
        f" {sent.replace('_', '-')}",
        fix=f"send {wanted}" + (f", {fix}" if fix else ""),
    )


def check_labels(labels: set[str], settings: Settings, *, trainable: bool) -> None:
    """The model's labels after this request within REFIT_MAX_CLASSES (a retrain request,
    `trainable`, also says how to fix a label column that holds something else)."""
    if len(labels) > settings.max_classes:
        hint = (
            "; check that the label column holds class names, or raise REFIT_MAX_CLASSES"
            if trainable
            else ""
        )
        raise invalid(
            DataError([f"{len(labels)} distinct labels, the limit is {settings.max_classes}{hint}"])
        )


def check_trainable(counts: dict[str, int], *, out_of_scope_label: str) -> None:
    """Enough classes to train on, the out-of-scope examples (no class) set aside."""
    try:
        check_out_of_scope_label(counts, out_of_scope_label)
    except DataError as exc:
        raise invalid(exc) from None


def invalid(exc: DataError) -> BadRequest:
    return BadRequest(f"invalid examples: {exc}", problems=exc.problems[:20])


def precheck(path: str, body: bytes, content_type: str | None) -> tuple[int, dict[str, str]] | None:
    """What BentoML's own input handling gets wrong or lets through: non-JSON bodies and
    unknown fields in /predict (a 500 or silently ignored), and the synchronous
    `POST /retrain` (retraining only runs as a queued job)."""
    if path == "/retrain":
        return 400, {
            "error": "POST /retrain is not available: retraining runs as a background job",
            "fix": "POST the examples to /retrain/submit and poll GET /jobs/{job_id}",
        }
    if path == "/predict":
        kind = (content_type or "application/json").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, {
                "error": f"unsupported content type {kind!r} for /predict",
                "fix": 'send application/json: {"texts": [...]}',
            }
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return None  # BentoML reports the JSON error
        if isinstance(payload, dict):
            unknown = sorted(set(payload) - PREDICT_FIELDS)
            if unknown:
                return 400, {
                    "error": f"unknown field(s) in /predict: {', '.join(map(repr, unknown[:5]))}",
                    "fix": 'send only {"texts": [...], "top_k": N, "model": "name"}',
                }
    return None
