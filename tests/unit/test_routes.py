"""Every route of the app, walked: a write route is protected unless declared public (deny by
default, service/auth.py), and the token is enforced by the route itself, with no server
and no middleware in front of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api import api_routes, create_app
from service.auth import READS, AccessRules, needs_token, scope_of
from service.context import current
from service.settings import Settings

# The only write routes anyone may call: inference over V2 (like /predict).
PUBLIC_WRITES = {"v2_infer", "v2_version_infer"}
# Reads that show stored user data.
PRIVATE_READS = {"uncertain", "queue_view", "suspects"}
# Static files of the console, left out of the OpenAPI document (they hold no data).
UNDOCUMENTED = {("GET", "/ui"), ("GET", "/ui/{name}")}
TOKEN = "route-test-token"


def routes() -> list[APIRoute]:
    walked = api_routes()
    # the walk sees every operation the app documents, so no route escapes it
    documented = {
        (method.upper(), path)
        for path, ops in create_app().openapi()["paths"].items()
        for method in ops
    }
    assert {(m, r.path) for r in walked for m in r.methods} == documented | UNDOCUMENTED
    return walked


def test_every_write_route_needs_the_token_unless_declared_public() -> None:
    writes = [r for r in routes() if not set(r.methods) <= READS]
    assert len(writes) >= 12  # the walk sees the app's routes
    open_writes = {r.name for r in writes if not needs_token(r)}
    assert open_writes == PUBLIC_WRITES, f"unprotected write routes: {open_writes - PUBLIC_WRITES}"
    private = {r.name for r in routes() if set(r.methods) <= READS and needs_token(r)}
    assert private == PRIVATE_READS


def test_an_undeclared_new_write_route_is_protected() -> None:
    router = APIRouter()

    @router.post("/something-new")
    def something_new() -> dict:
        return {}

    assert needs_token(router.routes[0])


@pytest.fixture
def client() -> TestClient:
    app = create_app()
    settings = Settings(api_token=TOKEN)
    app.dependency_overrides[current] = lambda: SimpleNamespace(settings=settings)
    return TestClient(app, raise_server_exceptions=False)


def test_each_protected_route_refuses_a_request_without_the_token(client: TestClient) -> None:
    checked = 0
    for route in routes():
        if not needs_token(route):
            continue
        path = route.path.replace("{name}", "m").replace("{job_id}", "j").replace("{version}", "v")
        path = path.replace("{item}", "1").replace("{index}", "0")
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer wrong-token"}):
                r = client.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                body = r.json()
                assert body["error"] == "missing or wrong bearer token"
                assert (
                    body["scope"] == scope_of(route) and f"scope `{body['scope']}`" in body["fix"]
                )
                assert r.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked >= 2 * 12


def test_bentoml_endpoints_follow_the_same_rule() -> None:
    """/predict is the one public @bentoml.api; a task's every sub-route is protected;
    a path with no route is left to the 404."""
    from service.app import Refit

    rules = AccessRules(api_routes(), [(n, a.route, a.is_task) for n, a in Refit.apis.items()])
    assert not rules.protected("POST", "/predict")
    for sub in ("", "/submit", "/status", "/get", "/cancel", "/retry"):
        for method in ("GET", "POST", "PUT"):
            assert rules.protected(method, "/retrain" + sub)
    assert rules.protected("POST", "/models/promote")
    assert rules.protected("DELETE", "/models/some-model")
    assert rules.protected("POST", "/jobs/abc/cancel")
    assert rules.protected("GET", "/feedback/uncertain")
    assert not rules.protected("GET", "/models/some-model")
    assert not rules.protected("POST", "/v2/models/m/infer")
    assert not rules.protected("POST", "/no/such/route")
    hypothetical = AccessRules(
        api_routes(), [("predict", "/predict", False), ("label", "/label", False)]
    )
    assert hypothetical.protected("POST", "/label")  # a new @bentoml.api is protected
