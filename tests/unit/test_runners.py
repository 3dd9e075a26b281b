"""One mapping from how a trainer process ended to a job's final state, whichever runner ran
it: embedded mode (service/runner.py) and `refit worker` (service/worker.py) start a real
trainer process; here one that dies by a signal, or exits with an error, before it can
record anything."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from service.runner import JobRunner, exit_state
from service.settings import Settings
from service.state import open_state
from service.worker import Worker

EXAMPLES = [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]


def dies(how: str):
    code = {
        "SIGKILL": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "exit 3": "raise SystemExit(3)",
    }[how]
    return lambda job_id, worker_id: [sys.executable, "-c", code]


@pytest.mark.parametrize(
    ("how", "state", "cause"),
    [
        ("SIGKILL", "interrupted", "the trainer was killed by SIGKILL during"),
        ("exit 3", "failed", "the trainer exited with 3 during"),
    ],
)
def test_a_dead_trainer_ends_its_job_the_same_way_in_both_runner_modes(
    tmp_path, how: str, state: str, cause: str
) -> None:
    settings = Settings(home=tmp_path)
    store, registry = open_state(settings)

    embedded = store.jobs.create_job(
        "m", {}, EXAMPLES, mode="replace", source="http", owner_pid=os.getpid()
    )
    asyncio.run(JobRunner(settings, store, registry, command=dies(how)).run(embedded.id))

    external = settings.model_copy(update={"trainer": "external"})
    queued = store.jobs.create_job("m", {}, EXAMPLES, mode="replace", source="http")
    claimed = store.workers.claim_job("worker-1")
    assert claimed is not None and claimed.id == queued.id
    Worker(external, "worker-1", command=dies(how)).run(claimed.id, claimed.model)

    for job_id in (embedded.id, queued.id):
        job = store.jobs.get_job(job_id)
        assert job is not None
        assert (job.state, job.error) == exit_state(
            -9 if how == "SIGKILL" else 3, job.phase, job_id
        )
        assert job.state == state and job.error.startswith(cause)
        assert job.error.endswith(f"nothing was published; retry it with POST /jobs/{job_id}/retry")
