"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.errors import Unauthenticated
from api.middleware import DEFAULT_VERSION
from api.models.users import Role
from api.services.definitions import DefinitionService
from api.services.executions import ExecutionService
from api.services.pagination import MAX_OFFSET, Pagination
from api.services.reconciler import Reconciler
from api.services.users import Principal, UserService
from api.services.webhooks import WebhookService
from api.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_temporal(request: Request) -> Client:
    return request.app.state.temporal


TemporalDep = Annotated[Client, Depends(get_temporal)]


def get_api_version(request: Request) -> int:
    return request.scope.get("wfo.api_version", DEFAULT_VERSION)


ApiVersion = Annotated[int, Depends(get_api_version)]


def get_user_service(session: SessionDep, settings: SettingsDep) -> UserService:
    return UserService(session, settings)


UserServiceDep = Annotated[UserService, Depends(get_user_service)]


def get_definition_service(session: SessionDep, settings: SettingsDep) -> DefinitionService:
    return DefinitionService(session, settings)


DefinitionServiceDep = Annotated[DefinitionService, Depends(get_definition_service)]


def get_execution_service(
    session: SessionDep, settings: SettingsDep, temporal: TemporalDep
) -> ExecutionService:
    return ExecutionService(session, settings, temporal)


ExecutionServiceDep = Annotated[ExecutionService, Depends(get_execution_service)]


def get_reconciler(session: SessionDep, settings: SettingsDep, temporal: TemporalDep) -> Reconciler:
    return Reconciler(session, settings, temporal)


ReconcilerDep = Annotated[Reconciler, Depends(get_reconciler)]


def get_webhook_service(session: SessionDep, settings: SettingsDep) -> WebhookService:
    return WebhookService(session, settings)


WebhookServiceDep = Annotated[WebhookService, Depends(get_webhook_service)]


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An access token from POST /api/auth/login.",
)


async def current_user(
    users: UserServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthenticated()
    return await users.authenticate(credentials.credentials)


CurrentUser = Annotated[Principal, Depends(current_user)]


def _requires(role: Role) -> Any:
    async def dependency(user: CurrentUser) -> Principal:
        user.require(role)
        return user

    dependency.__name__ = f"require_{role.value}"
    return Depends(dependency)


Viewer = CurrentUser
Operator = Annotated[Principal, _requires(Role.OPERATOR)]
Admin = Annotated[Principal, _requires(Role.ADMIN)]


def get_pagination(
    settings: SettingsDep,
    limit: Annotated[
        int, Query(description="Items per page (default 10).", json_schema_extra={"minimum": 1})
    ] = 10,
    offset: Annotated[
        int, Query(description="Items to skip.", json_schema_extra={"minimum": 0, "maximum": MAX_OFFSET})
    ] = 0,
) -> Pagination:
    # The bounds are checked in one place, so a request with a bad limit and a bad offset
    # hears of both (the schema still shows them).
    return Pagination.checked(settings, limit, offset)


PaginationDep = Annotated[Pagination, Depends(get_pagination)]
