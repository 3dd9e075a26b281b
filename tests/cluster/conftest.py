"""Real PostgreSQL and SeaweedFS (S3) for the cluster tests (service/harness/cluster.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from service.harness.cluster import Postgres, SeaweedS3, launch_postgres, launch_s3


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = launch_postgres()
    yield pg
    pg.stop()
    shutil.rmtree(pg.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[SeaweedS3]:
    server = launch_s3(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()
