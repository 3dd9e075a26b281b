"""`/models`: list and show models, promote, roll back, delete, per-model settings."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from fastapi import APIRouter

from models import RegistryError, RegistryUnavailable, validate_model_name
from models.multilabel import stored_labels
from service.context import Context, Ctx
from service.errors import BadRequest, Conflict, NotFound
from service.intake import check_backbone
from service.responses import JSONResponse
from service.schemas import ModelSettings, PromoteRequest, error_responses
from service.stores import ACTIVE_STATES
from service.views import model_summary, model_view

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/models")
def list_models(ctx: Ctx) -> dict[str, Any]:
    """The default model (REFIT_MODEL_NAME): versions with metadata, the aliases, and
    what this worker serves; `models` lists every model (GET /models/{name} for one)."""
    view = model_view(ctx, ctx.settings.model_name)
    try:
        names = ctx.registry.list_models()
    except RegistryUnavailable:
        names = [ctx.settings.model_name]
    summaries = [model_summary(ctx, n) for n in sorted(set(names) | {view["model"]})]
    view["models"] = [m for m in summaries if m["production"] or m["default"]]
    view["pool"] = ctx.pool.view()  # this worker's loaded models
    return view


@router.get("/models/{name}", responses=error_responses(400, 404))
def get_model(ctx: Ctx, name: str) -> Any:
    """One model: versions, aliases, what this worker serves of it, readiness."""
    validate_model_name(name)
    view = model_view(ctx, name)
    if not view["versions"] and not ctx.is_default(name):
        raise NotFound(f"no model {name!r}", fix="list models with GET /models")
    return view


@router.post(
    "/models/promote",
    responses={
        202: {
            "description": "the registry is unreachable: promoted without checking the"
            " files; replicas verify and load it once they can fetch it"
        },
        **error_responses(400, 401, 404, 409, 413, 503),
    },
)
def promote(ctx: Ctx, body: PromoteRequest) -> Any:
    """Make a version production (auth required when REFIT_API_TOKEN is set)."""
    return _promote(ctx, ctx.settings.model_name, body)


@router.post("/models/{name}/promote", responses=error_responses(400, 401, 404, 409, 413, 503))
def promote_named(ctx: Ctx, name: str, body: PromoteRequest) -> Any:
    """Make a version of model `name` production (auth required)."""
    validate_model_name(name)
    return _promote(ctx, name, body)


@router.post("/models/{name}/rollback", responses=error_responses(400, 401, 404, 409, 413, 503))
def rollback_named(ctx: Ctx, name: str) -> Any:
    """Swap production and previous of model `name` (auth required)."""
    validate_model_name(name)
    return _rollback(ctx, name)


@router.delete("/models/{name}", responses=error_responses(400, 401, 404, 409, 413, 503))
def delete_model(ctx: Ctx, name: str) -> Any:
    """Delete a model: its versions, aliases, stored examples, jobs and overrides (auth
    required). Refused for the service's default model and while a job of it is queued
    or running."""
    validate_model_name(name)
    if ctx.is_default(name):
        raise Conflict(
            f"{name!r} is this service's default model (REFIT_MODEL_NAME)",
            fix="serve another default model first",
        )
    active = [j.id for j in ctx.store.jobs.list_jobs(name, 500) if j.state in ACTIVE_STATES]
    if active:
        raise Conflict(
            f"model {name!r} has {len(active)} job(s) queued or running: {', '.join(active)}",
            fix="cancel them (POST /jobs/{id}/cancel) or wait, then delete",
        )
    if not ctx.registry.list_versions(name) and not ctx.registry.aliases(name):
        raise NotFound(f"no model {name!r}", fix="list models with GET /models")
    versions = ctx.registry.delete_model(name)
    removed = ctx.store.delete_model(name)
    log.info("model %s deleted: %d versions, %s", name, len(versions), removed)
    return {"model": name, "deleted_versions": versions, "deleted_rows": removed}


@router.put("/models/{name}/settings", responses=error_responses(400, 401, 404, 413, 503))
def put_settings(ctx: Ctx, name: str, body: ModelSettings) -> Any:
    """Per-model overrides of the strategy thresholds, the time budget, the promotion
    tolerance and the triggers (auth required); `null` restores the REFIT_* value.
    Stored with the model in the shared store: every replica and trainer uses them."""
    validate_model_name(name)
    changes = body.model_dump(exclude_unset=True)
    effective = {
        **ctx.effective_settings(name)["effective"],
        **{k: v for k, v in changes.items() if v is not None},
    }
    if effective["feature_extraction_below"] > effective["fine_tuning_at"]:
        raise BadRequest(
            "feature_extraction_below must not exceed fine_tuning_at"
            f" ({effective['feature_extraction_below']} > {effective['fine_tuning_at']})",
        )
    if changes.get("backbone") is not None:
        check_backbone(changes["backbone"], ctx.settings)
    label = changes.get("out_of_scope_label")
    if label is not None:
        _check_out_of_scope_label(ctx, name, label)
    ctx.store.model_settings.update(name, changes)
    return {"model": name, **ctx.effective_settings(name)}


def _check_out_of_scope_label(ctx: Context, name: str, label: str) -> None:
    """The out-of-scope label must not be one of the model's classes (in its stored
    examples or its production version): those examples would silently stop being one."""
    classes = stored_labels(ctx.store.examples.dataset(name))
    with contextlib.suppress(LookupError, RegistryError):
        production = ctx.registry.resolve(name, "production")
        classes |= set(ctx.registry.get(name, production).metadata.labels)
    if label in classes:
        raise BadRequest(
            f"out_of_scope_label {label!r} is a class of model {name!r}",
            fix="choose a name that is no class (default: out_of_scope)",
        )


@router.post("/models/rollback", responses=error_responses(401, 409, 413, 503))
def rollback(ctx: Ctx) -> Any:
    """Swap production and previous (auth required when REFIT_API_TOKEN is set)."""
    return _rollback(ctx, ctx.settings.model_name)


def _promote(ctx: Context, name: str, body: PromoteRequest) -> Any:
    shadow = ctx.registry.aliases(name).get("shadow")
    try:
        aliases = ctx.registry.promote(name, body.version)
        if shadow is not None and aliases.get("production") == shadow:
            ctx.store.telemetry.record_shadow_decision(
                name,
                {
                    "version": shadow,
                    "outcome": "promoted",
                    "reason": "promoted on request (POST /models/promote)",
                    "at": time.time(),
                },
            )
    except RegistryUnavailable as exc:
        # The alias is the database's; the files are checked by every replica before it
        # loads them, so the promotion can wait for the registry to come back.
        try:
            aliases = ctx.registry.promote(name, body.version, verify=False)
        except LookupError as bad:
            raise NotFound(str(bad)) from None
        return JSONResponse(
            {
                "model": name,
                **aliases,
                "warning": f"promoted without checking the files: {exc}; replicas load"
                " it once they can fetch and verify it (GET /models: serving.fetch_error)",
            },
            status_code=202,
        )
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    return {"model": name, **aliases}


def _rollback(ctx: Context, name: str) -> Any:
    try:
        aliases = ctx.registry.rollback(name)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    except RegistryError as exc:
        raise Conflict(str(exc)) from None
    return {"model": name, **aliases}
