"""`/jobs`: retrain jobs, their progress, cancel and retry."""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import APIRouter

from service.context import Context, Ctx
from service.errors import Conflict, NotFound
from service.responses import JSONResponse
from service.schemas import error_responses
from service.stores import ACTIVE_STATES
from service.stores.schema import CANCELLED, FAILED, INTERRUPTED, QUEUED

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/jobs")
def list_jobs(ctx: Ctx, limit: int = 50, model: str | None = None) -> dict[str, Any]:
    """Retrain jobs of a model (default: REFIT_MODEL_NAME), newest first, with phase and
    fraction done."""
    limit = max(1, min(limit, 500))
    name = model or ctx.settings.model_name
    return {"jobs": [j.to_dict() for j in ctx.store.jobs.list_jobs(name, limit)]}


@router.post("/jobs/{job_id}/cancel", responses=error_responses(401, 404, 409, 413, 503))
def cancel_job(ctx: Ctx, job_id: str) -> Any:
    """Cancel a queued or running job; nothing is published (auth required)."""
    job = _job(ctx, job_id)
    if job.state not in ACTIVE_STATES:
        raise Conflict(f"job {job_id} already {job.state}; nothing to cancel")
    ctx.store.jobs.request_cancel(job_id)
    if job.state == QUEUED:
        ctx.store.jobs.finish(job_id, CANCELLED, error="cancelled before it started")
    return _job(ctx, job_id).to_dict()


@router.post(
    "/jobs/{job_id}/retry", status_code=202, responses=error_responses(401, 404, 409, 413, 503)
)
async def retry_job(ctx: Ctx, job_id: str) -> Any:
    """Run a failed, interrupted or cancelled job again on the same data (auth required)."""
    job = _job(ctx, job_id)
    if job.state not in (FAILED, INTERRUPTED, CANCELLED):
        raise Conflict(
            f"job {job_id} is {job.state}; only failed, interrupted or cancelled jobs can be retried",
        )
    retried = ctx.store.jobs.retry_job(job, owner_pid=os.getpid() if ctx.embedded else None)
    if ctx.embedded:
        ctx.spawn(ctx.runner.run(retried.id))
    log.info("job %s queued as a retry of %s", retried.id, job_id)
    return JSONResponse(retried.to_dict(), status_code=202)


@router.get("/jobs/{job_id}", responses=error_responses(404))
def get_job(ctx: Ctx, job_id: str) -> Any:
    return _job(ctx, job_id).to_dict()


def _job(ctx: Context, job_id: str) -> Any:
    job = ctx.store.jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", fix="list jobs with GET /jobs")
    return job
