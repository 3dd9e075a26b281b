"""One error vocabulary for every route: typed errors, one table mapping each to a status,
one response shape `{"error": "what was wrong", "fix": "how to fix it", ...}`.

Routes raise; they never build error responses themselves. Errors from the layers below
(an invalid model name, a store or registry that is away) are mapped here too, so a route
needs no `try` for them. Caller mistakes are 4xx; anything not in the table is a bug and
answers BentoML's generic 500.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from models import InvalidModelNameError, RegistryUnavailable
from service.responses import JSONResponse
from service.stores import StoreUnavailable


class ApiError(Exception):
    """An answer that says what was wrong: `{"error": message, **extra}` (extra: `fix`,
    `problems`, ...), with `status` and optional headers."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.message, self.headers, self.extra = message, headers, extra

    def body(self, *, bare: bool = False) -> dict[str, Any]:
        """`{"error", "fix"...}`, or `{"error"}` alone (the V2 protocol's shape)."""
        return {"error": self.message, **({} if bare else self.extra)}

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI wants them (for middlewares that answer by themselves)."""
        return [(k.encode(), v.encode()) for k, v in (self.headers or {}).items()]

    def response(self, *, bare: bool = False) -> JSONResponse:
        return JSONResponse(self.body(bare=bare), status_code=self.status, headers=self.headers)


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """503: not ready, or a backend away (with `Retry-After` when retrying will help)."""

    status = 503


def retry_later(message: str, **extra: Any) -> Unavailable:
    return Unavailable(message, headers={"Retry-After": "5"}, **extra)


def format_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic error dicts as one line: `texts.0: Input should be a valid string; ...`."""
    parts = []
    for err in errors[:10]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def _api_error(request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    errors = [  # without the offending input: it can be large, and it is the caller's own
        {k: v for k, v in e.items() if k in ("type", "loc", "msg")}
        for e in jsonable_encoder(exc.errors())
    ]
    return JSONResponse(
        {"error": f"invalid request: {format_errors(errors)}", "detail": errors}, status_code=422
    )


def invalid_name(exc: InvalidModelNameError) -> BadRequest:
    return BadRequest(f"invalid model name: {exc}")


async def _invalid_name(request, exc: InvalidModelNameError) -> JSONResponse:
    return invalid_name(exc).response()


async def _unavailable(request, exc: Exception) -> JSONResponse:
    return retry_later(str(exc)).response()


# exception type -> handler: the one table
HANDLERS: dict[type[Exception], Any] = {
    ApiError: _api_error,
    RequestValidationError: _invalid,
    InvalidModelNameError: _invalid_name,
    StoreUnavailable: _unavailable,
    RegistryUnavailable: _unavailable,
}


def install(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)


def reshape_error(body: bytes, status: int, scope: dict[str, Any]) -> bytes:
    """A 4xx body in the one shape: `{"error": "what was wrong", ...}` (see ErrorShapeMiddleware)."""
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
