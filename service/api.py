"""The admin and V2 HTTP API: one FastAPI app mounting one router per route family, with
the error table and the token rule on every route. `/predict` and `/retrain` are BentoML's
own endpoints (service/app.py); everything here reaches the worker's state through
`Depends(service.context.current)`."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from service import errors
from service.auth import require_token
from service.responses import JSONResponse
from service.routes import (
    batch,
    canary,
    console,
    feedback,
    health,
    jobs,
    labeling,
    models,
    predict,
    shadow,
    suspects,
)

ROUTERS = tuple(
    family.router
    for family in (
        models,
        shadow,
        canary,
        feedback,
        labeling,
        suspects,
        batch,
        jobs,
        health,
        predict,
        console,
    )
)


def api_routes() -> list[APIRoute]:
    """Every route of the app (what the access rules and the route walk test see)."""
    return [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]


def create_app() -> FastAPI:
    app = FastAPI(
        title="Refit admin",
        default_response_class=JSONResponse,
        dependencies=[Depends(require_token)],
    )
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
