"""Batch scoring as a job: `POST /models/{name}/batch` queues it (service/routes/batch.py),
the trainer process (embedded) or a `refit worker` (fleet) runs it here with the engine of
service/batch.py. Paths are stored relative to REFIT_BATCH_ROOT and resolved against the
runner's own root, so every machine of a fleet reads the same shared folder where it is
mounted. A job that was interrupted (a crash, a lost worker) and retried
(`POST /jobs/{id}/retry`) resumes from its finished chunks; so does a cancelled one."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from service.batch import BatchSpec, score_file

log = logging.getLogger(__name__)

KIND = "batch"


class OutsideRoot(ValueError):
    """A path that is not inside REFIT_BATCH_ROOT (or no root is configured)."""


def under_root(root: Path | None, relative: str) -> Path:
    """`relative` inside `root` (symbolic links resolved), or OutsideRoot saying why."""
    if root is None:
        raise OutsideRoot(
            "batch scoring over the API is off: REFIT_BATCH_ROOT is not set; set it to the"
            " folder the service may read inputs from and write results to (or use"
            " `refit predict` on the command line)"
        )
    if relative.startswith("s3://"):
        raise OutsideRoot(
            "s3:// inputs are not supported yet; copy the file under REFIT_BATCH_ROOT (or"
            " mount the bucket there)"
        )
    base = root.resolve()
    try:
        path = (base / relative).resolve()
    except (ValueError, OSError) as exc:  # a NUL byte, a name too long, a link loop
        raise OutsideRoot(f"{relative[:200]!r} is not a usable path: {exc}") from None
    if not path.is_relative_to(base) or path == base:
        raise OutsideRoot(
            f"{relative!r} is outside REFIT_BATCH_ROOT; give a path relative to it, without"
            " `..` or links out of it"
        )
    return path


def run_batch_job(job: Any, settings: Any, registry: Any, cancel, progress) -> dict:
    """Score the job's file; returns the job's result (raises BatchError, BatchCancelled)."""
    from service.loading import load_model

    request = job.request
    source = under_root(settings.batch_root, request["input"])
    output = under_root(settings.batch_root, request["output"])
    mv = registry.verify(job.model, request["version"])
    model = load_model(
        mv,
        threads=settings.trainer_threads,
        graph_optimization=settings.graph_optimization,
        device=settings.device,
        allow_int8=settings.quantize != "never",
    )
    spec = BatchSpec(
        model=job.model,
        version=mv.version,
        source=str(source),
        output=str(output),
        top_k=request["top_k"],
        chunk_rows=request["chunk_rows"],
        on_error=request["on_error"],
    )
    started = time.perf_counter()

    def report(rows: int, total: int | None) -> None:
        fraction = min(rows / total, 0.99) if total else 0.0
        progress("scoring", fraction, f"{rows} rows scored or resumed")

    names = (request["input"], request["output"])
    result = score_file(spec, model, progress=report, cancel=cancel, names=names)
    seconds = time.perf_counter() - started
    log.info(
        "job %s: %d rows, %d scored, %d refused", job.id, result.rows, result.scored, result.errors
    )
    root = settings.batch_root.resolve()
    return {
        "kind": KIND,
        "model": job.model,
        "scored_version": mv.version,
        "graph": model.graph,
        **result.to_dict(),
        "output": str(Path(result.output).relative_to(root)),
        "errors_file": (
            str(Path(result.errors_file).relative_to(root)) if result.errors_file else None
        ),
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.scored / seconds, 1) if seconds else None,
    }
