"""V2 server health and metadata (`/livez`, `/readyz` and `/healthz` are BentoML's own)."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import APIRouter

from service.context import Ctx
from service.errors import Unavailable
from service.schemas import error_responses

router = APIRouter()

try:
    VERSION = importlib.metadata.version("refit-service")
except importlib.metadata.PackageNotFoundError:  # a Bento or a bare checkout
    VERSION = "0.1.0"


@router.get("/v2")
def v2_server() -> dict[str, Any]:
    return {"name": "refit", "version": VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
def v2_live() -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready", responses=error_responses(503))
def v2_ready(ctx: Ctx) -> Any:
    if ctx.holder.model is None:
        raise Unavailable(ctx.holder.error or "no model loaded")
    return {"ready": True}
