"""`/models/{name}/queue` and `/models/{name}/pool`: the labeling queue of every model.

Reads show stored texts, so every route here needs the token (`@private` on the reads).
Answers are feedback linked to the item's prediction id (live accuracy, shadow judging,
triggers use them). Logic: service/labeling.py; state: service/stores/queue.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from models import validate_model_name
from models.data import DataError
from models.unlabeled import parse_texts
from service import intake, labeling, metrics
from service.auth import label, private
from service.context import Ctx
from service.errors import NotFound
from service.schemas import QueueAnswers, QueueNext, QueueUndo, error_responses
from service.stores.queue import QueueError

router = APIRouter()
REFRESH_S = 2.0  # scoring a request may do before it ranks (the background poll does the rest)
POOL_TYPES = ("text/csv", "application/x-ndjson", "application/jsonl", "application/json")


@router.get("/models/{name}/queue", responses=error_responses(400, 401, 404, 503))
@private
async def queue_view(ctx: Ctx, name: str, limit: int = 20) -> Any:
    """The open items worth a label first (auth required: stored texts), without leasing
    them; `counts` per state. Items come from served traffic (the model's `store_texts`
    setting) and uploaded pools (POST /models/{name}/pool)."""
    validate_model_name(name)
    model = await labeling.refresh(ctx, name, budget_s=REFRESH_S)
    strategy, ids = await asyncio.to_thread(
        labeling.ranked, ctx, name, model, max(1, min(limit, 500))
    )
    return {
        **_header(ctx, name, model, strategy),
        "items": await asyncio.to_thread(ctx.store.queue.items, name, ids),
    }


@router.post("/models/{name}/queue/next", responses=error_responses(400, 401, 404, 413, 503))
@label
async def queue_next(ctx: Ctx, name: str, body: QueueNext) -> Any:
    """Lease the next `count` items to `annotator` for `lease_s` (auth required): another
    annotator gets other items meanwhile. Answer with POST /models/{name}/queue/answers and
    the returned `lease`."""
    validate_model_name(name)
    model = await labeling.refresh(ctx, name, budget_s=REFRESH_S)
    strategy, ids = await asyncio.to_thread(
        labeling.ranked, ctx, name, model, body.count + 50, owner=body.annotator
    )
    token, leased = await asyncio.to_thread(
        ctx.store.queue.lease, name, ids, body.annotator, seconds=body.lease_s, limit=body.count
    )
    return {
        **_header(ctx, name, model, strategy),
        "lease": token,
        "lease_until": time.time() + body.lease_s,
        "items": await asyncio.to_thread(ctx.store.queue.items, name, leased),
    }


@router.post(
    "/models/{name}/queue/answers", responses=error_responses(400, 401, 404, 409, 413, 503)
)
@label
def queue_answers(ctx: Ctx, name: str, body: QueueAnswers) -> Any:
    """Answer or skip items (auth required), all or none: 404 for an item that does not
    exist, 409 for one already answered or leased to another annotator. A label the model
    does not have is refused unless the answer says `new_label: true`."""
    validate_model_name(name)
    answers = labeling.check_answers(ctx, name, body.answers)
    try:
        pending = ctx.store.queue.answer(name, answers, annotator=body.annotator, token=body.lease)
    except QueueError as exc:
        raise labeling.as_api_error(exc) from None
    labeled = sum(a.label is not None for a in answers)
    metrics.FEEDBACK_EXAMPLES.labels(name).inc(labeled)
    metrics.FEEDBACK_PENDING.labels(name).set(pending)
    return {
        "answered": labeled,
        "skipped": len(answers) - labeled,
        "pending": pending,
        "retrain_at_pending": ctx.policy(name).min_pending or None,
    }


@router.post(
    "/models/{name}/queue/{item}/undo", responses=error_responses(400, 401, 404, 409, 413, 503)
)
@label
def queue_undo(ctx: Ctx, name: str, item: int, body: QueueUndo) -> Any:
    """Reopen an answered or skipped item and lease it back to `annotator` (auth required);
    its feedback is removed, unless a retrain already used it (409)."""
    validate_model_name(name)
    try:
        token, pending = ctx.store.queue.undo(name, item, body.annotator, seconds=body.lease_s)
    except QueueError as exc:
        raise labeling.as_api_error(exc) from None
    metrics.FEEDBACK_PENDING.labels(name).set(pending)
    return {
        "lease": token,
        "pending": pending,
        "items": ctx.store.queue.items(name, [item]),
    }


@router.post(
    "/models/{name}/pool",
    responses=error_responses(400, 401, 404, 413, 415, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                        "required": ["texts"],
                    }
                },
            },
        }
    },
)
@label
async def upload_pool(ctx: Ctx, name: str, request: Request) -> Any:
    """Unlabeled texts for the queue (auth required): CSV with a `text` column, JSONL
    objects with `text`, or JSON `{"texts": [...]}`; checked like retrain texts, within
    REFIT_MAX_EXAMPLES_PER_REQUEST, de-duplicated (also against what is queued already)."""
    validate_model_name(name)
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    fmt = intake.UPLOAD_TYPES.get(kind) if kind in POOL_TYPES else None
    if fmt is None:
        raise intake.UnsupportedType(
            f"unsupported content type {kind!r} for a pool",
            fix="send text/csv (a `text` column), application/x-ndjson or application/json",
        )
    if not ctx.registry.list_versions(name) and not ctx.store.examples.dataset(name):
        raise NotFound(f"no model {name!r}", fix="train it first: POST /retrain/submit")
    body = await request.body()
    try:
        texts, duplicates = parse_texts(body, fmt)
    except DataError as exc:
        raise intake.invalid(exc) from None
    intake.check_count(len(texts), ctx.settings, split="upload")
    added = await asyncio.to_thread(
        ctx.store.queue.add, name, [{"text": t, "source": "pool"} for t in texts]
    )
    return {
        "model": name,
        "accepted": added,
        "already_queued": len(texts) - added,
        "duplicates_dropped": duplicates,
    }


def _header(ctx: Ctx, name: str, model: Any, strategy: str) -> dict[str, Any]:
    return {
        "model": name,
        "version": model.version,
        "strategy": strategy,
        "labels": list(model.labels),
        "multi_label": model.multi_label,
        "out_of_scope_label": model.out_of_scope_label,
        "counts": ctx.store.queue.counts(name, model.version, now=time.time()),
    }
