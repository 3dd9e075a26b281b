"""`/models/{name}/canary`: a version answering a share of a model's callers beside
production, judged by the rule in service/canary.py or ended by hand."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from models import RegistryError, validate_model_name
from service import canary
from service.context import Ctx
from service.errors import Conflict, NotFound
from service.schemas import CanaryRequest, error_responses

router = APIRouter()


@router.post("/models/{name}/canary", responses=error_responses(400, 401, 404, 409, 413, 503))
def start_canary(ctx: Ctx, name: str, body: CanaryRequest) -> Any:
    """Let a version answer `fraction` of the model's callers (sticky per
    `X-Refit-Route-Key`); it is promoted or rolled back by the documented rule once enough
    linked feedback is in (auth required). Replaces an earlier canary."""
    validate_model_name(name)
    try:
        aliases = ctx.registry.shadow(name, body.version, alias="canary")
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    if body.fraction is not None:
        ctx.store.model_settings.update(name, {"canary_fraction": body.fraction})
    started = {"version": aliases["canary"], "outcome": "started", "at": time.time()}
    ctx.store.telemetry.record_shadow_decision(name, started, alias="canary")
    return {"model": name, **aliases, "fraction": ctx.settings_for(name).canary_fraction}


@router.post("/models/{name}/canary/stop", responses=error_responses(400, 401, 404, 409, 413, 503))
def stop_canary(ctx: Ctx, name: str) -> Any:
    """Roll the canary back now: production answers every caller (auth required)."""
    validate_model_name(name)
    version = ctx.registry.aliases(name).get("canary")
    decision = canary.end(ctx, name, version, False, "stopped on request") if version else None
    if decision is None:
        raise Conflict(f"model {name!r} has no canary version")
    return {"model": name, **ctx.registry.aliases(name), "decision": decision}
