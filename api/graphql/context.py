"""The GraphQL context: who is asking, the services, and per-request DataLoaders; and the
WebSocket sessions: how long a connection may act for its user.

A WebSocket connection authenticates once, at connection_init, and may then stay open for
hours. So that disabling a user, changing their role or resetting their password (each bumps
the user's token version) and the token's own expiry end what the connection may do, as they do
for REST at the next request:

* every operation started on a connection checks the token against the stored user again;
* each connection has a watchdog that closes it when its token expires, and, while operations
  (subscriptions) run, checks the user every `WFO_GRAPHQL_WS_RECHECK_SECONDS`;
* a connection runs at most `WFO_GRAPHQL_WS_MAX_OPERATIONS` operations at once, and a user holds
  at most `WFO_GRAPHQL_WS_MAX_CONNECTIONS_PER_USER` connections on one API process.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from fastapi import Request, WebSocket
from graphql import GraphQLError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader
from strawberry.fastapi import BaseContext
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage as LegacyInitMessage
from strawberry.subscriptions.protocols.graphql_ws.types import StartMessage
from temporalio.client import Client

from api.db import SessionFactory
from api.errors import AppError, Unauthenticated
from api.graphql.errors import code_of
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

log = logging.getLogger(__name__)

#: Close code of a WebSocket session that ends: its token expired, or its user was disabled,
#: changed role or had the password reset (each bumps the token version). Both protocols.
CLOSE_UNAUTHORIZED = 4401
#: Close code refusing a connection_init: the user already holds the most connections allowed here.
CLOSE_TOO_MANY = 4429
#: WebSocket close reasons are at most 123 bytes.
MAX_REASON_BYTES = 123


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


def expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and now >= expires_at


def seconds_to_next_check(expires_at: datetime | None, now: datetime, recheck_seconds: float) -> float:
    """How long a connection's watchdog sleeps: one re-check period, or less if the token expires sooner."""
    if expires_at is None:
        return recheck_seconds
    return max(0.0, min(recheck_seconds, (expires_at - now).total_seconds()))


class ConnectionCounts:
    """Open WebSocket connections per user, on this process."""

    def __init__(self) -> None:
        self._open: Counter[int] = Counter()

    def enter(self, user_id: int, limit: int) -> bool:
        """Count one more connection of the user, unless they hold `limit` already."""
        if self._open[user_id] >= limit:
            return False
        self._open[user_id] += 1
        return True

    def leave(self, user_id: int) -> None:
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]


class Context(BaseContext):
    def __init__(
        self,
        settings: Settings,
        sessions: SessionFactory,
        temporal: Client,
        feed: EventFeed,
        connections: ConnectionCounts | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.sessions = sessions
        self.temporal = temporal
        self.feed = feed
        self.connections = connections or ConnectionCounts()
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
        """The caller, checked against the stored user (once per HTTP request; on a WebSocket
        connection again before each operation, see `recheck`), holding at least `role`."""
        # A local: on a WebSocket connection, `recheck` may clear the cached one meanwhile.
        principal = self._principal
        if principal is None:
            token = self._token()
            if token is None:
                raise Unauthenticated()
            async with self.services() as services:
                principal = await services.users.authenticate(token)
            self._principal = principal
        if expired(principal.expires_at, datetime.now(UTC)):
            # A connection outlives its token: what was checked then is not valid now.
            raise Unauthenticated("The bearer token has expired; log in again.", invalid_token=True)
        principal.require(role)
        return principal

    async def recheck(self) -> Principal:
        """The caller checked against the stored user again (disabled, role changed, password reset?)."""
        self._principal = None
        return await self.principal()

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
    connections = getattr(state, "graphql_ws_connections", None)
    if connections is None:
        # One count per app, made at its first request (no await in between: no race).
        connections = state.graphql_ws_connections = ConnectionCounts()
    return Context(state.settings, state.sessions, state.temporal, state.feed, connections)


# --- WebSocket sessions ----------------------------------------------------------------------------


def _too_many_operations(limit: int) -> GraphQLError:
    return GraphQLError(
        f"This connection already runs {limit} operations (WFO_GRAPHQL_WS_MAX_OPERATIONS); complete one first.",
        extensions={"code": "RATE_LIMITED", "status": 429},
    )


class _SessionGuard(abc.ABC):
    """What both protocols' handlers add to strawberry's: admission at connection_init (the
    per-user connection limit), a check of the session before each operation (and the
    per-connection operation limit), a watchdog, and the end of the session.

    A session ends by closing the socket with CLOSE_UNAUTHORIZED (4401) and a reason; on the
    legacy graphql-ws protocol a `connection_error` (payload: `code`, `message`, as in GraphQL
    errors) comes first, that protocol having no close codes of its own."""

    legacy: ClassVar[bool]
    context: Context
    websocket: AsyncWebSocketAdapter
    send_message: Callable[[Any], Awaitable[None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._user_id: int | None = None
        self._expires_at: datetime | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = False
        # Counted in handle_subscribe / handle_start instead, with a clearer answer than strawberry's.
        self.max_subscriptions_per_connection: int | None = None

    async def handle(self) -> None:
        try:
            await super().handle()  # type: ignore[misc]
        finally:
            await self._finish()

    @abc.abstractmethod
    def _busy(self) -> bool:
        """Whether operations run on this connection (each protocol keeps them its own way)."""

    @abc.abstractmethod
    async def _stop_operations(self) -> None:
        """End every operation running on this connection."""

    async def _admit(self, payload: dict[str, object] | None) -> bool:
        """connection_init: counts the connection against its user's limit; False if refused
        (and closed). An invalid token is left to on_ws_connect, which refuses it as before."""
        self.context.connection_params = payload
        try:
            principal = await self.context.principal()
        except AppError:
            return True
        limit = self.context.settings.graphql_ws_max_connections_per_user
        if not self.context.connections.enter(principal.id, limit):
            message = f"Too many WebSocket connections of this user (WFO_GRAPHQL_WS_MAX_CONNECTIONS_PER_USER={limit})."
            await self._end(CLOSE_TOO_MANY, "RATE_LIMITED", message)
            return False
        self._user_id, self._expires_at = principal.id, principal.expires_at
        return True

    def _accepted(self, acknowledged: bool) -> None:
        """After strawberry's connection_init: watch the session, or stop counting a refused one."""
        if self._user_id is None or self._watchdog is not None:
            return
        if acknowledged:
            self._watchdog = asyncio.create_task(self._watch(), name="graphql-ws-session")
        else:
            self.context.connections.leave(self._user_id)
            self._user_id = None

    async def _still_valid(self) -> bool:
        """Before an operation starts: the session as REST would see it now; ends it if revoked.
        A database error is no verdict: the operation's own check of the caller then fails."""
        try:
            await self.context.recheck()
        except Unauthenticated as exc:
            await self._end(CLOSE_UNAUTHORIZED, code_of(exc), exc.detail)
            return False
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not re-check a WebSocket session: %s", exc)
        return True

    async def _watch(self) -> None:
        """Closes the connection when its token expires; while operations run, re-checks the
        user every WFO_GRAPHQL_WS_RECHECK_SECONDS (an idle connection re-checks at its next operation)."""
        recheck = self.context.settings.graphql_ws_recheck_seconds
        while not self._ended:
            await asyncio.sleep(seconds_to_next_check(self._expires_at, datetime.now(UTC), recheck))
            if expired(self._expires_at, datetime.now(UTC)):
                await self._end(
                    CLOSE_UNAUTHORIZED, "UNAUTHENTICATED", "The bearer token has expired; log in again."
                )
            elif self._busy():
                await self._still_valid()

    async def _end(self, close_code: int, code: str, message: str) -> None:
        """Stops every operation, then closes the socket (after a connection_error on graphql-ws)."""
        if self._ended:
            return
        self._ended = True
        await self._stop_operations()
        reason = message.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
        # The client may be gone already: nothing to tell then.
        with contextlib.suppress(Exception):
            if self.legacy:
                await self.send_message(
                    {"type": "connection_error", "payload": {"code": code, "message": message}}
                )
            await self.websocket.close(close_code, reason)

    async def _finish(self) -> None:
        """The connection is over: no watchdog, no longer counted."""
        self._ended = True
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._user_id is not None:
            self.context.connections.leave(self._user_id)
            self._user_id = None


class SessionTransportWSHandler(_SessionGuard, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with sessions that end. Close codes: 4401 when the session ends (token
    expired, user disabled, role changed, password reset); 4429 refusing connection_init when the
    user holds WFO_GRAPHQL_WS_MAX_CONNECTIONS_PER_USER connections here; 4403 refusing an invalid
    token (strawberry's). An operation over WFO_GRAPHQL_WS_MAX_OPERATIONS gets an `error` message
    (code RATE_LIMITED) and the others run on."""

    legacy = False

    def _busy(self) -> bool:
        return bool(self.operations)

    async def _stop_operations(self) -> None:
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload", {})
        first = not self.connection_init_received and not self.connection_timed_out
        if first and isinstance(payload, dict) and not await self._admit(payload):
            self.connection_init_received = True
            if self.connection_init_timeout_task:
                self.connection_init_timeout_task.cancel()
            return
        await super().handle_connection_init(message)
        self._accepted(self.connection_acknowledged)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and message["id"] not in self.operations:
            if not await self._still_valid():
                return
            limit = self.context.settings.graphql_ws_max_operations
            if len(self.operations) >= limit:
                error = _too_many_operations(limit)
                await self.send_message({"id": message["id"], "type": "error", "payload": [error.formatted]})
                return
        await super().handle_subscribe(message)


class SessionLegacyWSHandler(_SessionGuard, BaseGraphQLWSHandler[Context, None]):
    """graphql-ws (the legacy protocol) with sessions that end: a `connection_error` (payload `code`,
    `message`), then close code 4401 when the session ends, 4429 refusing connection_init when the
    user holds WFO_GRAPHQL_WS_MAX_CONNECTIONS_PER_USER connections here; an invalid token keeps
    strawberry's refusal (connection_error, close 1011). A second connection_init closes the
    connection (4429), as graphql-transport-ws does: it could swap the connection's user. An
    operation over WFO_GRAPHQL_WS_MAX_OPERATIONS gets an `error` message (code RATE_LIMITED)."""

    legacy = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._initialised = False

    def _busy(self) -> bool:
        return bool(self.tasks)

    async def _stop_operations(self) -> None:
        await self.cleanup()

    async def handle_connection_init(self, message: LegacyInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await super().handle_connection_init(message)  # strawberry's refusal
            return
        if self._initialised:
            await self._end(CLOSE_TOO_MANY, "BAD_REQUEST", "Too many initialisation requests")
            return
        self._initialised = True
        if not await self._admit(payload):
            return
        await super().handle_connection_init(message)
        self._accepted(self.connection_acknowledged)

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged:
            if not await self._still_valid():
                return
            limit = self.context.settings.graphql_ws_max_operations
            if len(self.tasks) - (message["id"] in self.tasks) >= limit:
                error = _too_many_operations(limit)
                await self.send_message({"type": "error", "id": message["id"], "payload": error.formatted})
                return
        await super().handle_start(message)
