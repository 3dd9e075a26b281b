"""The trainer process: `python -m service.trainer JOB_ID` runs one retrain job.

It is a separate OS process from every inference worker, so torch never loads there and a
long job never stalls predictions. It reads the job and its data from the store, reports
progress back to it, publishes a version, applies the promotion gate and records the result.
If it dies, the version is either fully published or absent, and `Store.reconcile` marks
the job interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any

from models import Metrics, Registry, RegistryError
from service.settings import Settings
from service.state import open_state
from service.store import StoreUnavailable

log = logging.getLogger("service.trainer")


def die_with_parent() -> None:  # runs in the trainer child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def trainer_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(settings.trainer_threads),
        "MKL_NUM_THREADS": str(settings.trainer_threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def _metric_summary(m: Metrics | None) -> dict[str, Any] | None:
    return None if m is None else {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "count": m.count}


def champion_metrics(
    registry: Registry, name: str, texts: list[str], labels: list[str]
) -> tuple[str, Metrics] | None:
    """The production model's metrics on the challenger's held-out examples.

    Labels the champion does not know count as errors, so a challenger that learned a new
    class is not penalised for it.
    """
    from training.evaluate import OnnxRunner, compute_metrics

    try:
        mv = registry.verify(name, "production")
    except (RegistryError, LookupError):
        return None
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    predicted = [mv.metadata.labels[i] for i in runner.predict_proba(texts).argmax(axis=1)]
    vocab = sorted(set(labels) | set(predicted))
    index = {label: i for i, label in enumerate(vocab)}
    metrics = compute_metrics(
        [index[x] for x in labels], [index[x] for x in predicted], vocab, with_confusion=False
    )
    return mv.version, metrics


def gate(
    promote: str, challenger: Metrics, champion: Metrics | None, tolerance: float
) -> tuple[bool, str]:
    if promote == "never":
        return False, "promote=never: kept as a candidate"
    if promote == "always":
        return True, "promote=always"
    if champion is None:
        return True, "no production model yet"
    if challenger.macro_f1 >= champion.macro_f1 - tolerance:
        return True, (
            f"challenger macro-F1 {challenger.macro_f1:.4f} >= champion {champion.macro_f1:.4f}"
            f" - tolerance {tolerance:g} on the same {challenger.count} held-out examples"
        )
    return False, (
        f"challenger macro-F1 {challenger.macro_f1:.4f} < champion {champion.macro_f1:.4f}"
        f" - tolerance {tolerance:g} on the same {challenger.count} held-out examples: kept as a candidate"
    )


def _finish_durably(store, job_id: str, state: str, *, worker: str | None, **kwargs: Any) -> None:
    """A job's outcome must reach the store: retry through an outage of the database
    (up to ~10 minutes) rather than lose a result that was already published."""
    delay = 0.5
    for _ in range(120):
        try:
            store.finish(job_id, state, worker=worker, **kwargs)
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
    from training import Cancelled, DataError, PolicyThresholds, TrainConfig
    from training.pipeline import train

    store, registry = open_state(settings)
    job = store.get_job(job_id)
    if job is None:
        log.error("job %s not found", job_id)
        return 2
    if worker is not None:
        if job.state != "running" or job.worker != worker:
            log.error("job %s is %s, held by %s, not by %s", job_id, job.state, job.worker, worker)
            return 2
    elif job.cancel_requested or job.state != "queued":
        store.finish(job_id, "cancelled", error="cancelled before it started")
        return 0
    else:
        store.mark_running(job_id, os.getpid())
    request = job.request
    last: dict[str, Any] = {"t": 0.0, "phase": "", "cancel_t": 0.0, "cancel": False}

    def progress(event) -> None:
        now = time.monotonic()
        if now - last["t"] >= 0.5 or event.phase != last["phase"]:
            last["t"], last["phase"] = now, event.phase
            try:
                store.set_progress(job_id, event.phase, event.fraction, event.message)
            except StoreUnavailable as exc:  # progress is best effort; the result is not
                log.warning("job %s: progress not recorded: %s", job_id, exc)

    def cancel() -> bool:
        now = time.monotonic()
        # checked afresh right before publishing: a job that lost its worker never publishes
        if now - last["cancel_t"] >= 1.0 or last["phase"] == "publishing":
            last["cancel_t"] = now
            try:
                if worker is not None:
                    last["cancel"] = not store.holds(job_id, worker)
                else:
                    last["cancel"] = store.cancel_requested(job_id)
            except StoreUnavailable:
                # cannot tell: go on training, but never publish without knowing
                last["cancel"] = last["phase"] == "publishing"
        return bool(last["cancel"])

    try:
        data = store.dataset(job.model, upto_batch=job.batch_id)
        # the model's overrides (PUT /models/{name}/settings) over the REFIT_* settings
        settings = settings.model_copy(update=store.model_settings(job.model))
        backbone = request.get("backbone") or "minilm"
        if backbone != "minilm" and backbone not in settings.backbones:
            raise ValueError(
                f"backbone {backbone!r} is not in REFIT_BACKBONES of this trainer"
                f" (allowed: minilm, {', '.join(sorted(settings.backbones))})"
            )
        config = TrainConfig(
            name=job.model,
            backbone=settings.backbones.get(backbone),
            strategy=request.get("strategy", "auto"),
            threads=settings.trainer_threads,
            contrastive_steps=settings.contrastive_steps,
            quantize=settings.quantize,
            min_steps=settings.fine_tuning_min_steps,
            cache_dir=settings.root / ".cache",
            thresholds=PolicyThresholds(
                feature_extraction_below=settings.feature_extraction_below,
                fine_tuning_at=settings.fine_tuning_at,
                time_budget_s=settings.time_budget_s,
            ),
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
        val = result.validation
        champion = champion_metrics(registry, job.model, list(val.texts), list(val.labels))
        champion_version, champion_m = champion if champion else (None, None)
        previous = (
            registry.get(job.model, champion_version).metadata.strategy
            if champion_version
            else None
        )
        wanted = request.get("promote", "auto")
        via_shadow = champion_m is not None and (
            wanted == "shadow" or (wanted == "auto" and settings.promote_via_shadow)
        )
        promote, why = gate(
            "auto" if wanted == "shadow" else wanted,
            meta.metrics,
            champion_m,
            settings.promotion_tolerance,
        )
        shadow = False
        if promote and via_shadow:
            registry.shadow(job.model, meta.version)
            promote, shadow = False, True
            why += (
                f"; in shadow: scores {settings.shadow_fraction:.0%} of live requests and is"
                f" promoted when not worse than production on {settings.shadow_min_labeled}"
                " linked feedback examples (or on an explicit promote)"
            )
        elif promote:
            registry.promote(job.model, meta.version)
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
            "champion_version": champion_version,
            "promoted": promote,
            "shadow": shadow,
            "promotion_reason": why,
            "timings": result.timings,
        }
        _finish_durably(store, job_id, "succeeded", worker=worker, result=outcome)
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
            "cancelled",
            worker=worker,
            error="cancelled on request (or the worker lost the job); nothing was published",
        )
        return 0
    except (DataError, ValueError) as exc:
        _finish_durably(store, job_id, "failed", worker=worker, error=str(exc))
        return 0
    except OSError as exc:  # a full disk, a read-only or vanished REFIT_HOME
        log.error("job %s failed: %s", job_id, exc)
        _finish_durably(
            store,
            job_id,
            "failed",
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
            "failed",
            worker=worker,
            error=f"internal error ({type(exc).__name__}); see the service log",
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: python -m service.trainer JOB_ID [WORKER_ID]\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s trainer: %(message)s")
    return run_job(argv[0], Settings(), argv[1] if len(argv) == 2 else None)


if __name__ == "__main__":
    sys.exit(main())
