"""Running retrain jobs: a trainer process per job (`python -m service.trainer`), and the
one mapping from how that process ended to the job's final state.

Two hosts use it: embedded mode (`REFIT_TRAINER=embedded`: the inference worker that took
the request runs its job, one at a time per model in submit order) and `refit worker`
(service/worker.py: claims jobs from the shared store with a lease). Both start the trainer
with `trainer_command`, and both record a trainer that ended without recording its own
outcome through `exit_state`, so a killed trainer reads the same in either mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from service import metrics
from service.settings import Settings
from service.stores import ACTIVE_STATES, StoreUnavailable
from service.stores.schema import CANCELLED, FAILED, INTERRUPTED

log = logging.getLogger(__name__)


def trainer_command(job_id: str, worker_id: str | None = None) -> list[str]:
    return [sys.executable, "-m", "service.trainer", job_id, *([worker_id] if worker_id else [])]


def trainer_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(settings.trainer_threads),
        "MKL_NUM_THREADS": str(settings.trainer_threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def die_with_parent() -> None:  # runs in the trainer child before exec
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def exit_state(code: int, phase: str, job_id: str) -> tuple[str, str]:
    """(state, error) of a job whose trainer exited with `code` without recording an
    outcome: killed by a signal (the OOM killer, an operator, a test) is `interrupted`,
    anything else `failed`; either way nothing was published."""
    retry = f"nothing was published; retry it with POST /jobs/{job_id}/retry"
    if code < 0:
        return (
            INTERRUPTED,
            f"the trainer was killed by {signal.Signals(-code).name} during {phase}; {retry}",
        )
    return FAILED, f"the trainer exited with {code} during {phase}; {retry}"


def count_finished(job: Any, seconds: float) -> None:
    """Job metrics, once per finished job, in whichever process ran it."""
    if job.request.get("kind") == "batch":  # not a retrain: /jobs and the log tell it
        return
    strategy = (job.result or {}).get("strategy", "none")
    metrics.RETRAIN_JOBS.labels(strategy, job.state).inc()
    if job.result is not None and job.result.get("promoted") is False:
        source = "trigger" if "trigger" in job.request else "request"
        metrics.CHALLENGERS_REJECTED.labels(job.model, source).inc()
    metrics.RETRAIN_DURATION.observe(seconds)


class JobRunner:
    """Embedded mode: runs a job in this worker's event loop, the trainer in a subprocess.
    With `REFIT_TRAINER=external` it only follows the job a `refit worker` runs."""

    def __init__(
        self, settings: Settings, store: Any, registry: Any, *, command=trainer_command
    ) -> None:
        self.settings, self.store, self.registry = settings, store, registry
        self.embedded = settings.trainer == "embedded"
        self.command = command  # (job_id, worker_id) -> argv of the trainer process

    async def follow(self, job_id: str) -> dict[str, Any]:
        """Run the job (embedded), or wait for the `refit worker` that runs it."""
        return await (self.run(job_id) if self.embedded else self._await(job_id))

    async def _await(self, job_id: str) -> dict[str, Any]:
        while True:
            try:
                job = await asyncio.to_thread(self.store.jobs.get_job, job_id)
            except StoreUnavailable:
                job = None
            if job is not None and job.state not in ACTIVE_STATES:
                return job.to_dict()
            await asyncio.sleep(1.0)

    async def run(self, job_id: str) -> dict[str, Any]:
        store = self.store
        queued = store.jobs.get_job(job_id)
        model = queued.model if queued is not None else self.settings.model_name
        try:
            while store.jobs.next_in_line(model) != job_id:
                waiting = store.jobs.get_job(job_id)
                if waiting is None or waiting.state not in ACTIVE_STATES:
                    break  # cancelled or reconciled away while queued
                await asyncio.to_thread(store.jobs.reconcile)  # frees the line if a trainer died
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:  # PUT /retrain/cancel while waiting its turn: a job
            # left queued by a live worker would hold its model's line until a restart
            store.jobs.finish(job_id, CANCELLED, error="cancelled before it started")
            raise
        job = store.jobs.get_job(job_id)
        if job is None or job.state not in ACTIVE_STATES:
            return job.to_dict() if job else {"error": "job vanished"}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *self.command(job_id, None),
            env=trainer_env(self.settings),
            preexec_fn=die_with_parent,
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # PUT /retrain/cancel
            store.jobs.request_cancel(job_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
            store.jobs.finish(
                job_id, CANCELLED, error="cancelled on request; nothing was published"
            )
            raise
        job = store.jobs.get_job(job_id)
        assert job is not None
        if job.state in ACTIVE_STATES:
            removed = await asyncio.to_thread(self.registry.clean_staging, job.model)
            state, error = exit_state(code, job.phase, job_id)
            store.jobs.finish(job_id, state, error=error)
            log.warning("job %s: trainer exited with %s; removed staging %s", job_id, code, removed)
            job = store.jobs.get_job(job_id)
            assert job is not None
        count_finished(job, time.monotonic() - started)
        return job.to_dict()
