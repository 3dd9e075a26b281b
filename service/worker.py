"""`refit worker`: claim queued retrain jobs from the shared store, run each in a trainer
process, heartbeat while it runs, and reap jobs whose worker went silent.

Any number of workers, on any machines that reach the database and the registry. A job is
claimed in one transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL): one running job per
model across the fleet, in submit order. The worker — not the trainer — heartbeats, so a
SIGKILLed worker (its trainer dies with it) stops heartbeating, and after
`REFIT_WORKER_TIMEOUT_S` another worker marks the job `interrupted` and queues it again
(`REFIT_JOB_RETRIES` times). A trainer whose worker lost the job stops before publishing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from service.runner import die_with_parent, exit_state, trainer_command, trainer_env
from service.settings import Settings
from service.state import open_registry, open_store
from service.stores import StoreUnavailable
from service.stores.schema import RUNNING

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self, settings: Settings, worker_id: str | None = None, *, command=trainer_command
    ) -> None:
        self.settings = settings
        self.command = command  # (job_id, worker_id) -> argv of the trainer process
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.store = open_store(settings)
        self.registry = open_registry(settings, self.store)
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None

    def _seen(self, job_id: str | None, state: str) -> None:
        try:
            self.store.workers.worker_seen(self.id, job_id=job_id, state=state)
        except StoreUnavailable as exc:
            log.warning("%s", exc)

    def step(self) -> bool:
        """Reap, then claim and run one job; False when there was nothing to do."""
        s = self.settings
        try:
            reaped = self.store.workers.reap(timeout_s=s.worker_timeout_s, retries=s.job_retries)
            for job_id in reaped:
                log.warning("job %s: its worker stopped heartbeating; marked interrupted", job_id)
            job = self.store.workers.claim_job(self.id)
        except StoreUnavailable as exc:
            log.warning("%s", exc)
            return False
        if job is None:
            return False
        self.run(job.id, job.model)
        return True

    def run(self, job_id: str, model: str) -> None:
        s = self.settings
        log.info("claimed job %s (%s)", job_id, model)
        self._seen(job_id, "running")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(job_id, self.id),
            env=trainer_env(s),
            preexec_fn=die_with_parent,
        )
        held = True
        while self.proc.poll() is None:
            if self.stopping.wait(s.worker_heartbeat_s):
                break
            try:
                held = self.store.workers.heartbeat(job_id, self.id, self.proc.pid)
            except StoreUnavailable as exc:  # keep training; the result waits for the store
                log.warning("job %s: heartbeat not recorded: %s", job_id, exc)
                continue
            if not held:  # finished (the trainer is exiting), reaped or cancelled
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
                break
            self._seen(job_id, "running")  # the worker's own heartbeat (metrics, alerts)
        if self.proc.poll() is None:
            log.warning("job %s: no longer held by this worker; stopping its trainer", job_id)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        try:
            job = self.store.jobs.get_job(job_id)
            if job is not None and job.state == RUNNING and job.worker == self.id:
                removed = self.registry.clean_staging(model)
                if self.stopping.is_set():
                    # given up at once, and queued again for another worker
                    self.store.workers.reap(timeout_s=0, retries=s.job_retries, job_id=job_id)
                else:
                    state, error = exit_state(code, job.phase, job_id)
                    self.store.jobs.finish(job_id, state, worker=self.id, error=error)
                log.warning(
                    "job %s: trainer exited with %s; removed staging %s", job_id, code, removed
                )
        except StoreUnavailable as exc:
            log.warning("job %s: outcome not recorded: %s", job_id, exc)
        log.info(
            "job %s done in %.0f s (trainer exit %s)", job_id, time.monotonic() - started, code
        )
        self._seen(None, "idle")

    def serve_forever(self) -> int:
        log.info("worker %s: store %s, registry %s", self.id, self.store.name, self.registry.url)
        while not self.stopping.is_set():
            self._seen(None, "idle")
            if not self.step():
                self.stopping.wait(self.settings.worker_poll_s)
        self._seen(None, "stopped")
        return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = Worker(Settings())

    def stop(signum, _frame) -> None:
        log.info("worker %s: %s, stopping", worker.id, signal.Signals(signum).name)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return worker.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
