"""Who may call what: every write route needs the bearer token (`REFIT_API_TOKEN`, when set)
unless it is declared `@public`; a read route needs it only when declared `@private`.

Deny by default, decided per route, never by a list of paths: a new write route is
protected the moment it exists (`tests/unit/test_routes.py` walks every route of the app).
The check runs twice from this one rule: early in `LimitsAndAuthMiddleware`, before a body
is read (so a caller without the token learns nothing and costs nothing), and as a FastAPI
dependency on every admin route (so a route is protected even where no middleware runs).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import Match

from service.context import Ctx
from service.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])
READS = frozenset({"GET", "HEAD", "OPTIONS"})
# BentoML's own endpoints (not FastAPI routes): its @bentoml.api methods by name. Tasks
# (`@bentoml.task`) are always protected, all of their sub-routes included.
PUBLIC_APIS = frozenset({"predict"})


class Unauthorized(ApiError):
    status = 401


def unauthorized() -> Unauthorized:
    return Unauthorized(
        "missing or wrong bearer token",
        headers={"www-authenticate": "Bearer"},
        fix="send `Authorization: Bearer <REFIT_API_TOKEN>`",
    )


def public(endpoint: F) -> F:
    """Declare a write route open to anyone (none is, today)."""
    endpoint.__refit_access__ = "public"  # type: ignore[attr-defined]
    return endpoint


def private(endpoint: F) -> F:
    """Declare a read route that needs the token (it shows stored user data)."""
    endpoint.__refit_access__ = "private"  # type: ignore[attr-defined]
    return endpoint


def needs_token(route: APIRoute) -> bool:
    access = getattr(route.endpoint, "__refit_access__", None)
    if access is not None:
        return access == "private"
    return not set(route.methods or ()) <= READS


def token_matches(header: str | None, token: bytes) -> bool:
    scheme, _, credential = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token)


class AccessRules:
    """`protected(method, path)` for any request: the matching admin route's rule, or, for
    BentoML's endpoints, protected unless a public `@bentoml.api`; False for no route (the
    404 answers it)."""

    def __init__(self, routes: Iterable[APIRoute], apis: Iterable[tuple[str, str, bool]]) -> None:
        self.routes = list(routes)
        self.exact: dict[tuple[str, str], bool] = {}
        self.task_prefixes: list[str] = []
        for name, path, is_task in apis:
            if is_task:
                self.task_prefixes.append(path)
            else:
                self.exact[("POST", path)] = name not in PUBLIC_APIS
        for route in self.routes:
            if "{" not in route.path:
                for method in route.methods or ():
                    self.exact[(method, route.path)] = needs_token(route)

    def protected(self, method: str, path: str) -> bool:
        known = self.exact.get((method, path))
        if known is not None:
            return known
        if any(path == p or path.startswith(p + "/") for p in self.task_prefixes):
            return True
        scope = {"type": "http", "path": path, "method": method}
        for route in self.routes:
            if "{" in route.path and route.matches(scope)[0] == Match.FULL:
                return needs_token(route)
        return False


def require_token(request: Request, ctx: Ctx) -> None:
    """The FastAPI dependency every admin route carries."""
    token = ctx.settings.api_token
    route = request.scope.get("route")
    if token is None or not isinstance(route, APIRoute) or not needs_token(route):
        return
    if not token_matches(request.headers.get("authorization"), token.get_secret_value().encode()):
        raise unauthorized()
