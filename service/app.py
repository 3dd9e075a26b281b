"""The Refit BentoML service: only what BentoML needs on the class.

Run with `python -m service` (trains a first model when the registry is empty) or
`bentoml serve service.app:Refit`. Settings come from `REFIT_*` environment variables, read
once per process. Where things live: docs/architecture.md.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import bentoml

from service.api import api_routes, create_app
from service.auth import AccessRules
from service.context import Context, current_or_none
from service.middleware import (
    BoundedMetricsMiddleware,
    DeadlineMiddleware,
    ErrorShapeMiddleware,
    LimitsAndAuthMiddleware,
    PredictFastPath,
    RetrainSubmitMiddleware,
)
from service.monitor import Monitor
from service.schemas import Example, PredictResponse
from service.settings import Settings
from service.state import open_state

log = logging.getLogger(__name__)

# Read once at import: BentoML needs the worker count in the decorator below.
SETTINGS = Settings()
admin = create_app()


def warn_if_open(settings: Settings) -> bool:
    """Log a warning when writes need no token; True when they do not."""
    if settings.api_token is not None or settings.api_tokens_file is not None:
        return False
    log.warning(
        "REFIT_API_TOKEN is not set: retrain, promote, rollback, cancel and retry are open to"
        " anyone who can reach %s:%d; set a token of 8+ characters to require"
        " `Authorization: Bearer <token>`%s",
        settings.host,
        settings.port,
        " (REFIT_PREDICT_AUTH is on but has no token to check: inference is open too)"
        if settings.predict_auth
        else "",
    )
    return True


@bentoml.service(
    name="refit",
    workers=SETTINGS.workers,
    # BentoML's timeout keeps a timer per request — holding the request's context (spans
    # and all, ~4-10 KB) — until it expires, answered or not: an hour of that grew a worker
    # by ~0.2 MB/s under moderate load. The request deadline (DeadlineMiddleware) answers
    # first, so BentoML's only needs to be a little longer than it.
    traffic={
        "timeout": int(SETTINGS.request_timeout_s) + 5
        if SETTINGS.request_timeout_s
        else max(3600, int(SETTINGS.time_budget_s * 2))
    },
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    tracing={"excluded_urls": [] if SETTINGS.trace_predict else ["/predict"]},
    logging={"access": {"enabled": SETTINGS.access_log}},
)
@bentoml.asgi_app(admin, path="/")
class Refit:
    def __init__(self) -> None:
        self.context = Context(SETTINGS)
        self.monitor = Monitor(self.context, self.context.runner)

    def __is_ready__(self) -> bool:
        return self.context.ready()

    @bentoml.on_deployment
    def _reconcile_jobs() -> None:  # once, before any worker starts
        settings = Settings()
        warn_if_open(settings)
        store, registry = open_state(settings)  # migrates the store once, before the workers
        if settings.trainer == "embedded":  # `refit worker`s reap their own jobs
            interrupted = store.jobs.reconcile()
            if interrupted:
                log.warning("jobs interrupted by the last shutdown: %s", ", ".join(interrupted))
        removed = registry.clean_staging(settings.model_name)
        if removed:
            log.warning("removed unfinished staging folders: %s", ", ".join(removed))

    @bentoml.on_startup
    async def _watch_registry(self) -> None:
        self.monitor.start()

    @bentoml.api
    async def predict(
        self, texts: list[str], top_k: int = 1, model: str | None = None
    ) -> PredictResponse:
        """Classify texts; concurrent requests share one onnxruntime call. `model` names a
        model (default: REFIT_MODEL_NAME), loaded on its first request."""
        return await self.context.dataplane.classify(texts, top_k, model)

    @bentoml.task
    async def retrain(
        self,
        examples: list[Example] | None = None,
        strategy: Literal["auto", "feature_extraction", "fine_tuning"] = "auto",
        mode: Literal["append", "replace"] = "append",
        promote: Literal["auto", "always", "never", "shadow"] = "auto",
        job_id: str = "",
    ) -> dict[str, Any]:
        """Retrain on stored + new examples (mode=append) or on the new ones only (replace).

        The request is validated and stored before it is queued (4xx otherwise); the job
        runs in a separate trainer process, one at a time per model, in submit order.
        Progress: `GET /jobs/{job_id}` (the id is in the `X-Refit-Job-Id` header).
        """
        # Only `job_id` arrives (RetrainSubmitMiddleware stored the rest); the other
        # parameters describe the request body in the OpenAPI document.
        job = self.context.store.jobs.get_job(job_id) if job_id else None
        if job is None:
            return {"error": "no such job; submit examples to POST /retrain/submit"}
        return await self.context.runner.follow(job.id)


def _fast_predict() -> Any:
    ctx = current_or_none()
    return ctx.dataplane.classify if ctx is not None else None


def _keep_versions() -> Any:
    ctx = current_or_none()
    return ctx.versions_to_expose if ctx is not None else None


# First added runs first: the deadline around everything, then limits and auth before
# anything reads or stores the body; the fast path for /predict last, inside all of them.
_access = AccessRules(api_routes(), [(n, a.route, a.is_task) for n, a in Refit.apis.items()])
Refit.add_asgi_middleware(DeadlineMiddleware, settings=SETTINGS)
Refit.add_asgi_middleware(ErrorShapeMiddleware)
Refit.add_asgi_middleware(LimitsAndAuthMiddleware, settings=SETTINGS, scope=_access.scope)
Refit.add_asgi_middleware(RetrainSubmitMiddleware, settings=SETTINGS, context=current_or_none)
Refit.add_asgi_middleware(BoundedMetricsMiddleware, keep_versions=_keep_versions)
Refit.add_asgi_middleware(PredictFastPath, handler=_fast_predict)
