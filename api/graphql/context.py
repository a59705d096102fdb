"""The GraphQL context: who is asking, the services, and per-request DataLoaders."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request, WebSocket
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext
from temporalio.client import Client

from api.db import SessionFactory
from api.errors import Unauthenticated
from api.models.definitions import DefinitionPublic
from api.models.executions import TaskExecutionRow
from api.models.users import Role
from api.services.definitions import DefinitionService
from api.services.events import EventFeed
from api.services.executions import ExecutionService
from api.services.reconciler import Reconciler
from api.services.users import Principal, UserService
from api.services.watch import ExecutionWatcher
from api.services.webhooks import WebhookService
from api.settings import Settings


@dataclass
class Services:
    """The services of one unit of work, sharing one database session."""

    definitions: DefinitionService
    executions: ExecutionService
    reconciler: Reconciler
    users: UserService
    webhooks: WebhookService


def bearer_token(value: Any) -> str | None:
    """The token of an `Authorization: Bearer ...` value, if that is what it is."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Context(BaseContext):
    def __init__(self, settings: Settings, sessions: SessionFactory, temporal: Client, feed: EventFeed) -> None:
        super().__init__()
        self.settings = settings
        self.sessions = sessions
        self.temporal = temporal
        self.feed = feed
        self._principal: Principal | None = None
        self.task_loader: DataLoader[int, list[TaskExecutionRow]] = DataLoader(self._load_tasks)
        self.definition_loader: DataLoader[str, DefinitionPublic | None] = DataLoader(self._load_definitions)

    @contextlib.asynccontextmanager
    async def services(self) -> AsyncIterator[Services]:
        async with self.sessions() as session:
            yield Services(
                definitions=DefinitionService(session, self.settings),
                executions=ExecutionService(session, self.settings, self.temporal),
                reconciler=Reconciler(session, self.settings, self.temporal),
                users=UserService(session, self.settings),
                webhooks=WebhookService(session, self.settings),
            )

    def watcher(self) -> ExecutionWatcher:
        return ExecutionWatcher(self.sessions, self.feed, self.settings, self.temporal)

    def _token(self) -> str | None:
        """HTTP: the Authorization header. WebSocket: connection_init's payload, else the handshake's header."""
        params = self.connection_params if isinstance(self.connection_params, dict) else {}
        for key in ("Authorization", "authorization"):
            if key in params:
                return bearer_token(params[key])
        request = self.request
        if isinstance(request, Request | WebSocket):
            return bearer_token(request.headers.get("authorization"))
        return None

    async def principal(self, role: Role = Role.VIEWER) -> Principal:
        """The caller, checked against the stored user now, holding at least `role`."""
        if self._principal is None:
            token = self._token()
            if token is None:
                raise Unauthenticated()
            async with self.services() as services:
                self._principal = await services.users.authenticate(token)
        self._principal.require(role)
        return self._principal

    async def _load_tasks(self, execution_ids: list[int]) -> list[list[TaskExecutionRow]]:
        async with self.services() as services:
            grouped = await services.executions.tasks_of(execution_ids)
        return [grouped.get(i, []) for i in execution_ids]

    async def _load_definitions(self, definition_ids: list[str]) -> list[DefinitionPublic | None]:
        async with self.services() as services:
            found = await services.definitions.get_many(definition_ids)
        return [found.get(i) for i in definition_ids]


async def get_context(connection: HTTPConnection) -> Context:
    """FastAPI dependency building the context (one per HTTP request or WebSocket connection)."""
    state = connection.app.state
    return Context(state.settings, state.sessions, state.temporal, state.feed)
