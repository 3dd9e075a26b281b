"""A real `python -m service` in a private home (first-start training, then `bentoml serve`),
and the calls tests and benchmarks make of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from service.harness.data import REPO

TOKEN = "e2e-secret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    home: Path
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def start(self, timeout: float = 240) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # never receives the terminal's signals
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self._wait_for_workers(deadline)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.tail()}")

    def _wait_for_workers(self, deadline: float) -> None:
        """Ready means one worker is; tests that spread requests need every worker up."""
        expected = int(self.env.get("REFIT_WORKERS", "1"))
        pids: set[int] = set()
        while len(pids) < expected and time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/models", headers={"Connection": "close"}, timeout=10)
            if r.status_code == 200:
                pids.add(r.json()["serving"]["worker_pid"])
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: graceful; SIGKILL: the launcher, BentoML's arbiter, workers and trainers
        all die at once (as in a container kill). Nothing of this service outlives the call."""
        if self.proc is None:
            return
        try:
            tree = [
                psutil.Process(self.proc.pid),
                *psutil.Process(self.proc.pid).children(recursive=True),
            ]
        except psutil.NoSuchProcess:
            tree = []
        targets = tree if sig == signal.SIGKILL else tree[:1]
        for p in targets:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=60)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=30)
        self.proc.wait(30)
        self.proc = None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def make_server(tmp: Path, **settings: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "REFIT_HOME": str(tmp / "home"),
        "REFIT_PORT": str(port),
        "REFIT_HOST": "127.0.0.1",
        "REFIT_WORKERS": "2",
        "REFIT_API_TOKEN": TOKEN,
        "REFIT_SWAP_POLL_S": "0.5",
        # the service is under test here, not the small-data recipe (tests/integration has
        # it): 40 steps instead of 300 keep each small fine-tuning job under a minute
        "REFIT_FINE_TUNING_MIN_STEPS": "40",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "REFIT_BATCH_ROOT": str(tmp / "batch"),  # files POST /models/{name}/batch may score
        **settings,
    }
    (tmp / "batch").mkdir(parents=True, exist_ok=True)
    return Server(home=tmp / "home", port=port, env=env, log_path=tmp / "server.log")


def wait_until(check: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll `check()` until it is truthy (its value) or `timeout` s pass (AssertionError).
    Behaviour tests wait for a condition with a generous deadline; how fast belongs in
    bench/ (a busy CI machine is slow, not wrong)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


def wait_job(
    client: httpx.Client, job_id: str, timeout: float = 300
) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """Poll `GET /jobs/{id}` to a final state; returns the job and the progress seen."""
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if not seen or seen[-1] != (job["phase"], job["fraction"]):
            seen.append((job["phase"], job["fraction"]))
        if job["state"] not in ("queued", "running"):
            return job, seen
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def submit(client: httpx.Client, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["content"] = json.dumps(body)
        kwargs.setdefault("headers", {})["content-type"] = "application/json"
    return client.post("/retrain/submit", **kwargs)


def production(client: httpx.Client) -> str:
    return client.get("/models").json()["production"]
