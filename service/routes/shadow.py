"""`/models/shadow`: a challenger scoring a sample of live traffic beside production."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from models import RegistryError
from service.context import Ctx
from service.errors import Conflict, NotFound
from service.schemas import PromoteRequest, error_responses

router = APIRouter()


@router.post("/models/shadow", responses=error_responses(400, 401, 404, 409, 413, 503))
def start_shadow(ctx: Ctx, body: PromoteRequest) -> Any:
    """Load a version beside production to score a sample of live traffic
    (REFIT_SHADOW_FRACTION) without answering anyone; it is promoted once it is not
    worse on REFIT_SHADOW_MIN_LABELED linked feedback examples (auth required)."""
    name = ctx.settings.model_name
    try:
        aliases = ctx.registry.shadow(name, body.version)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    return {"model": name, **aliases}


@router.post("/models/shadow/stop", responses=error_responses(401, 409, 413, 503))
def stop_shadow(ctx: Ctx) -> Any:
    """Stop shadow scoring without promoting (auth required)."""
    name = ctx.settings.model_name
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
