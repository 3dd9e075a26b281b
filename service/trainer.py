"""The trainer process: `python -m service.trainer JOB_ID` runs one retrain job.

It is a separate OS process from every inference worker, so torch never loads there and a
long job never stalls predictions. It reads the job and its data from the store, reports
progress back to it, publishes a version, applies the promotion gate and records the result.
If it dies, the version is either fully published or absent, and `JobStore.reconcile` marks
the job interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

from models import Metrics
from models.multilabel import from_store
from service.settings import Settings
from service.state import open_state
from service.stores import StoreUnavailable
from service.stores.schema import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

log = logging.getLogger(__name__)


def train_config(settings: Settings, *, name: str, **overrides: Any) -> Any:
    """The one mapping from REFIT_* settings (with a model's overrides already applied) to a
    TrainConfig: used by retrain jobs, the first start and `refit train`."""
    from training import PolicyThresholds, TrainConfig

    values: dict[str, Any] = {
        "name": name,
        "threads": settings.trainer_threads,
        "contrastive_steps": settings.contrastive_steps,
        "quantize": settings.quantize,
        "fp16": settings.fp16,
        "min_steps": settings.fine_tuning_min_steps,
        "cache_dir": settings.root / ".cache",
        "promotion_tolerance": settings.promotion_tolerance,
        "out_of_scope": settings.out_of_scope,
        "out_of_scope_label": settings.out_of_scope_label,
        "out_of_scope_target_recall": settings.out_of_scope_target_recall,
        "thresholds": PolicyThresholds(
            feature_extraction_below=settings.feature_extraction_below,
            fine_tuning_at=settings.fine_tuning_at,
            time_budget_s=settings.time_budget_s,
        ),
    }
    return TrainConfig(**{**values, **overrides})


def backbone_options(settings: Settings, name: str) -> dict[str, Any]:
    """TrainConfig options for a backbone name (`auto`: every allowed one, cheapest
    first); ValueError, saying how to fix it, for one this trainer does not have."""
    from models.backbones import SHIPPED

    names = settings.allowed_backbones if name == "auto" else [name]
    if name != "auto" and name not in settings.allowed_backbones:
        raise ValueError(
            f"backbone {name!r} is not in REFIT_BACKBONES of this trainer"
            f" (allowed: {', '.join(settings.allowed_backbones)}, auto)"
        )
    folders = {n: settings.backbone_folder(n) for n in names}
    for n, folder in folders.items():
        if folder is not None and not folder.is_dir():
            how = f"`refit backbones install {n}`" if n in SHIPPED else "the folder"
            raise ValueError(f"backbone {n!r}: {folder} does not exist; install it with {how}")
    if name != "auto" or len(names) == 1:
        return {"backbone": folders[names[0]]}
    return {
        "backbone_choices": tuple(folders.items()),
        "max_p50_ms": settings.max_p50_ms,
    }


def _metric_summary(m: Metrics | None) -> dict[str, Any] | None:
    return None if m is None else {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "count": m.count}


def _finish_durably(store, job_id: str, state: str, *, worker: str | None, **kwargs: Any) -> None:
    """A job's outcome must reach the store: retry through an outage of the database
    (up to ~10 minutes) rather than lose a result that was already published."""
    delay = 0.5
    for _ in range(120):
        try:
            store.jobs.finish(job_id, state, worker=worker, **kwargs)
            return
        except StoreUnavailable as exc:
            log.warning("job %s: result not recorded yet (%s); retrying", job_id, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise StoreUnavailable(f"job {job_id}: the store stayed unavailable; result lost")


def run_job(job_id: str, settings: Settings, worker: str | None = None) -> int:
    """Run one job. With `worker`, the job was claimed by that `refit worker` (state
    `running`), and the trainer stops — publishing nothing — as soon as the worker no longer
    holds it (reaped after missed heartbeats, or cancelled)."""
    store, registry = open_state(settings)
    job = store.jobs.get_job(job_id)
    if job is None:
        log.error("job %s not found", job_id)
        return 2
    if worker is not None:
        if job.state != RUNNING or job.worker != worker:
            log.error("job %s is %s, held by %s, not by %s", job_id, job.state, job.worker, worker)
            return 2
    elif job.cancel_requested or job.state != QUEUED:
        store.jobs.finish(job_id, CANCELLED, error="cancelled before it started")
        return 0
    else:
        store.jobs.mark_running(job_id, os.getpid())
    request = job.request
    last: dict[str, Any] = {"t": 0.0, "phase": "", "cancel_t": 0.0, "cancel": False}

    def progress(event) -> None:
        now = time.monotonic()
        if now - last["t"] >= 0.5 or event.phase != last["phase"]:
            last["t"], last["phase"] = now, event.phase
            try:
                store.jobs.set_progress(job_id, event.phase, event.fraction, event.message)
            except StoreUnavailable as exc:  # progress is best effort; the result is not
                log.warning("job %s: progress not recorded: %s", job_id, exc)

    def cancel() -> bool:
        now = time.monotonic()
        # checked afresh right before publishing: a job that lost its worker never publishes
        if now - last["cancel_t"] >= 1.0 or last["phase"] == "publishing":
            last["cancel_t"] = now
            try:
                if worker is not None:
                    last["cancel"] = not store.workers.holds(job_id, worker)
                else:
                    last["cancel"] = store.jobs.cancel_requested(job_id)
            except StoreUnavailable:
                # cannot tell: go on training, but never publish without knowing
                last["cancel"] = last["phase"] == "publishing"
        return bool(last["cancel"])

    if request.get("kind") == "batch":  # scoring a file, not training: no torch
        return _run_batch(job, settings, store, registry, worker, progress, cancel)

    from training import Cancelled, DataError
    from training.pipeline import train
    from training.promotion import promote_candidate

    try:
        data = from_store(store.examples.dataset(job.model, upto_batch=job.batch_id))
        # the model's overrides (PUT /models/{name}/settings) over the REFIT_* settings
        settings = settings.model_copy(update=store.model_settings.get(job.model))
        config = train_config(
            settings,
            name=job.model,
            **backbone_options(settings, request.get("backbone") or settings.backbone),
            strategy=request.get("strategy", "auto"),
        )
        result = train(
            data,
            config,
            registry=registry,
            progress=progress,
            cancel=cancel,
            extra_metadata={"job_id": job_id},
        )
        meta = result.metadata
        decided = promote_candidate(
            registry,
            meta,
            result.validation,
            mode=request.get("promote", "auto"),
            tolerance=settings.promotion_tolerance,
            outside=result.outside,
            via_shadow=settings.promote_via_shadow,
            shadow_note=f"; in shadow: scores {settings.shadow_fraction:.0%} of live requests and"
            f" is promoted when not worse than production on {settings.shadow_min_labeled}"
            " linked feedback examples (or on an explicit promote)",
        )
        promote, shadow, why = decided.promoted, decided.shadow, decided.reason
        champion_m = decided.champion
        previous = (
            registry.get(job.model, decided.champion_version).metadata.strategy
            if decided.champion_version
            else None
        )
        outcome = {
            "model": job.model,
            "version": meta.version,
            "strategy": meta.strategy,
            "previous_strategy": previous,
            "strategy_changed": previous is not None and previous != meta.strategy,
            "reason": meta.reason,
            "policy_inputs": meta.policy_inputs,
            "counts": meta.data.per_class,
            "examples": meta.data.count,
            "mode": request.get("mode", "append"),
            "challenger": _metric_summary(meta.metrics),
            "champion": _metric_summary(champion_m),
            "champion_version": decided.champion_version,
            "promoted": promote,
            "shadow": shadow,
            "promotion_reason": why,
            "out_of_scope": meta.out_of_scope.model_dump() if meta.out_of_scope else None,
            "timings": result.timings,
        }
        _finish_durably(store, job_id, SUCCEEDED, worker=worker, result=outcome)
        log.info(
            "job %s: %s/%s %s, promoted=%s (%s)",
            job_id,
            job.model,
            meta.version,
            meta.strategy,
            promote,
            why,
        )
        return 0
    except Cancelled:
        _finish_durably(
            store,
            job_id,
            CANCELLED,
            worker=worker,
            error="cancelled on request (or the worker lost the job); nothing was published",
        )
        return 0
    except (DataError, ValueError) as exc:
        _finish_durably(store, job_id, FAILED, worker=worker, error=str(exc))
        return 0
    except OSError as exc:  # a full disk, a read-only or vanished REFIT_HOME
        log.error("job %s failed: %s", job_id, exc)
        _finish_durably(
            store,
            job_id,
            FAILED,
            worker=worker,
            error=f"storage error, nothing was published: {exc.strerror or exc}"
            f" ({exc.filename or settings.root}); free space or fix permissions under"
            " REFIT_HOME, then retry the job",
        )
        return 1
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _finish_durably(
            store,
            job_id,
            FAILED,
            worker=worker,
            error=f"internal error ({type(exc).__name__}); see the service log",
        )
        return 1


def _run_batch(job, settings: Settings, store, registry, worker, progress, cancel) -> int:
    """A batch job (service/batch_job.py) to its final state; its chunks stay for a retry."""
    from models import RegistryError
    from service.batch import BatchCancelled, BatchError
    from service.batch_job import OutsideRoot, run_batch_job

    def report(phase: str, fraction: float, message: str) -> None:
        progress(SimpleNamespace(phase=phase, fraction=fraction, message=message))

    try:
        outcome = run_batch_job(job, settings, registry, cancel, report)
    except BatchCancelled as exc:
        _finish_durably(store, job.id, CANCELLED, worker=worker, error=str(exc))
        return 0
    except (BatchError, OutsideRoot, RegistryError, LookupError) as exc:
        _finish_durably(store, job.id, FAILED, worker=worker, error=str(exc))
        return 0
    except OSError as exc:
        log.error("job %s failed: %s", job.id, exc)
        error = f"storage error: {exc.strerror or exc} ({exc.filename or 'REFIT_BATCH_ROOT'});"
        error += f" the finished chunks are kept: retry with POST /jobs/{job.id}/retry"
        _finish_durably(store, job.id, FAILED, worker=worker, error=error)
        return 1
    except Exception as exc:
        log.exception("job %s failed", job.id)
        error = f"internal error ({type(exc).__name__}); see the service log"
        _finish_durably(store, job.id, FAILED, worker=worker, error=error)
        return 1
    _finish_durably(store, job.id, SUCCEEDED, worker=worker, result=outcome)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: python -m service.trainer JOB_ID [WORKER_ID]\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s trainer: %(message)s")
    return run_job(argv[0], Settings(), argv[1] if len(argv) == 2 else None)


if __name__ == "__main__":
    sys.exit(main())
