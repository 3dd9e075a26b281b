"""Pure ASGI middlewares: body-size limit, bearer-token auth, and retrain-submit validation.

BentoML's `POST /<task>/submit` answers 200 for any body, so retrain data is validated,
stored and turned into a queued job here, before the task is queued; the task then receives
only the job id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from service import intake
from service.asgi import (
    MAX_JSON_DEPTH,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    header,
    json_too_deep,
    read_body,
    replay,
    send_json,
)
from service.auth import Tokens
from service.errors import ApiError, reshape_error
from service.settings import Settings
from service.stores import StoreUnavailable

log = logging.getLogger(__name__)


class DeadlineMiddleware:
    """Every request is answered within `REFIT_REQUEST_TIMEOUT_S`: a body that trickles in
    or stops half-way gets 408, a handler that takes too long 503 (with Retry-After), and
    the connection is closed; nothing waits forever, so SIGTERM drains in time."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.timeout = settings.request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.timeout:
            await self.app(scope, receive, send)
            return
        state = {"started": False, "body_done": scope.get("method") in ("GET", "HEAD")}
        # One timer on this request's own task (no extra tasks: this runs on every request)
        deadline = asyncio.timeout(self.timeout)

        async def tracked_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and not deadline.expired():
                # The deadline is on the answer, not on work the app goes on with after it
                # (BentoML runs a submitted task in the same ASGI call once it answered).
                deadline.reschedule(None)

        try:
            async with deadline:
                await self.app(scope, tracked_receive, tracked_send)
        except Exception:
            if not deadline.expired():
                raise  # the app's own error (a TimeoutError included), not the deadline
            # past the deadline whatever the cancellation turned into: answered below
        if not deadline.expired():
            return
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


class LimitsAndAuthMiddleware:
    """401/403 for routes whose scope the bearer token lacks when tokens are configured
    (`scope(method, path)`: the routes' own declarations, see service/auth.py), before
    any body is read; then 413 for bodies over the limit (by content-length, else while
    streaming) and 400 for JSON nested too deep."""

    def __init__(self, app, settings: Settings, scope: Callable[[str, str], str | None]) -> None:
        self.app = app
        self.settings = settings
        self.scope = scope
        self.tokens = Tokens.of(settings)

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
        refused = self.tokens.enabled and self.tokens.refusal(
            self.scope(scope.get("method", ""), path),
            header(scope, b"authorization"),
            self.settings.predict_auth,
        )
        if refused:
            await send_json(send, refused.status, refused.body(), refused.header_pairs())
            return
        limit = self.settings.max_body_bytes
        length = header(scope, b"content-length")
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
            kind = (header(scope, b"content-type") or "application/json").split(";")[0]
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
            problem = intake.precheck(path, body, header(scope, b"content-type"))
            if problem is not None:
                await send_json(send, *problem)
                return
        await self.app(scope, receive, send)


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
            body = reshape_error(b"".join(chunks), start["status"], scope)
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


class RetrainSubmitMiddleware:
    """`POST /retrain/submit` answers 4xx before anything is stored when the data cannot be
    trained on (BentoML's task endpoint would accept any body): the body goes to
    `service.intake`, which stores the examples and a queued job; BentoML's task queue gets
    only `{"job_id": ...}`."""

    def __init__(self, app, settings: Settings, context: Callable[[], Any]) -> None:
        self.app = app
        self.settings = settings
        self.context = context  # () -> this worker's Context, or None before it exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != SUBMIT_PATH
            or scope.get("method") != "POST"
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, self.settings.max_body_bytes)
        ctx = self.context()
        if ctx is None:
            await send_json(send, 503, {"error": "starting"}, [(b"retry-after", b"5")])
            return
        content_type = (
            (header(scope, b"content-type") or "application/json").split(";")[0].strip().lower()
        )
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            job = await asyncio.to_thread(
                intake.accept_retrain, body, content_type, query, self.settings, ctx.store
            )
        except ApiError as refused:
            await send_json(send, refused.status, refused.body(), refused.header_pairs())
            return
        except StoreUnavailable as exc:
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


class BoundedMetricsMiddleware:
    """`GET /metrics` without the series of versions nothing serves or points to any more
    (`service.metrics.exposition`). Before this worker's service can tell which versions to
    keep (`keep_versions()` is None), or when that fails (the store is away), BentoML's own
    handler answers with everything."""

    def __init__(self, app: Any, keep_versions: Callable[[], Callable[[], Any] | None]) -> None:
        self.app = app
        self.keep_versions = keep_versions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from service import metrics

        if (
            scope["type"] != "http"
            or scope["path"] != "/metrics"
            or scope["method"] not in ("GET", "HEAD")
            or (keep_versions := self.keep_versions()) is None
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


PredictHandler = Callable[..., Awaitable[Any]]  # (texts, top_k, model, *, route_key)


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
            key = header(scope, b"x-refit-route-key")  # sticky canary routing
            response = await handler(*request, route_key=key)
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
    if type(payload) is not dict or not payload.keys() <= intake.PREDICT_FIELDS:
        return None
    texts, top_k, model = payload.get("texts"), payload.get("top_k", 1), payload.get("model")
    if type(texts) is not list or type(top_k) is not int:
        return None
    if model is not None and type(model) is not str:
        return None
    if not all(type(t) is str for t in texts):
        return None
    return texts, top_k, model
