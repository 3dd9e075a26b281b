"""`POST /models/{name}/batch`: a file under REFIT_BATCH_ROOT scored by a job
(service/batch_job.py); progress, cancel and retry (which resumes) are the job routes'."""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import APIRouter

from models import CorruptVersionError, validate_model_name
from service.batch import BatchError, default_output, input_format
from service.batch_job import KIND, OutsideRoot, under_root
from service.context import Ctx
from service.errors import BadRequest, Conflict, NotFound
from service.responses import JSONResponse
from service.schemas import BatchRequest, error_responses

log = logging.getLogger(__name__)
router = APIRouter()


@router.post(
    "/models/{name}/batch",
    status_code=202,
    responses=error_responses(400, 401, 404, 409, 413, 503),
)
async def submit_batch(ctx: Ctx, name: str, body: BatchRequest) -> Any:
    """Queue a job that scores every row of `input` with `version` (pinned now) and writes
    one answer per row to `output`, in resumable chunks; follow it with GET /jobs/{id}
    (auth required)."""
    validate_model_name(name)
    fix = "give a path relative to REFIT_BATCH_ROOT"
    try:
        source = under_root(ctx.settings.batch_root, body.input)
        output_name = body.output or default_output(body.input)
        output = under_root(ctx.settings.batch_root, output_name)
        input_format(body.input)
        exists = source.is_file()
    except (OutsideRoot, BatchError) as exc:
        raise BadRequest(str(exc), fix=fix) from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise BadRequest(
            f"{body.input[:200]!r} is not a usable path: {exc.strerror}", fix=fix
        ) from None
    if not exists:
        raise BadRequest(f"no file {body.input!r} under REFIT_BATCH_ROOT", fix=fix)
    if source == output:
        raise BadRequest("the output would overwrite the input", fix="choose another output")
    if not os.access(source, os.R_OK) or not os.access(output.parent, os.W_OK):
        raise BadRequest(
            f"the service cannot read {body.input!r} or write beside {output_name!r}",
            fix="fix the permissions under REFIT_BATCH_ROOT",
        )
    try:
        version = ctx.registry.resolve(name, body.version)
        ctx.registry.metadata(name, version)
    except LookupError as exc:
        raise NotFound(str(exc), fix="list versions with GET /models/{name}") from None
    except CorruptVersionError as exc:
        raise Conflict(str(exc), fix="score with another version") from None
    root = ctx.settings.batch_root.resolve()  # type: ignore[union-attr]
    request = {
        "kind": KIND,
        **body.model_dump(),
        "input": str(source.relative_to(root)),
        "output": str(output.relative_to(root)),
        "version": version,
    }
    job = ctx.store.jobs.create_task(name, request, owner_pid=os.getpid() if ctx.embedded else None)
    if ctx.embedded:
        ctx.spawn(ctx.runner.run(job.id))
    log.info("job %s queued: batch scoring with %s/%s", job.id, name, version)
    return JSONResponse(job.to_dict(), status_code=202)
