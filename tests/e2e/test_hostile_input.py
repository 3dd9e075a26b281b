"""Malformed and hostile requests against the real service: each gets a 4xx that names the
problem, none gets a 5xx, and none changes the stored examples, the jobs or the registry."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TOKEN, Server, db_state

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
CSV = {"content-type": "text/csv"}


def body(payload: Any) -> dict[str, Any]:
    return {"content": json.dumps(payload).encode(), "headers": JSON}


def raw(data: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": content_type}}


def examples(*pairs: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return body({"examples": [{"text": t, "label": y} for t, y in pairs], **extra})


OK_PAIRS = [("card arrived", "a"), ("card late", "a"), ("refund me", "b"), ("money back", "b")]

# (id, method, path, request kwargs, status, text the error must contain)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # -- /predict --------------------------------------------------------------------------
    ("predict-invalid-json", "POST", "/predict", raw(b'{"texts": ['), 400, "Invalid JSON"),
    ("predict-array-body", "POST", "/predict", body([1, 2]), 400, "Input should be an object"),
    ("predict-missing-texts", "POST", "/predict", body({}), 400, "texts: Field required"),
    (
        "predict-null-texts",
        "POST",
        "/predict",
        body({"texts": None}),
        400,
        "texts: Input should be a valid array",
    ),
    (
        "predict-nan-texts",
        "POST",
        "/predict",
        raw(b'{"texts": NaN}'),
        400,
        "texts: Input should be a valid array",
    ),
    (
        "predict-number-text",
        "POST",
        "/predict",
        body({"texts": [1]}),
        400,
        "texts.0: Input should be a valid string",
    ),
    (
        "predict-null-text",
        "POST",
        "/predict",
        body({"texts": ["ok", None]}),
        400,
        "texts.1: Input should be a valid string",
    ),
    ("predict-empty-list", "POST", "/predict", body({"texts": []}), 400, "texts must not be empty"),
    (
        "predict-blank-text",
        "POST",
        "/predict",
        body({"texts": ["ok", " \n"]}),
        400,
        "texts[1] is empty",
    ),
    (
        "predict-10k-texts",
        "POST",
        "/predict",
        body({"texts": ["x"] * 10_000}),
        413,
        "10000 texts in one request, the limit is 256",
    ),
    (
        "predict-5mb-text",
        "POST",
        "/predict",
        body({"texts": ["x" * 5_000_000]}),
        413,
        "request body exceeds 2097152 bytes",
    ),
    (
        "predict-long-text",
        "POST",
        "/predict",
        body({"texts": ["x" * 10_001]}),
        413,
        "texts[0] has 10001 characters, the limit is 10000",
    ),
    (
        "predict-invalid-utf8",
        "POST",
        "/predict",
        raw(b'{"texts": ["\xff\xfe"]}'),
        400,
        "Invalid JSON: invalid unicode code point",
    ),
    (
        "predict-control-character",
        "POST",
        "/predict",
        body({"texts": ["a\x00b"]}),
        400,
        "texts[0] contains control character U+0000 at position 1",
    ),
    (
        "predict-top-k-zero",
        "POST",
        "/predict",
        body({"texts": ["ok"], "top_k": 0}),
        400,
        "top_k must be between 1 and 100, got 0",
    ),
    (
        "predict-top-k-negative",
        "POST",
        "/predict",
        body({"texts": ["ok"], "top_k": -5}),
        400,
        "top_k must be between 1 and 100, got -5",
    ),
    (
        "predict-top-k-huge",
        "POST",
        "/predict",
        body({"texts": ["ok"], "top_k": 10**22}),
        400,
        f"top_k must be between 1 and 100, got {10**22}",
    ),
    (
        "predict-top-k-string",
        "POST",
        "/predict",
        body({"texts": ["ok"], "top_k": "three"}),
        400,
        "top_k: Input should be a valid integer",
    ),
    (
        "predict-top-k-fraction",
        "POST",
        "/predict",
        body({"texts": ["ok"], "top_k": 1.5}),
        400,
        "top_k: Input should be a valid integer, got a number with a fractional part",
    ),
    (
        "predict-unknown-field",
        "POST",
        "/predict",
        body({"texts": ["ok"], "modle": "other"}),
        400,
        "unknown field(s) in /predict: 'modle'",
    ),
    (
        "predict-unknown-model",
        "POST",
        "/predict",
        body({"texts": ["ok"], "model": "no-such-model"}),
        404,
        "model 'no-such-model' does not exist or has no production version",
    ),
    (
        "predict-invalid-model-name",
        "POST",
        "/predict",
        body({"texts": ["ok"], "model": "../etc"}),
        400,
        "invalid model name",
    ),
    (
        "predict-text-plain",
        "POST",
        "/predict",
        raw(b"hello", "text/plain"),
        415,
        "unsupported content type 'text/plain' for /predict",
    ),
    (
        "predict-multipart-no-boundary",
        "POST",
        "/predict",
        raw(b'{"texts": ["ok"]}', "multipart/form-data"),
        415,
        "unsupported content type 'multipart/form-data' for /predict",
    ),
    ("predict-get", "GET", "/predict", {}, 405, "GET is not allowed on /predict"),
    # -- /retrain ----------------------------------------------------------------------------
    (
        "retrain-invalid-json",
        "POST",
        "/retrain/submit",
        raw(b'{"examples": '),
        400,
        "invalid retrain request: body: Invalid JSON",
    ),
    (
        "retrain-missing-examples",
        "POST",
        "/retrain/submit",
        body({"mode": "append"}),
        400,
        "examples: Field required",
    ),
    (
        "retrain-empty-examples",
        "POST",
        "/retrain/submit",
        body({"examples": []}),
        400,
        "examples: List should have at least 1 item",
    ),
    (
        "retrain-number-label",
        "POST",
        "/retrain/submit",
        examples(("x", 3)),
        400,
        "examples.0.label: Input should be a valid string",
    ),
    (
        "retrain-object-label",
        "POST",
        "/retrain/submit",
        examples(("x", {"name": "a"})),
        400,
        "examples.0.label: Input should be a valid string",
    ),
    (
        "retrain-null-text",
        "POST",
        "/retrain/submit",
        examples((None, "a")),  # type: ignore[arg-type]
        400,
        "examples.0.text: Input should be a valid string",
    ),
    (
        "retrain-unknown-field",
        "POST",
        "/retrain/submit",
        examples(*OK_PAIRS, epochs=100),
        400,
        "epochs: Extra inputs are not permitted",
    ),
    (
        "retrain-single-class",
        "POST",
        "/retrain/submit",
        examples(("one", "a"), ("two", "a"), mode="replace"),
        400,
        "need at least 2 classes, found 1 ('a')",
    ),
    (
        "retrain-one-example-per-class",
        "POST",
        "/retrain/submit",
        examples(("one", "a"), ("two", "b"), mode="replace"),
        400,
        "class 'a' has 1 example after de-duplication, need at least 2",
    ),
    (
        "retrain-backbone-not-allowed",
        "POST",
        "/retrain/submit",
        examples(*OK_PAIRS, backbone="bert-tiny"),
        400,
        "unknown backbone 'bert-tiny'; allowed: minilm",
    ),
    (
        "retrain-bad-model-name",
        "POST",
        "/retrain/submit",
        examples(*OK_PAIRS, model="../x"),
        400,
        "model: String should match pattern",
    ),
    (
        "retrain-conflicting-duplicates",
        "POST",
        "/retrain/submit",
        examples(("same", "a"), ("same", "b"), *OK_PAIRS),
        400,
        "1 text(s) appear with different labels in this request ('same')",
    ),
    (
        "retrain-control-character",
        "POST",
        "/retrain/submit",
        examples(("bell\x07", "a"), *OK_PAIRS),
        400,
        "examples[0]: text contains control character U+0007 at position 4",
    ),
    (
        "retrain-1001-labels",
        "POST",
        "/retrain/submit",
        examples(*[(f"text {i}", f"label {i}") for i in range(1001)], mode="replace"),
        400,
        "1001 distinct labels, the limit is 1000",
    ),
    (
        "retrain-100k-labels",
        "POST",
        "/retrain/submit",
        examples(*[(f"text {i}", f"label {i}") for i in range(100_000)]),
        413,
        "request body exceeds 2097152 bytes",
    ),
    (
        "retrain-too-many-examples",
        "POST",
        "/retrain/submit",
        examples(*[(f"text {i}", "ab"[i % 2]) for i in range(2001)]),
        413,
        "2001 examples in one request, the limit is 2000",
    ),
    (
        "retrain-bad-mode",
        "POST",
        "/retrain/submit",
        examples(*OK_PAIRS, mode="merge"),
        400,
        "mode: Input should be 'append' or 'replace'",
    ),
    (
        "retrain-text-plain",
        "POST",
        "/retrain/submit",
        raw(b"hello", "text/plain"),
        415,
        "unsupported content type 'text/plain'",
    ),
    (
        "retrain-csv-no-header",
        "POST",
        "/retrain/submit",
        raw(b"hi,a\nho,b\n", "text/csv"),
        400,
        "upload line 1: header must name columns `text` and `label` (or `category`;",
    ),
    (
        "retrain-csv-extra-columns",
        "POST",
        "/retrain/submit",
        raw(b"text,label,source\nhi,a,x\nho,b,y\n", "text/csv"),
        400,
        "upload line 1: unexpected column(s) ['source']",
    ),
    (
        "retrain-csv-invalid-utf8",
        "POST",
        "/retrain/submit",
        raw(b"text,label\n\xff\xfe,a\n", "text/csv"),
        400,
        "upload line 2: undecodable bytes at offset 11",
    ),
    (
        "retrain-csv-ragged-row",
        "POST",
        "/retrain/submit",
        raw(b"text,label\nhi,a,extra\n", "text/csv"),
        400,
        "upload line 2: expected 2 fields, found 3",
    ),
    (
        "retrain-csv-bad-query",
        "POST",
        "/retrain/submit?promote=sometimes",
        raw(b"text,label\nhi,a\n", "text/csv"),
        400,
        "promote: Input should be 'auto', 'always', 'never' or 'shadow'",
    ),
    (
        "retrain-jsonl-bad-line",
        "POST",
        "/retrain/submit",
        raw(b'{"text": "hi", "label": "a"}\n{"text": \n', "application/x-ndjson"),
        400,
        "upload line 2: invalid JSON",
    ),
    (
        "retrain-oversized-body",
        "POST",
        "/retrain/submit",
        raw(b"x" * (2 * 1024 * 1024 + 1), "text/csv"),
        413,
        "request body exceeds 2097152 bytes",
    ),
    (
        "retrain-synchronous-call",
        "POST",
        "/retrain",
        examples(*OK_PAIRS),
        400,
        "POST /retrain is not available: retraining runs as a background job",
    ),
    # -- /models -------------------------------------------------------------------------------
    (
        "promote-unknown-version",
        "POST",
        "/models/promote",
        body({"version": "v20200101-000000-000000-abcd"}),
        404,
        "model 'default' has no version 'v20200101-000000-000000-abcd'",
    ),
    (
        "promote-path-like-version",
        "POST",
        "/models/promote",
        body({"version": "../../etc/passwd"}),
        422,
        "version: String should match pattern",
    ),
    (
        "promote-number-version",
        "POST",
        "/models/promote",
        body({"version": 5}),
        422,
        "version: Input should be a valid string",
    ),
    (
        "promote-invalid-json",
        "POST",
        "/models/promote",
        raw(b'{"version": '),
        422,
        "JSON decode error",
    ),
    (
        "promote-unknown-field",
        "POST",
        "/models/promote",
        body({"version": "previous", "force": True}),
        422,
        "force: Extra inputs are not permitted",
    ),
    ("promote-no-body", "POST", "/models/promote", {}, 422, "Field required"),
    # -- /jobs ---------------------------------------------------------------------------------
    ("job-unknown", "GET", "/jobs/0123456789abcdef", {}, 404, "no job '0123456789abcdef'"),
    (
        "jobs-limit-not-a-number",
        "GET",
        "/jobs?limit=all",
        {},
        422,
        "limit: Input should be a valid integer",
    ),
    ("job-cancel-unknown", "POST", "/jobs/nope/cancel", {}, 404, "no job 'nope'"),
    ("job-retry-unknown", "POST", "/jobs/nope/retry", {}, 404, "no job 'nope'"),
    (
        "job-path-traversal",
        "POST",
        "/jobs/..%2F..%2Fetc/cancel",
        {},
        404,
        "no such endpoint: POST /jobs/../../etc/cancel",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_hostile_request_is_refused_clearly_and_changes_nothing(
    server: Server, method: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    before = db_state(server)
    kwargs = dict(kwargs)
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    assert message in r.json()["error"], r.json()
    assert db_state(server) == before


def test_table_covers_at_least_40_requests() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def nested(depth: int) -> bytes:
    return b"[" * depth + b'"x"' + b"]" * depth


@pytest.mark.parametrize("depth", [100, 1_000, 10_000, 100_000])
@pytest.mark.parametrize(
    ("path", "wrap"),
    [
        ("/predict", lambda inner: b'{"texts": ' + inner + b"}"),
        ("/feedback", lambda inner: b'{"examples": [{"text": "a", "label": ' + inner + b"}]}"),
        ("/retrain/submit", lambda inner: b'{"examples": ' + inner + b"}"),
        ("/models/promote", lambda inner: b'{"version": ' + inner + b"}"),
    ],
)
def test_deeply_nested_json_is_refused_within_milliseconds(
    server: Server, path: str, wrap, depth: int
) -> None:
    before = db_state(server)
    started = time.monotonic()
    r = httpx.post(
        f"{server.url}{path}", content=wrap(nested(depth)), headers={**AUTH, **JSON}, timeout=10
    )
    assert time.monotonic() - started < 10  # no parser recursed (that took minutes)
    assert r.status_code == 400, r.text[:300]
    assert "nests arrays or objects more than 32 levels deep" in r.json()["error"]
    assert db_state(server) == before


def raw_request(server: Server, head: bytes, body_parts: list[bytes], *, pause: float, then: str):
    """Send headers and body pieces with pauses; `then` = "wait" (keep the socket open),
    "half-close" (shut down the write side). Returns (status or None, seconds to answer)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    started = time.monotonic()
    data = b""
    try:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
                time.sleep(pause)
            if then == "half-close":
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed while we were still sending
            pass
        while b"\r\n" not in data:
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - started


def head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_slow_stopped_and_half_closed_bodies_get_an_answer_within_the_deadline(
    server: Server,
) -> None:
    timeout = float(server.env["REFIT_REQUEST_TIMEOUT_S"])
    body = b'{"texts": ["where is my card"]}'
    results = {}
    threads = [
        # one byte per second: slowloris
        threading.Thread(
            target=lambda: results.__setitem__(
                "trickle",
                raw_request(
                    server,
                    head("/predict", len(body)),
                    [bytes([b]) for b in body],
                    pause=1.0,
                    then="wait",
                ),
            )
        ),
        # stops half-way and waits
        threading.Thread(
            target=lambda: results.__setitem__(
                "stopped",
                raw_request(server, head("/feedback", 1000), [body[:10]], pause=0, then="wait"),
            )
        ),
        # half-closed: the client shuts its write side after half the body
        threading.Thread(
            target=lambda: results.__setitem__(
                "half-closed",
                raw_request(
                    server, head("/predict", 1000), [body[:10]], pause=0, then="half-close"
                ),
            )
        ),
    ]
    for t in threads:
        t.start()
    # meanwhile the service answers everyone else at once
    with server.client() as c:
        for _ in range(5):
            assert c.post("/predict", json={"texts": ["card"]}, timeout=30).status_code == 200
    for t in threads:
        t.join(timeout + 30)
    assert results["trickle"][0] == 408 and results["trickle"][1] < timeout + 5, results
    assert results["stopped"][0] == 408 and results["stopped"][1] < timeout + 5, results
    # a half-closed request is either answered (4xx) or its connection closed, in time
    status, seconds = results["half-closed"]
    assert (status is None or 400 <= status < 500) and seconds < timeout + 5, results
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/predict", json={"texts": ["card"]}).status_code == 200
