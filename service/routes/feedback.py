"""`/feedback`: labeled examples from users, and the inputs worth labeling."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.multilabel import MultiDataset, stored_labels
from service import intake, metrics
from service.auth import label, private
from service.context import Ctx
from service.schemas import FeedbackRequest, error_responses

router = APIRouter()


@router.post("/feedback", responses=error_responses(400, 401, 413, 503))
@label
def feedback(ctx: Ctx, body: FeedbackRequest) -> Any:
    """Labeled examples from users (auth required), validated like retrain data and stored
    as pending; a trigger retrains on them (see `retrain_policy` in `GET /models`)."""
    name = body.model or ctx.settings.model_name
    intake.check_count(len(body.examples), ctx.settings, split="request")
    dataset = intake.validate([(e.text, e.target) for e in body.examples])
    kind = intake.model_kind(ctx.registry, ctx.store, name)
    intake.check_kind(name, dataset, kind, "its stored examples or production version")
    known = stored_labels(ctx.store.examples.dataset(name))
    ids = {e.text: e.prediction_id for e in body.examples}
    if isinstance(dataset, MultiDataset):
        sent, duplicates = set(dataset.classes), dataset.merged
        pairs = dataset.pairs()
    else:
        sent, duplicates = set(dataset.labels), dataset.duplicates_dropped
        pairs = list(zip(dataset.texts, dataset.labels, strict=True))
    intake.check_labels(known | sent, ctx.settings, trainable=False)
    rows = [(t, y, ids.get(t)) for t, y in pairs]
    _, pending = ctx.store.examples.add_feedback(name, rows)
    metrics.FEEDBACK_EXAMPLES.labels(name).inc(len(rows))
    metrics.FEEDBACK_PENDING.labels(name).set(pending)
    return {
        "accepted": len(rows),
        "duplicates_dropped": duplicates,
        "new_labels": sorted(sent - known),
        "pending": pending,
        "retrain_at_pending": ctx.policy(name).min_pending or None,
    }


@router.get("/feedback/uncertain", responses=error_responses(401))
@private
def uncertain(ctx: Ctx, limit: int = 50) -> dict[str, Any]:
    """The inputs worth labeling (auth required): those answered out of scope first, then
    the newest low-confidence ones. The text is kept only with
    REFIT_STORE_UNCERTAIN_TEXTS=true; otherwise its sha256."""
    limit = max(1, min(limit, 1000))
    model = ctx.holder.model
    oos = model.out_of_scope_label if model is not None and model.detector else None
    return {
        "threshold": ctx.settings.uncertain_below,
        "texts_stored": ctx.settings.store_uncertain_texts,
        "inputs": ctx.store.telemetry.uncertain(
            ctx.settings.model_name, limit, out_of_scope_label=oos
        ),
    }
