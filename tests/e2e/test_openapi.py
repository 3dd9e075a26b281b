"""The API's contract does not move by accident: the OpenAPI document `bentoml serve`
publishes is identical to the golden copy (tests/fixtures/openapi.json, taken from the
release before the service was split into routers). A deliberate API change updates the
golden copy in the same commit."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow
GOLDEN = REPO / "tests" / "fixtures" / "openapi.json"


def differences(a: object, b: object, path: str = "") -> list[str]:
    if type(a) is not type(b):
        return [f"{path or '/'}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"]
    if isinstance(a, dict):
        assert isinstance(b, dict)
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in b:
                out.append(f"{path}/{key}: removed")
            elif key not in a:
                out.append(f"{path}/{key}: added")
            else:
                out += differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path or '/'}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"]


def test_the_openapi_document_is_the_golden_one(server: Server) -> None:
    served = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    golden = json.loads(GOLDEN.read_text())
    assert differences(golden, served) == []
    assert len(served["paths"]) >= 30
