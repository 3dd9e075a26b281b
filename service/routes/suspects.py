"""`/models/{name}/versions/{version}/suspects`: label-error hints of a version (training
examples whose label its out-of-fold probe doubts, training/suspects.py), to confirm or
relabel. A review is feedback: the latest label of a text wins at the next retrain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models import RegistryError, validate_model_name
from models._metadata import ModelMetadata
from service import labeling, metrics
from service.auth import label, private
from service.context import Context, Ctx
from service.errors import BadRequest, NotFound
from service.schemas import SuspectReview, error_responses

router = APIRouter()


@router.get("/models/{name}/versions/{version}/suspects", responses=error_responses(400, 401, 404))
@private
def suspects(ctx: Ctx, name: str, version: str) -> Any:
    """The version's label-error hints, most likely first (auth required: training texts),
    each with `index`, the label it was trained with, the suggested one and, when reviewed
    since, the label sent (`reviewed`)."""
    validate_model_name(name)
    meta = _metadata(ctx, name, version)
    found = meta.suspects or []
    reviewed = ctx.store.examples.feedback_since(
        name, [s.text for s in found], meta.created_at.timestamp()
    )
    return {
        "model": name,
        "version": meta.version,
        "computed": meta.suspects is not None,
        "training_examples": meta.data.train_count,
        "suspects": [
            {"index": i, **s.model_dump(), "reviewed": reviewed.get(s.text)}
            for i, s in enumerate(found)
        ],
    }


@router.post(
    "/models/{name}/versions/{version}/suspects/{index}",
    responses=error_responses(400, 401, 404, 413, 503),
)
@label
def review(ctx: Ctx, name: str, version: str, index: int, body: SuspectReview) -> Any:
    """Confirm the label (stored again as feedback) or relabel the example (auth required);
    a label the model does not have needs `new_label: true`."""
    validate_model_name(name)
    meta = _metadata(ctx, name, version)
    found = meta.suspects or []
    if not 0 <= index < len(found):
        raise NotFound(
            f"version {meta.version} of {name!r} has {len(found)} suspect(s), no index {index}",
            fix=f"list them: GET /models/{name}/versions/{meta.version}/suspects",
        )
    suspect = found[index]
    label = suspect.label if body.action == "confirm" else body.label
    assert label is not None
    known, _ = labeling.known_labels(ctx, name)
    if label not in known and not body.new_label:
        raise BadRequest(
            f"{label!r} is not a label of model {name!r}",
            fix="pick one of its labels, or send `new_label: true` to create a class",
        )
    _, pending = ctx.store.examples.add_feedback(name, [(suspect.text, label, None)])
    metrics.FEEDBACK_EXAMPLES.labels(name).inc()
    metrics.FEEDBACK_PENDING.labels(name).set(pending)
    return {"index": index, "text": suspect.text, "label": label, "pending": pending}


def _metadata(ctx: Context, name: str, version: str) -> ModelMetadata:
    try:
        return ctx.registry.get(name, ctx.registry.resolve(name, version)).metadata
    except (LookupError, RegistryError) as exc:
        raise NotFound(str(exc), fix=f"list versions: GET /models/{name}") from None
