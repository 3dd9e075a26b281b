"""A fleet of real processes on one PostgreSQL and one S3 bucket: replicas (`python -m
service`) and `refit worker`s. Used by tests/cluster and bench/cluster_bench.py; also
`clone_version`, a second version without training one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from models import Registry
from models._s3 import S3Storage
from service.harness.cluster import Postgres, SeaweedS3
from service.harness.data import REPO
from service.harness.server import Server, make_server
from service.stores import Store


@dataclass
class WorkerProc:
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=REPO,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(self.proc.pid).send_signal(sig)
        self.proc.wait(60)
        self.proc = None


@dataclass
class Fleet:
    tmp: Path
    db_url: str
    bucket: str
    s3: SeaweedS3
    postgres: Postgres
    settings: dict[str, str]
    replicas: dict[str, Server]
    workers: list[WorkerProc]

    @property
    def registry_url(self) -> str:
        return f"s3://{self.bucket}/models"

    def store(self) -> Store:
        return Store(self.db_url, migrate=False)

    def registry(self) -> Registry:
        return Registry(
            storage=S3Storage(
                self.registry_url, self.tmp / "tool-cache", endpoint_url=self.s3.endpoint
            ),
            aliases=self.store().aliases,
        )

    def replica(self, name: str) -> Server:
        (self.tmp / name).mkdir()
        srv = make_server(self.tmp / name, **self.settings)
        self.replicas[name] = srv
        return srv

    def worker(self) -> WorkerProc:
        home = self.tmp / f"worker{len(self.workers)}"
        env = {**os.environ, **self.settings, "REFIT_HOME": str(home)}
        w = WorkerProc(env, self.tmp / f"worker{len(self.workers)}.log")
        w.start()
        self.workers.append(w)
        return w

    def copy_version(self, source: str) -> str:
        """A new version with the files of `source` (published as a trainer would)."""
        return clone_version(self.registry(), "default", source)


@contextlib.contextmanager
def launch_fleet(
    tmp: Path, postgres: Postgres, s3: SeaweedS3, *, replicas: int = 2, workers: int = 2, **env: str
) -> Iterator[Fleet]:
    """Replicas a, b, ... (the first trains the example model into the empty registry) and
    `workers` workers on a new database and bucket; everything is killed on exit."""
    bucket = s3.new_bucket()
    db_url = postgres.new_database()
    settings = {
        "REFIT_DATABASE_URL": db_url,
        "REFIT_REGISTRY_URL": f"s3://{bucket}/models",
        "REFIT_S3_ENDPOINT_URL": s3.endpoint,
        "REFIT_TRAINER": "external",
        "REFIT_WORKERS": "1",
        "REFIT_TRIGGER_POLL_S": "1",
        "REFIT_WORKER_HEARTBEAT_S": "1",
        "REFIT_WORKER_TIMEOUT_S": "20",
        "REFIT_WORKER_POLL_S": "0.5",
        "REFIT_FINE_TUNING_MIN_STEPS": "30",
        "AWS_ACCESS_KEY_ID": "refit-test",
        "AWS_SECRET_ACCESS_KEY": "refit-test-secret",
        **env,
    }
    f = Fleet(tmp, db_url, bucket, s3, postgres, settings, {}, [])
    try:
        for name in "abcdefgh"[:replicas]:
            f.replica(name).start()  # the first trains the example model into S3
        for _ in range(workers):
            f.worker()
        yield f
    finally:
        for srv in f.replicas.values():
            srv.stop(signal.SIGKILL)
        for w in f.workers:
            w.kill()


@dataclass
class LoadRun:
    """What clients saw while versions changed under them."""

    order: list[str]  # production history: start, 3 promotions, the rollback target
    rolled_back_to: str
    seen: list[list[str]] = field(default_factory=list)  # per client, versions in order
    failures: list[str] = field(default_factory=list)
    requests: int = 0

    def in_order(self, versions: list[str]) -> bool:
        """None skipped back, except across the rollback."""
        it = iter(self.order)
        return all(v in it for v in versions)


def promotions_under_load(fleet: Fleet, seconds: float, clients: int = 16) -> LoadRun:
    """`clients` keep-alive clients (half on A, half on B) predict for `seconds` while three
    promotions and one rollback are sent alternately to A and B."""
    a, b = fleet.replicas["a"], fleet.replicas["b"]
    start = fleet.store().aliases.read("default")[0]["production"]
    candidates = [fleet.copy_version(start) for _ in range(3)]
    run = LoadRun(order=[start, *candidates, candidates[1]], rolled_back_to="")
    run.seen = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(i: int) -> None:
        srv = a if i % 2 else b
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"texts": [f"card payment {i}"]})
                except httpx.HTTPError as exc:
                    run.failures.append(repr(exc))
                    continue
                run.requests += 1
                if r.status_code != 200:
                    run.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                v = r.json()["version"]
                if not run.seen[i] or run.seen[i][-1] != v:
                    run.seen[i].append(v)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    step = seconds / 5
    try:
        time.sleep(step)
        for i, version in enumerate(candidates):
            with (a if i % 2 == 0 else b).client() as c:
                c.post("/models/promote", json={"version": version}).raise_for_status()
            time.sleep(step)
        with b.client() as c:
            r = c.post("/models/rollback")
            r.raise_for_status()
            run.rolled_back_to = r.json()["production"]
        time.sleep(step)
        # then until every client saw the rollback (a busy machine propagates late)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(
            s and s[-1] == run.rolled_back_to for s in run.seen
        ):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return run


def clone_version(home_or_registry, name: str = "default", source: str = "production") -> str:
    """Publish a copy of a version under a new version id (a swap loads a real, separate
    ONNX session either way; training three models would only add minutes)."""
    registry = home_or_registry
    if isinstance(home_or_registry, Path):
        from service.settings import Settings
        from service.state import open_state

        registry = open_state(Settings(home=home_or_registry))[1]
    mv = registry.verify(name, source)
    staging = registry.stage(name)
    for file in mv.metadata.files:
        shutil.copy2(mv.path / file, staging.path / file)
    meta = mv.metadata.model_copy(update={"version": staging.version})
    return registry.publish(staging, meta).version
