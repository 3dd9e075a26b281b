"""Faults against a real service: a trainer SIGKILLed in each phase, a full disk at publish,
a corrupted version in the registry, a locked job store. Nothing is lost or half-done.

The trainer is stopped at exact points with fail points (`models/_faults.py`): the test
writes `POINT:pause` to `REFIT_FAULTS_FILE`, the trainer reaches the point, reports its pid
and sleeps, and the test SIGKILLs it there.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO, banking77_slice, read_banking77
from tests.e2e.conftest import (
    Server,
    db_state,
    make_server,
    production,
    set_aliases_by_hand,
    submit,
    wait_job,
)

pytestmark = pytest.mark.slow

CLASSES = sorted({label for _, label in read_banking77("train")})


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("faults")
    srv = make_server(
        tmp,
        REFIT_WORKERS="1",
        REFIT_FAULTS_FILE=str(tmp / "faults"),
        REFIT_STORE_BUSY_TIMEOUT_S="2",
    )
    srv.start()
    yield srv
    srv.stop()


def faults_file(server: Server) -> Path:
    return Path(server.env["REFIT_FAULTS_FILE"])


def arm(server: Server, spec: str) -> None:
    Path(f"{faults_file(server)}.reached").unlink(missing_ok=True)
    faults_file(server).write_text(spec)


def disarm(server: Server) -> None:
    faults_file(server).unlink(missing_ok=True)


def staging_left(server: Server) -> list[str]:
    return [p.name for p in (server.home / "default").iterdir() if p.name.startswith(".staging")]


def small_job(client: httpx.Client, offset: int) -> str:
    """Feature extraction on 5 fresh classes x 8 examples (fresh: no embedding cache hits)."""
    rows = banking77_slice("train", CLASSES[offset : offset + 5], per_class=8, seed=offset)
    r = submit(
        client,
        {
            "examples": [{"text": t, "label": y} for t, y in rows],
            "strategy": "feature_extraction",
            "mode": "replace",
            "promote": "always",
        },
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Refit-Job-Id"]


def kill_at_fail_point(server: Server, point: str, timeout: float = 180) -> None:
    reached = Path(f"{faults_file(server)}.reached")
    deadline = time.monotonic() + timeout
    while not reached.exists():
        assert time.monotonic() < deadline, f"trainer never reached {point}:\n{server.tail()}"
        time.sleep(0.1)
    name, pid = reached.read_text().split()
    assert name == point
    proc = psutil.Process(int(pid))
    assert "service.trainer" in " ".join(proc.cmdline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@pytest.mark.parametrize(
    ("point", "phase"),
    [
        ("embedding", "embedding"),
        ("training", "training"),
        ("exporting", "exporting"),
        ("publish", "publishing"),
    ],
)
def test_trainer_killed_mid_phase_publishes_nothing_and_retry_succeeds(
    fault_server: Server, point: str, phase: str
) -> None:
    offset = 5 * ["embedding", "training", "exporting", "publish"].index(point)
    with fault_server.client() as c:
        champion = production(c)
        arm(fault_server, f"{point}:pause")
        try:
            job_id = small_job(c, offset)
            stored = db_state(fault_server)  # the examples are stored at submit
            kill_at_fail_point(fault_server, point)
        finally:
            disarm(fault_server)
        job, _ = wait_job(c, job_id, timeout=60)
        assert job["state"] == "interrupted", job
        assert job["error"] == (
            f"the trainer was killed by SIGKILL during {phase}; nothing was published;"
            f" retry it with POST /jobs/{job_id}/retry"
        )
        assert db_state(fault_server) == stored  # no version, no alias change, examples kept
        assert staging_left(fault_server) == []
        assert production(c) == champion
        r = c.post("/predict", json={"texts": ["where is my card?"]})
        assert r.status_code == 200 and r.json()["version"] == champion

        r = c.post(f"/jobs/{job_id}/retry")
        assert r.status_code == 202, r.text
        retry = r.json()
        assert retry["request"]["retry_of"] == job_id and retry["state"] == "queued"
        done, _ = wait_job(c, retry["id"], timeout=180)
        assert done["state"] == "succeeded", done
        assert done["result"]["examples"] == 40 and done["result"]["promoted"] is True
        assert production(c) == done["result"]["version"] != champion


def test_full_disk_at_publish_fails_clearly_and_leaves_nothing(fault_server: Server) -> None:
    with fault_server.client() as c:
        champion = production(c)
        arm(fault_server, "publish:enospc")
        try:
            job_id = small_job(c, 20)
            job, _ = wait_job(c, job_id, timeout=180)
            stored = db_state(fault_server)
        finally:
            disarm(fault_server)
        assert job["state"] == "failed", job
        assert job["error"].startswith(
            "storage error, nothing was published: No space left on device"
        )
        assert "free space or fix permissions under REFIT_HOME" in job["error"]
        assert staging_left(fault_server) == []
        assert production(c) == champion
        r = c.post(f"/jobs/{job_id}/retry")
        assert r.status_code == 202
        done, _ = wait_job(c, r.json()["id"], timeout=180)
        assert done["state"] == "succeeded", done
        assert len(db_state(fault_server)[2]) == len(stored[2]) + 1


def test_corrupt_version_is_refused_and_the_last_good_keeps_serving(fault_server: Server) -> None:
    with fault_server.client() as c:
        good = production(c)
        job_id = submit(
            c,
            {
                "examples": [
                    {"text": t, "label": y}
                    for t, y in banking77_slice("train", CLASSES[30:35], per_class=8, seed=30)
                ],
                "strategy": "feature_extraction",
                "mode": "replace",
                "promote": "never",
            },
        ).headers["X-Refit-Job-Id"]
        job, _ = wait_job(c, job_id, timeout=180)
        candidate = job["result"]["version"]
        folder = fault_server.home / "default"
        onnx = folder / candidate / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:1000])  # truncated, as by a failed copy

        # Promotion checks the hashes first.
        r = c.post("/models/promote", json={"version": candidate})
        assert r.status_code == 409 and "model.onnx: sha256" in r.json()["error"]
        # Aliases pointing at it anyway (hand-edited, restored from backup): the
        # workers refuse to load it and keep serving the last good version.
        set_aliases_by_hand(fault_server, candidate, good)
        deadline = time.monotonic() + 90
        while True:
            listing = c.get("/models").json()
            row = next(v for v in listing["versions"] if v["version"] == candidate)
            if row["status"] != "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert row["status"].startswith("failed to load: ")
        assert "model.onnx: sha256" in row["status"]
        assert listing["serving"]["version"] == good
        assert "cannot load default/" in listing["serving"]["error"]
        r = c.post("/predict", json={"texts": ["my card is lost"]})
        assert r.status_code == 200 and r.json()["version"] == good
        assert f"cannot load default/{candidate}" in fault_server.tail(200)

        # A truncated metadata.json is reported the same way, by the service and the CLI.
        (folder / candidate / "metadata.json").write_text('{"name": "default", "vers')
        row = next(v for v in c.get("/models").json()["versions"] if v["version"] == candidate)
        assert row["status"].startswith("corrupt: ")
        cli = subprocess.run(
            [sys.executable, "-m", "service.cli", "--home", str(fault_server.home)]
            + ["models", "verify", "default"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 2
        assert f"default {candidate}: CORRUPT: " in cli.stdout
        assert f"default {good}: ok" in cli.stdout
        set_aliases_by_hand(fault_server, good)


def test_a_locked_job_store_gives_a_clear_503_and_stores_nothing(fault_server: Server) -> None:
    rows = banking77_slice("train", CLASSES[40:42], per_class=4, seed=40)
    request = {"examples": [{"text": t, "label": y} for t, y in rows], "mode": "replace"}
    before = db_state(fault_server)
    holder = sqlite3.connect(fault_server.home / "refit.sqlite", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # a second writer that does not let go
        with fault_server.client() as c:
            started = time.monotonic()
            r = submit(c, request)
            waited = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            assert "stayed locked by another writer for 2 s" in r.json()["error"]
            assert "nothing was stored, retry later" in r.json()["error"]
            assert waited >= 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert db_state(fault_server) == before
    with fault_server.client() as c:
        r = submit(c, {**request, "promote": "never"})
        assert r.status_code == 200, r.text
        job, _ = wait_job(c, r.headers["X-Refit-Job-Id"], timeout=180)
        assert job["state"] == "succeeded"


def trainers(server: Server) -> list[int]:
    assert server.proc is not None
    found = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "service.trainer" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_no_trainer_is_left_running(fault_server: Server) -> None:
    deadline = time.monotonic() + 90  # the last job's trainer may still be exiting
    while trainers(fault_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainers(fault_server) == []


def test_sigterm_drains_in_time_with_slow_and_stuck_clients(tmp_path: Path) -> None:
    """Clients that trickle their body, or stop sending it, cannot hold the shutdown: each
    request has REFIT_REQUEST_TIMEOUT_S, which is below the drain time."""
    import socket
    import threading

    srv = make_server(
        tmp_path,
        REFIT_WORKERS="1",
        REFIT_REQUEST_TIMEOUT_S="4",
        REFIT_GRACEFUL_SHUTDOWN_S="120",
    )
    srv.start()
    socks = []

    def slow_client(stop_after: int, trickle: bool) -> None:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        socks.append(s)
        body = b'{"texts": ["where is my card"]}'
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:stop_after]
        )
        for byte in body[stop_after:] if trickle else b"":
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(1)

    threads = [
        threading.Thread(target=slow_client, args=(1, True), daemon=True),
        threading.Thread(target=slow_client, args=(10, False), daemon=True),
        threading.Thread(target=slow_client, args=(5, True), daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1)
        assert srv.proc is not None
        tree = [
            psutil.Process(srv.proc.pid),
            *psutil.Process(srv.proc.pid).children(recursive=True),
        ]
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=100)
        took = time.monotonic() - started
        assert alive == [], f"still running after {took:.0f} s: {alive}"
        # the 4 s request deadline, not the 120 s drain, bounded it (a busy machine adds some)
        assert took < 60, f"shutdown took {took:.1f} s with slow clients attached"
    finally:
        for s in socks:
            s.close()
        srv.stop(signal.SIGKILL)
