"""The package's shared service (service/harness/server.py starts it) and helpers that read
its store directly."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from service.harness.server import (
    TOKEN,
    Server,
    free_port,
    make_server,
    production,
    submit,
    wait_job,
    wait_until,
)

__all__ = [
    "TOKEN",
    "Server",
    "free_port",
    "make_server",
    "production",
    "submit",
    "wait_job",
    "wait_until",
]


@pytest.fixture(scope="package")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("e2e"),
        REFIT_MAX_BODY_BYTES=str(2 * 1024 * 1024),
        REFIT_REQUEST_TIMEOUT_S="20",
        REFIT_MAX_EXAMPLES_PER_REQUEST="2000",
        # triggers run for every model: no triggered job may start in the middle of a test
        # on the shared server (a test's own retrain would queue behind it and lose the
        # gate to it); triggers are tested on their own servers
        REFIT_DRIFT_THRESHOLD="0",
        REFIT_RETRAIN_MIN_PENDING="0",
    )
    srv.start()
    yield srv
    srv.stop()


def db_state(server: Server) -> tuple[int, int, list[str], str]:
    """Examples stored, jobs, published versions and aliases: what a refused request must
    leave exactly as it was."""
    db = sqlite3.connect(server.home / "refit.sqlite")
    try:
        examples = db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
        jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        aliases = db.execute(
            "SELECT production, previous, generation FROM aliases WHERE model='default'"
        ).fetchone()
    finally:
        db.close()
    folder = server.home / "default"
    return (
        examples,
        jobs,
        sorted(p.name for p in folder.iterdir() if p.name.startswith("v")),
        repr(aliases),
    )


def set_aliases_by_hand(server: Server, production: str, previous: str | None = None) -> None:
    """What an operator editing the store directly (or restoring a backup) does."""
    db = sqlite3.connect(server.home / "refit.sqlite", isolation_level=None)
    try:
        db.execute(
            "UPDATE aliases SET production=?, previous=?, generation=generation+1 "
            "WHERE model='default'",
            (production, previous),
        )
    finally:
        db.close()
