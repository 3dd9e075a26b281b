"""Who may call what: every route needs a token of a scope, decided per route and never by
a list of paths, deny by default.

Scopes, each including the ones before it: `predict` (inference; enforced only with
`REFIT_PREDICT_AUTH=true`), `label` (the labeling queue, label-error review and the reads
that show stored texts: `@label` and `@private`), `admin` (every other write, the default:
a new write route is protected the moment it exists; `tests/unit/test_routes.py` walks every
route of the app). A read needs no token unless `@private`.

Tokens (`Tokens`): `REFIT_API_TOKEN` (scope admin) and the lines `<scope> <sha256 hex>` of
`REFIT_API_TOKENS_FILE`, re-read within a second of a change (rotation without a restart).
Only digests are kept, compared in constant time against every entry. With neither set the
service is open (and says so at start). The check runs twice from this one rule: early in
`LimitsAndAuthMiddleware`, before a body is read, and as a FastAPI dependency on every
admin route (so a route is protected even where no middleware runs).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.routing import Match

from service.context import Ctx
from service.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])
READS = frozenset({"GET", "HEAD", "OPTIONS"})
SCOPES = ("predict", "label", "admin")  # each includes the ones before it
# BentoML's own endpoints (not FastAPI routes): its @bentoml.api methods by name. Tasks
# (`@bentoml.task`) are always admin, all of their sub-routes included.
PUBLIC_APIS = frozenset({"predict"})
_RELOAD_S = 1.0
log = logging.getLogger(__name__)


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


def unauthorized(scope: str = "admin") -> Unauthorized:
    return Unauthorized(
        "missing or wrong bearer token",
        headers={"www-authenticate": "Bearer"},
        fix=f"send `Authorization: Bearer <token>` with a token of scope `{scope}` or above"
        " (REFIT_API_TOKEN is admin; more in REFIT_API_TOKENS_FILE)",
        scope=scope,
    )


def forbidden(has: str, needs: str) -> Forbidden:
    return Forbidden(
        f"this token's scope is `{has}`; this route needs `{needs}`",
        fix=f"use a token of scope `{needs}` or above (scopes: {', '.join(SCOPES)})",
        scope=needs,
    )


def _declare(access: str) -> Callable[[F], F]:
    def mark(endpoint: F) -> F:
        endpoint.__refit_access__ = access  # type: ignore[attr-defined]
        return endpoint

    return mark


public = _declare("predict")  # a write anyone may call (inference): scope predict
private = _declare("label")  # a read that shows stored user data
label = _declare("label")  # a write annotators make (labeling queue, label-error review)


def scope_of(route: APIRoute) -> str | None:
    """The scope a route needs: its declaration, else admin for a write, None for a read."""
    access = getattr(route.endpoint, "__refit_access__", None)
    if access is not None:
        return access
    return None if set(route.methods or ()) <= READS else "admin"


def needs_token(route: APIRoute) -> bool:
    """Whether the route refuses a caller without a token (predict scope aside)."""
    return scope_of(route) in ("label", "admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_line(scope: str, token: str) -> str:
    """The REFIT_API_TOKENS_FILE line for `token` (what `refit token` prints)."""
    return f"{scope} {_digest(token).hex()}"


def parse_tokens(text: str) -> tuple[list[tuple[str, bytes]], list[str]]:
    """`<scope> <sha256 hex>` per line (`#` comments); the grants and what was wrong."""
    grants, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        digest = parts[1].removeprefix("sha256:") if len(parts) == 2 else ""
        if parts[0] not in SCOPES or len(digest) != 64:
            problems.append(f"line {number}: expected `<{'|'.join(SCOPES)}> <sha256 hex>`")
            continue
        try:
            grants.append((parts[0], bytes.fromhex(digest)))
        except ValueError:
            problems.append(f"line {number}: the digest is not hex")
    return grants, problems


class Tokens:
    """The tokens this process accepts, as sha256 digests: REFIT_API_TOKEN (admin) and
    REFIT_API_TOKENS_FILE, re-read when it changes (checked at most once a second)."""

    def __init__(self, token: SecretStr | None, path: Path | None) -> None:
        self.fixed = [("admin", _digest(token.get_secret_value()))] if token else []
        self.path, self.grants = path, list(self.fixed)
        self.enabled = token is not None or path is not None
        self._stamp: bytes | str | None = None
        self._checked = -_RELOAD_S

    @classmethod
    def of(cls, settings: Any) -> Tokens:
        key = (settings.api_token, settings.api_tokens_file)
        cached = _TOKENS.get(key)
        if cached is None:
            cached = _TOKENS[key] = cls(*key)
        return cached

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < _RELOAD_S:
            return
        self._checked = now
        try:
            data = self.path.read_bytes()  # tiny: compared by content, not by mtime
            stamp = hashlib.sha256(data).digest()
            if stamp == self._stamp:
                return
            grants, problems = parse_tokens(data.decode("utf-8", "replace"))
        except OSError as exc:
            if self._stamp != "missing":
                log.warning("REFIT_API_TOKENS_FILE unreadable (%s): only REFIT_API_TOKEN", exc)
            self._stamp, self.grants = "missing", list(self.fixed)
            return
        for problem in problems:
            log.warning("REFIT_API_TOKENS_FILE %s (line skipped)", problem)
        self._stamp, self.grants = stamp, self.fixed + grants
        log.info("REFIT_API_TOKENS_FILE read: %d token(s)", len(grants))

    def scope(self, header: str | None) -> str | None:
        """The widest scope the bearer token of `header` has; None for none or a wrong one.
        Every entry is compared (in constant time each), so timing says nothing."""
        scheme, _, credential = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return None
        self._refresh()
        digest, best = _digest(credential.strip()), -1
        for scope, expected in self.grants:
            if hmac.compare_digest(digest, expected):
                best = max(best, SCOPES.index(scope))
        return SCOPES[best] if best >= 0 else None

    def refusal(self, needs: str | None, header: str | None, predict_auth: bool) -> ApiError | None:
        """Why a request to a route needing scope `needs` is refused (401/403), or None."""
        if needs is None or not self.enabled or (needs == "predict" and not predict_auth):
            return None
        has = self.scope(header)
        if has is None:
            return unauthorized(needs)
        return forbidden(has, needs) if SCOPES.index(has) < SCOPES.index(needs) else None


_TOKENS: dict[tuple, Tokens] = {}


class AccessRules:
    """`scope(method, path)` for any request: the matching admin route's rule, or, for
    BentoML's endpoints, admin unless a public `@bentoml.api`; None for no route (the 404
    answers it)."""

    def __init__(self, routes: Iterable[APIRoute], apis: Iterable[tuple[str, str, bool]]) -> None:
        self.routes = list(routes)
        self.exact: dict[tuple[str, str], str | None] = {}
        self.task_prefixes: list[str] = []
        for name, path, is_task in apis:
            if is_task:
                self.task_prefixes.append(path)
            else:
                self.exact[("POST", path)] = "predict" if name in PUBLIC_APIS else "admin"
        for route in self.routes:
            if "{" not in route.path:
                for method in route.methods or ():
                    self.exact[(method, route.path)] = scope_of(route)

    def scope(self, method: str, path: str) -> str | None:
        if (method, path) in self.exact:
            return self.exact[(method, path)]
        if any(path == p or path.startswith(p + "/") for p in self.task_prefixes):
            return "admin"
        request = {"type": "http", "path": path, "method": method}
        for route in self.routes:
            if "{" in route.path and route.matches(request)[0] == Match.FULL:
                return scope_of(route)
        return None

    def protected(self, method: str, path: str) -> bool:
        return self.scope(method, path) in ("label", "admin")


def require_token(request: Request, ctx: Ctx) -> None:
    """The FastAPI dependency every admin route carries."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    refused = Tokens.of(ctx.settings).refusal(
        scope_of(route), request.headers.get("authorization"), ctx.settings.predict_auth
    )
    if refused is not None:
        raise refused
