"""`/models/{name}/shadow` (and `/models/shadow` for the default model): a challenger
scoring a sample of a model's live traffic beside its production."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from models import RegistryError, validate_model_name
from service.context import Context, Ctx
from service.errors import Conflict, NotFound
from service.schemas import PromoteRequest, error_responses

router = APIRouter()


@router.post("/models/shadow", responses=error_responses(400, 401, 404, 409, 413, 503))
def start_shadow(ctx: Ctx, body: PromoteRequest) -> Any:
    """Load a version beside the default model's production to score a sample of live
    traffic (REFIT_SHADOW_FRACTION) without answering anyone; it is promoted once it is not
    worse on REFIT_SHADOW_MIN_LABELED linked feedback examples (auth required)."""
    return _start(ctx, ctx.settings.model_name, body)


@router.post("/models/{name}/shadow", responses=error_responses(400, 401, 404, 409, 413, 503))
def start_model_shadow(ctx: Ctx, name: str, body: PromoteRequest) -> Any:
    """As POST /models/shadow, for model `name` (auth required)."""
    validate_model_name(name)
    return _start(ctx, name, body)


@router.post("/models/shadow/stop", responses=error_responses(401, 409, 413, 503))
def stop_shadow(ctx: Ctx) -> Any:
    """Stop shadow scoring without promoting (auth required)."""
    return _stop(ctx, ctx.settings.model_name)


@router.post("/models/{name}/shadow/stop", responses=error_responses(400, 401, 404, 409, 413, 503))
def stop_model_shadow(ctx: Ctx, name: str) -> Any:
    """As POST /models/shadow/stop, for model `name` (auth required)."""
    validate_model_name(name)
    return _stop(ctx, name)


def _start(ctx: Context, name: str, body: PromoteRequest) -> Any:
    try:
        aliases = ctx.registry.shadow(name, body.version)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    return {"model": name, **aliases}


def _stop(ctx: Context, name: str) -> Any:
    shadow = ctx.registry.aliases(name).get("shadow")
    aliases = ctx.registry.end_shadow(name, shadow, promote=False) if shadow else None
    if aliases is None:
        raise Conflict(f"model {name!r} has no shadow version")
    ctx.store.telemetry.record_shadow_decision(
        name,
        {
            "version": shadow,
            "outcome": "dropped",
            "reason": "stopped on request",
            "at": time.time(),
        },
    )
    return {"model": name, **aliases}
