"""The Open Inference Protocol V2 (REST) over the data plane that also answers `/predict`
(`@bentoml.api predict` in service/app.py, and the fast path): metadata, readiness and
`infer` per model and version. Protocol details: service/v2.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from models import CorruptVersionError, RegistryError, RegistryUnavailable, validate_model_name
from service import v2
from service.auth import public
from service.context import Context, Ctx
from service.dataplane import answer_labels
from service.errors import ApiError, NotFound, Unavailable, retry_later
from service.pool import ModelLoadError, UnknownModel
from service.schemas import error_responses

router = APIRouter()


@router.get("/v2/models/{name}", responses=error_responses(400, 404, 503))
def v2_metadata(ctx: Ctx, name: str) -> Any:
    return _metadata(ctx, name, None)


@router.get("/v2/models/{name}/versions/{version}", responses=error_responses(400, 404, 503))
def v2_version_metadata(ctx: Ctx, name: str, version: str) -> Any:
    return _metadata(ctx, name, version)


@router.get("/v2/models/{name}/ready", responses=error_responses(400, 404, 503))
async def v2_model_ready(ctx: Ctx, name: str) -> Any:
    return await _ready(ctx, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", responses=error_responses(400, 404, 503))
async def v2_version_ready(ctx: Ctx, name: str, version: str) -> Any:
    return await _ready(ctx, name, version)


@router.post("/v2/models/{name}/infer", responses=error_responses(400, 404, 413, 503))
@public
async def v2_infer(ctx: Ctx, name: str, request: Request) -> Any:
    return await _infer(ctx, name, None, request)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    responses=error_responses(400, 404, 413, 503),
)
@public
async def v2_version_infer(ctx: Ctx, name: str, version: str, request: Request) -> Any:
    return await _infer(ctx, name, version, request)


def _metadata(ctx: Context, name: str, version: str | None) -> Any:
    validate_model_name(name)
    try:
        target = version or ctx.registry.resolve(name, "production")
        meta = ctx.registry.get(name, target).metadata
        versions = ctx.registry.list_versions(name)
    except RegistryUnavailable as exc:
        raise retry_later(str(exc)) from None
    except (RegistryError, LookupError, FileNotFoundError, CorruptVersionError):
        what = f"{name}/{version}" if version else f"a production version of {name!r}"
        raise NotFound(f"no {what}") from None
    return v2.metadata(name, versions, list(meta.labels), multi_label=meta.task == "multi_label")


async def _ready(ctx: Context, name: str, version: str | None) -> Any:
    validate_model_name(name)
    if ctx.is_default(name) and version is None:
        if ctx.holder.model is None:
            raise Unavailable("not ready")
    else:
        try:
            ctx.pool.release(await ctx.pool.acquire(name, version))
        except UnknownModel as exc:
            raise NotFound(str(exc)) from None
        except (ModelLoadError, RegistryUnavailable) as exc:
            raise Unavailable(str(exc)) from None
    return {"name": name, "ready": True}


async def _infer(ctx: Context, name: str, version: str | None, request: Request) -> Any:
    validate_model_name(name)
    parsed = v2.parse_infer(  # V2Error (an ApiError) answers what is wrong
        await request.body(), request.headers.get("inference-header-content-length")
    )
    texts = parsed["texts"]
    try:
        ctx.dataplane.check(texts, parsed["top_k"])
        served, scored, _, _ = await ctx.dataplane.infer(texts, name, version)
    except ApiError as refused:
        return refused.response(bare=True)
    try:
        answer = v2.infer_response(
            parsed, name, served.version, served.labels, scored, served.out_of_scope_label
        )
    except ApiError as refused:
        return refused.response(bare=True)
    for k in range(len(texts)):
        for label in answer_labels(served, scored, k):
            ctx.dataplane.counter(served, label).inc()
    return answer
