"""Pure ASGI middlewares: body-size limit, bearer-token auth, and retrain-submit validation.

BentoML's `POST /<task>/submit` answers 200 for any body, so retrain data is validated,
stored and turned into a queued job here, before the task is queued; the task then receives
only the job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from pydantic import ValidationError

from service.schemas import RetrainOptions, RetrainRequest
from service.settings import Settings
from service.state import open_store
from service.store import StoreBusy

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PROTECTED = ("/retrain", "/models/promote", "/models/rollback", "/models/shadow", "/feedback")
PREDICT_FIELDS = {"texts", "top_k", "model"}
MAX_JSON_DEPTH = 32  # the deepest schema (retrain examples) needs 3
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON (or NDJSON) body nests arrays/objects more than `limit` deep, found
    before any parser recurses into it: strings removed by one regex pass, then a running
    sum over the brackets in 1 MiB numpy chunks. Linear, C-speed, bounded memory."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    stripped = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    depth = 0
    for start in range(0, stripped.size, 1 << 20):
        chunk = stripped[start : start + (1 << 20)]
        step = ((chunk == 0x5B) | (chunk == 0x7B)).astype(np.int32)
        step -= ((chunk == 0x5D) | (chunk == 0x7D)).astype(np.int32)
        running = np.cumsum(step) + depth
        if running.size and int(running.max()) > limit:
            return True
        depth = int(running[-1]) if running.size else depth
    return False


class DeadlineMiddleware:
    """Every request is answered within `REFIT_REQUEST_TIMEOUT_S`: a body that trickles in
    or stops half-way gets 408, a handler that takes too long 503 (with Retry-After), and
    the connection is closed; nothing waits forever, so SIGTERM drains in time."""

    def __init__(self, app, settings: Settings | None = None) -> None:
        self.app = app
        self.timeout = (settings or Settings()).request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.timeout:
            await self.app(scope, receive, send)
            return
        state = {"started": False, "body_done": scope.get("method") in ("GET", "HEAD")}
        answered = asyncio.Event()  # the response's last byte was sent

        async def tracked_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.set()

        # The deadline is on the answer, not on work the app goes on with after it (BentoML
        # runs a submitted task in the same ASGI call once the response is sent).
        app = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        sent = asyncio.ensure_future(answered.wait())
        done, _ = await asyncio.wait(
            {app, sent}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if done:
            sent.cancel()
            await app
            return
        sent.cancel()
        app.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await app
        method, path = scope.get("method", ""), scope.get("path", "")
        log.warning(
            "%s %s: no answer after %g s (REFIT_REQUEST_TIMEOUT_S)", method, path, self.timeout
        )
        if state["started"]:
            return  # the server closes the connection after an unfinished response
        close = [(b"connection", b"close")]
        if not state["body_done"]:
            await send_json(
                send,
                408,
                {
                    "error": f"the request body did not arrive within {self.timeout:g} s",
                    "fix": "send the whole body at once (REFIT_REQUEST_TIMEOUT_S)",
                },
                close,
            )
            return
        await send_json(
            send,
            503,
            {
                "error": f"no answer within {self.timeout:g} s (REFIT_REQUEST_TIMEOUT_S);"
                " the request was abandoned",
                "fix": "retry later, send smaller requests, or raise REFIT_REQUEST_TIMEOUT_S",
            },
            [(b"retry-after", b"5"), *close],
        )


SUBMIT_PATH = "/retrain/submit"
UPLOAD_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json": "json",
}


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class LimitsAndAuthMiddleware:
    """413 for bodies over the limit (by content-length, else while streaming); 401 for
    write endpoints without the right bearer token when one is configured."""

    def __init__(self, app, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings()
        token = self.settings.api_token
        self._token = token.get_secret_value().encode() if token is not None else None

    def _too_large(self) -> dict[str, Any]:
        return {
            "error": f"request body exceeds {self.settings.max_body_bytes} bytes",
            "fix": "send fewer or shorter texts per request, or raise REFIT_MAX_BODY_BYTES",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        protected = (
            path.startswith(PROTECTED)
            or (path.startswith("/jobs/") and path.endswith(("/cancel", "/retry")))
            or (
                path.startswith("/models/")
                and path.endswith(("/promote", "/rollback", "/settings"))
            )
            or (scope.get("method") == "DELETE" and path.startswith("/models/"))
        )
        if self._token is not None and protected:
            given = _header(scope, b"authorization") or ""
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credential.strip().encode(), self._token
            ):
                await send_json(
                    send,
                    401,
                    {
                        "error": "missing or wrong bearer token",
                        "fix": "send `Authorization: Bearer <REFIT_API_TOKEN>`",
                    },
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        limit = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_json(send, 413, self._too_large())
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge:
                await send_json(send, 413, self._too_large())
                return
            receive = replay(body)
            kind = (_header(scope, b"content-type") or "application/json").split(";")[0]
            if "json" in kind.strip().lower() and json_too_deep(body):
                await send_json(
                    send,
                    400,
                    {
                        "error": f"the JSON body nests arrays or objects more than {MAX_JSON_DEPTH}"
                        " levels deep; no endpoint accepts that",
                        "fix": 'send the documented shape, e.g. {"texts": ["some text"]}',
                    },
                )
                return
            problem = _precheck(path, body, _header(scope, b"content-type"))
            if problem is not None:
                await send_json(send, *problem)
                return
        await self.app(scope, receive, send)


def _precheck(
    path: str, body: bytes, content_type: str | None
) -> tuple[int, dict[str, str]] | None:
    """What BentoML's own input handling gets wrong or lets through: non-JSON bodies and
    unknown fields in /predict (a 500 or silently ignored), and the synchronous
    `POST /retrain` (retraining only runs as a queued job)."""
    if path == "/retrain":
        return 400, {
            "error": "POST /retrain is not available: retraining runs as a background job",
            "fix": "POST the examples to /retrain/submit and poll GET /jobs/{job_id}",
        }
    if path == "/predict":
        kind = (content_type or "application/json").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, {
                "error": f"unsupported content type {kind!r} for /predict",
                "fix": 'send application/json: {"texts": [...]}',
            }
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return None  # BentoML reports the JSON error
        if isinstance(payload, dict):
            unknown = sorted(set(payload) - PREDICT_FIELDS)
            if unknown:
                return 400, {
                    "error": f"unknown field(s) in /predict: {', '.join(map(repr, unknown[:5]))}",
                    "fix": 'send only {"texts": [...], "top_k": N, "model": "name"}',
                }
    return None


def format_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic error dicts as one line: `texts.0: Input should be a valid string; ...`."""
    parts = []
    for err in errors[:10]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _format_validation(exc: ValidationError) -> str:
    return format_errors(exc.errors(include_input=False))


class ErrorShapeMiddleware:
    """Every 4xx answers `{"error": "what was wrong", ...}` in JSON.

    BentoML answers a body that fails its input model with `{"error": "1 validation error
    for Input", "detail": [...]}`; this says what was wrong instead (`texts.0: Input should
    be a valid string`), matching its documented `InvalidArgument` schema (`detail` a
    string). Plain-text 404/405s from the router and FastAPI's `{"detail": "..."}` get the
    same JSON shape. Successful responses pass through untouched.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def reshape(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500:
                    held["start"] = message
                else:
                    await send(message)
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = held.pop("start")
            body = _error_body(b"".join(chunks), start["status"], scope)
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)


def _error_body(body: bytes, status: int, scope: Scope) -> bytes:
    phrase = HTTPStatus(status).phrase
    try:
        payload = json.loads(body)
    except ValueError:  # the router's plain-text answers
        method, path = scope.get("method", ""), scope.get("path", "")
        if status == 404:
            text = f"no such endpoint: {method} {path}; the API is listed at /docs"
        elif status == 405:
            text = f"{method} is not allowed on {path}; the API is listed at /docs"
        else:
            text = body.decode("utf-8", "replace").strip() or phrase
        return json.dumps({"error": text}).encode()
    if not isinstance(payload, dict):
        return json.dumps({"error": phrase, "detail": str(payload)}).encode()
    detail = payload.get("detail")
    pydantic_errors = isinstance(detail, list) and all(isinstance(d, dict) for d in detail)
    if pydantic_errors and status == 400:
        text = format_errors(detail)
        return json.dumps({"error": f"invalid request: {text}", "detail": text}).encode()
    if "error" not in payload:
        return json.dumps({"error": str(detail or phrase), **payload}).encode()
    return body


class RetrainSubmitMiddleware:
    """Validates `POST /retrain/submit`, stores the examples and a queued job atomically,
    and forwards `{"job_id": ...}` to BentoML's task queue. Answers 4xx before anything is
    stored when the data cannot be trained on."""

    def __init__(self, app, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings()
        self.store = open_store(self.settings, migrate=False)  # migrated at deployment

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != SUBMIT_PATH
            or scope.get("method") != "POST"
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, self.settings.max_body_bytes)
        try:
            examples, options = self._parse(scope, body)
            job = await asyncio.to_thread(self._accept, examples, options)
        except _Reject as reject:
            await send_json(send, reject.status, {"error": reject.message, **reject.extra})
            return
        except StoreBusy as exc:
            log.warning("retrain submit refused: %s", exc)
            await send_json(send, 503, {"error": str(exc)}, [(b"retry-after", b"5")])
            return
        forwarded = json.dumps({"job_id": job.id}).encode()
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(forwarded)).encode()),
        ]
        scope = {**scope, "headers": headers}

        async def send_with_job(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-refit-job-id", job.id.encode())],
                }
            await send(message)

        await self.app(scope, replay(forwarded), send_with_job)

    def _parse(self, scope: Scope, body: bytes) -> tuple[list[tuple[Any, Any]], RetrainOptions]:
        content_type = (
            (_header(scope, b"content-type") or "application/json").split(";")[0].strip().lower()
        )
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if content_type == "application/json" and not query:
            try:
                request = RetrainRequest.model_validate_json(body)
            except ValidationError as exc:
                raise _Reject(400, f"invalid retrain request: {_format_validation(exc)}") from None
            examples = [(e.text, e.label) for e in request.examples]
            options = RetrainOptions(**request.model_dump(exclude={"examples"}))
            return examples, options
        fmt = UPLOAD_TYPES.get(content_type)
        if fmt is None:
            raise _Reject(
                415,
                f"unsupported content type {content_type!r}",
                fix="send JSON {examples: [...]} or upload text/csv or application/x-ndjson with options as query parameters",
            )
        try:
            options = RetrainOptions.model_validate(query)
        except ValidationError as exc:
            raise _Reject(400, f"invalid query parameters: {_format_validation(exc)}") from None
        from training.data import DataError, parse_bytes  # pure Python: no torch

        try:
            dataset = parse_bytes(body, fmt, "upload", check_classes=False, extra_columns=False)
        except DataError as exc:
            raise _Reject(400, f"invalid examples: {exc}", problems=exc.problems[:20]) from None
        return list(zip(dataset.texts, dataset.labels, strict=True)), options

    def _accept(self, examples: list[tuple[Any, Any]], options: RetrainOptions):
        from training.data import DataError, build_dataset, check_class_counts

        allowed = ["minilm", *sorted(self.settings.backbones)]
        if options.backbone is not None and options.backbone not in allowed:
            raise _Reject(
                400,
                f"unknown backbone {options.backbone!r}; allowed: {', '.join(allowed)}",
                fix="name one of them, or add it to REFIT_BACKBONES"
                ' ({"NAME": "/local/hf/folder"}) and restart',
            )
        limit = self.settings.max_examples_per_request
        if len(examples) > limit:
            raise _Reject(
                413,
                f"{len(examples)} examples in one request, the limit is {limit}",
                fix="split the upload or raise REFIT_MAX_EXAMPLES_PER_REQUEST",
            )
        try:
            dataset = build_dataset(
                ((f"examples[{i}]", t, lab) for i, (t, lab) in enumerate(examples)),
                check_classes=False,
            )
            if dataset.conflicts:
                shown = ", ".join(repr(t[:60]) for t in dataset.conflicts[:5])
                raise DataError(
                    [
                        f"{len(dataset.conflicts)} text(s) appear with different labels in this request ({shown}); keep one label per text"
                    ]
                )
            model = options.model or self.settings.model_name
            combined: dict[str, int] = {}
            base = self.store.dataset(model) if options.mode == "append" else []
            labeled = dict(base)
            labeled.update(zip(dataset.texts, dataset.labels, strict=True))
            for label in labeled.values():
                combined[label] = combined.get(label, 0) + 1
            if len(combined) > self.settings.max_classes:
                raise DataError(
                    [
                        f"{len(combined)} distinct labels, the limit is {self.settings.max_classes};"
                        " check that the label column holds class names, or raise REFIT_MAX_CLASSES"
                    ]
                )
            check_class_counts(combined)
        except DataError as exc:
            raise _Reject(400, f"invalid examples: {exc}", problems=exc.problems[:20]) from None
        job = self.store.create_job(
            model,
            options.model_dump(exclude={"model"}),
            list(zip(dataset.texts, dataset.labels, strict=True)),
            mode=options.mode,
            source="http",
            owner_pid=os.getpid() if self.settings.trainer == "embedded" else None,
        )
        log.info("job %s queued: %d examples, mode %s", job.id, len(dataset), options.mode)
        return job


class _Reject(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        self.status = status
        self.message = message
        self.extra = extra
        super().__init__(message)


class BoundedMetricsMiddleware:
    """`GET /metrics` without the series of versions nothing serves or points to any more
    (`service.metrics.exposition`). Until the service has told which versions to keep
    (`metrics.KEEP_VERSIONS`), or when that fails (the store is away), BentoML's own
    handler answers with everything."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from service import metrics

        keep_versions = metrics.KEEP_VERSIONS
        if (
            scope["type"] != "http"
            or scope["path"] != "/metrics"
            or scope["method"] not in ("GET", "HEAD")
            or keep_versions is None
        ):
            await self.app(scope, receive, send)
            return
        try:
            keep = await asyncio.to_thread(keep_versions)
            body, content_type = await asyncio.to_thread(metrics.exposition, keep)
        except Exception as exc:
            log.warning("metrics not filtered by version (%s); exposing every series", exc)
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


PredictHandler = Callable[[list[str], int, str | None], Awaitable[Any]]


class PredictFastPath:
    """`POST /predict` with a well-formed body goes straight to the service's predict code,
    skipping BentoML's router, request context and input descriptor (~1 ms of a 3.5 ms
    answer at concurrency 1; profiled with py-spy, see docs/benchmarks.md). It runs inside
    every other middleware (BentoML's metrics and tracing, the deadline, limits and auth),
    and only takes bodies that are exactly `{"texts": [str, ...], "top_k": int, "model":
    str}` (top_k and model optional): anything else (wrong types, a query string, coercible values such as
    `"top_k": "3"`) goes down BentoML's path, so every validation message stays the one
    BentoML and `ErrorShapeMiddleware` give. `handler` returns None until the worker's
    service instance exists (then requests go the usual way)."""

    def __init__(self, app, handler: Callable[[], PredictHandler | None]) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != "/predict"
            or scope.get("method") != "POST"
            or scope.get("query_string")
            or (handler := self.handler()) is None
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, 1 << 62)  # the limits middleware bounded it already
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        request = _plain_predict(payload)
        if request is None:
            await self.app(scope, replay(body), send)
            return
        try:
            response = await handler(*request)
        except Exception:  # a bug, not the caller's mistake: a generic 500 now, never a hang
            request_id = os.urandom(8).hex()
            log.exception("POST /predict failed (request %s)", request_id)
            await send_json(
                send,
                500,
                {"error": f"internal error (request {request_id}); the service log has details"},
            )
            return
        await response(scope, replay(b""), send)


def _plain_predict(payload: Any) -> tuple[list[str], int, str | None] | None:
    if type(payload) is not dict or not payload.keys() <= PREDICT_FIELDS:
        return None
    texts, top_k, model = payload.get("texts"), payload.get("top_k", 1), payload.get("model")
    if type(texts) is not list or type(top_k) is not int:
        return None
    if model is not None and type(model) is not str:
        return None
    if not all(type(t) is str for t in texts):
        return None
    return texts, top_k, model
