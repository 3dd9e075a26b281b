"""Property-based fuzzing of the HTTP API from its own OpenAPI document, with schemathesis.

Bounded here (a fixed seed, 25 examples per operation and phase); the longer run is in
the README's Reliability section. Its own service: the fuzzer promotes, rolls back,
cancels and submits whatever the schema allows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TOKEN, Server, make_server

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("fuzz"), REFIT_WORKERS="1")
    srv.start()
    yield srv
    srv.stop()


def schemathesis() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is not installed: `make install` installs the dev extra"
    return found


def test_openapi_fuzzing_finds_no_server_error_and_no_schema_violation(
    fuzz_server: Server, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            schemathesis(),
            "run",
            f"{fuzz_server.url}/docs.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "20261127",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,  # schemathesis writes its cache relative to the working directory
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    spec = httpx.get(f"{fuzz_server.url}/docs.json", timeout=30).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert operations >= 20
    assert f"Tested: {operations}" in out, out[-3000:]  # every operation was exercised
    assert "failures" not in out.split("SUMMARY")[-1].lower(), out[-3000:]
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None
