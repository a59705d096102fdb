"""create_app(): the FastAPI application with its lifespan, middleware, routers and problem handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from api import problems
from api.db import create_engine, listen_url, migrate, session_factory
from api.graphql.schema import graphql_router
from api.middleware import (
    SUPPORTED_VERSIONS,
    ApiVersionMiddleware,
    RequestBodyMiddleware,
    SecurityHeadersMiddleware,
    media_type,
)
from api.models.definitions import configure_limits
from api.pages import STATIC_PATH, pages_router, static_files
from api.rest import auth, executions, health, tasks, users, webhooks, workflows
from api.services.definitions import system_queues
from api.services.events import EventFeed
from api.services.users import UserService
from api.settings import Settings, get_settings
from api.temporal import connect

log = logging.getLogger(__name__)

DESCRIPTION = f"""
Define workflows as DAGs of tasks with synchronization points, run them durably on Temporal,
and watch them over REST and GraphQL.

**Authentication**: `POST /api/auth/login` returns a bearer token; press *Authorize* and paste it.

**Versions**: `/api/...` serves v1 unless `Accept: application/vnd.workflow-orchestration.vN+json` asks for
another; `/api/v1/...` and `/api/v2/...` name the version in the URL (the URL wins). v1 returns
lists as bare arrays, exactly as the API reference shows; v2 wraps them as
`{{"items": [...], "total": n, "limit": l, "offset": o}}`. Responses carry the version served in
their `Content-Type` (`{media_type(1)}`). Supported: {", ".join(f"v{v}" for v in SUPPORTED_VERSIONS)};
any other is 406.

**Errors** are RFC 9457 `application/problem+json`; validation problems list every problem in
`errors`, each with a JSON `pointer` (body) or `parameter` (query).
"""


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        None, description="Validation problems, each with pointer or parameter."
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await asyncio.to_thread(migrate, settings)
    engine = create_engine(settings)
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    if settings.admin_password is not None:
        async with app.state.sessions() as session:
            created = await UserService(session, settings).ensure_admin(
                settings.admin_username, settings.admin_password.get_secret_value()
            )
        if created:
            log.info("created the first admin user %r", settings.admin_username)
    # Lazy: the API starts, and serves what it can from the database, while Temporal is down.
    app.state.temporal = await connect(settings, lazy=True, identity="wfo-api")
    app.state.feed = EventFeed(
        engine, poll_interval=settings.event_poll_seconds, listen_url=listen_url(settings)
    )
    await app.state.feed.start()
    try:
        yield
    finally:
        await app.state.feed.stop()
        await engine.dispose()


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem_ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") == "limit":
                    # The cap is a setting: the document says this server's.
                    parameter.setdefault("schema", {})["maximum"] = app.state.settings.page_max_limit
            if path.startswith("/api/"):
                # JSON answers under /api name their version in their media type (ApiVersionMiddleware).
                for response in responses.values():
                    content = response.get("content", {})
                    if "application/json" in content:
                        body = content.pop("application/json")
                        content.update({media_type(v): body for v in SUPPORTED_VERSIONS})
            if "422" in responses:
                responses["422"] = {"description": "Invalid input", "content": problem_ref}
            if any(s.get("bearerAuth") is not None for s in operation.get("security", [])):
                responses.setdefault(
                    "401", {"description": "Missing or invalid bearer token", "content": problem_ref}
                )
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_api_secrets()
    app = FastAPI(
        title="Workflow Orchestration API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        # Swagger UI is served by api/pages (assets from this service, not a CDN), below; ReDoc is not
        # offered (api/pages.pages_router says why).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # Checked while a body is validated, before any dependency runs (oversized definitions cost nothing more).
    configure_limits(max_tasks=settings.max_tasks, reserved_queues=system_queues(settings))

    api = APIRouter(prefix="/api")
    for module in (auth, users, workflows, executions, tasks, webhooks):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(graphql_router(settings))
    app.include_router(health.router)
    # The consoles only in dev mode unless asked for (WFO_API_DOCS). /openapi.json stays: it is
    # the published contract clients generate code from, and says nothing the API reference does not.
    if settings.api_docs:
        app.include_router(pages_router(app))
        app.mount(STATIC_PATH, static_files(), name="static")

    problems.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    # Outermost last: the body check runs first, then the version negotiation.
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(RequestBodyMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Accept", "Idempotency-Key"],
        )
    # Outermost: every answer carries the headers, refusals of the middleware above included.
    app.add_middleware(SecurityHeadersMiddleware)
    return app
