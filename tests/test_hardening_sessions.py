"""Issue 10, item 3 (WebSocket sessions that really end), item 5's subscription part (an idle
subscription reloads nothing) and the dev-mode token key file (a low item); the first two against a real API: uvicorn serving `create_app` in this process
(so the test can count the statements the API's own engine runs), the session's Temporal dev
server and a worker, on SQLite and PostgreSQL, with the real WebSocket client of
tests/graphql_client.py over both protocols.

An execution waiting on an approval keeps subscriptions open as long as a test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import sqlalchemy as sa
import uvicorn
import websockets
from fastapi import FastAPI

from api.app import create_app
from api.settings import MIN_JWT_SECRET_BYTES, InsecureSettings, Settings
from tests.conftest import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    POSTGRES_ADMIN_URL,
    login,
    make_settings,
    running_worker,
    temporal_address,
)
from tests.graphql_client import (
    LEGACY_WS,
    PROTOCOLS,
    TRANSPORT_WS,
    ConnectionRejected,
    GraphQLWebSocket,
    SubscriptionError,
    bearer,
    token_of,
)
from tests.processes import fresh_postgres_database, server_client
from tests.test_settings import assert_refused, clean_env, run_server

pytestmark = pytest.mark.slow

EXECUTION = "subscription($id: ID!) { workflowExecutionUpdated(id: $id) { id status sequence } }"
PROGRESS = (
    "subscription($id: ID!) { progressReportUpdated(workflowExecutionId: $id) { completedTasks totalTasks } }"
)
EVENTS = "subscription($id: ID!) { executionEvents(workflowExecutionId: $id) { sequence type } }"
CREATE = "mutation($input: CreateWorkflowDefinitionInput!) { createWorkflowDefinition(input: $input) { id } }"
REGISTER = "mutation($input: RegisterWebhookInput!) { registerWebhook(input: $input) { id } }"
#: Generous: only a blocked server would take this long.
CLOSE_WITHIN = 20.0

#: How often an idle connection with running subscriptions re-checks its user (the setting, small here).
RECHECK_SECONDS = 0.3
MAX_OPERATIONS = 3
MAX_CONNECTIONS = 2


# --- the server, in this process -------------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    app: FastAPI
    url: str
    http: httpx.AsyncClient
    admin: dict[str, str]
    #: An execution waiting on its approval (for good): subscriptions to it stay open.
    waiting_id: str
    gate_id: str

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"

    async def user(self, role: str = "operator") -> tuple[str, dict[str, str]]:
        """A new user of this role: (id, Authorization headers)."""
        name = f"u{uuid.uuid4().hex[:10]}"
        response = await self.http.post(
            "/api/users",
            json={"username": name, "password": f"{name}-password-123", "role": role},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], await login(self.http, name, f"{name}-password-123")

    async def revoke(self, user_id: str, how: str) -> None:
        """What an admin does to end a user's sessions."""
        if how == "disable":
            response = await self.http.post(f"/api/users/{user_id}/disable", headers=self.admin)
        elif how == "demote":
            response = await self.http.patch(
                f"/api/users/{user_id}", json={"role": "viewer"}, headers=self.admin
            )
        else:
            response = await self.http.post(
                f"/api/users/{user_id}/password",
                json={"password": "a-brand-new-password-42"},
                headers=self.admin,
            )
        assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """uvicorn serving `app` on a loopback port the OS picks, in this event loop; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sessions') / 'wfo.db'}"
        return
    with fresh_postgres_database(POSTGRES_ADMIN_URL) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    module_database: str, temporal_env: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    unique = uuid.uuid4().hex[:10]
    settings = make_settings(
        module_database,
        tmp_path_factory.mktemp("sessions-data"),
        temporal_address=temporal_address(temporal_env),
        workflow_id_prefix=f"s{unique}",
        system_task_queue=f"system-{unique}",
        default_task_queue=f"tasks-{unique}",
        graphql_ws_recheck_seconds=RECHECK_SECONDS,
        graphql_ws_max_operations=MAX_OPERATIONS,
        graphql_ws_max_connections_per_user=MAX_CONNECTIONS,
        log_level="WARNING",
    )
    app = create_app(settings)
    async with (
        serving(app) as url,
        running_worker(temporal_env.client, settings),
        server_client(url, timeout=60) as http,
    ):
        admin = await login(http, "admin", ADMIN_PASSWORD)
        execution_id, gate_id = await gated(http, admin)
        yield Stack(settings, app, url, http, admin, execution_id, gate_id)


async def gated(http: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, str]:
    """A new execution, once it waits on its approval: (execution id, approval task id)."""
    tasks = [
        {"id": "gate", "name": "gate", "type": "approval"},
        {"id": "after", "name": "after", "dependencies": ["gate"]},
    ]
    definition = await http.post("/api/workflows", json={"name": "gated", "tasks": tasks}, headers=headers)
    assert definition.status_code == 201, definition.text
    started = await http.post(
        "/api/v2/executions", json={"workflowDefinitionId": definition.json()["id"]}, headers=headers
    )
    assert started.status_code == 201, started.text
    execution_id = started.json()["id"]
    async with asyncio.timeout(60):
        while True:
            body = (await http.get(f"/api/v2/executions/{execution_id}", headers=headers)).json()
            gate = next((t for t in body["taskExecutions"] if t["taskDefinitionId"] == "gate"), None)
            if gate is not None and gate["status"] == "WAITING":
                return execution_id, gate["id"]
            await asyncio.sleep(0.05)


def short_lived(valid: str, seconds: float) -> str:
    """`valid`'s claims (same user, same token version), expiring `seconds` from now."""
    claims = jwt.decode(valid, options={"verify_signature": False})
    claims["exp"] = datetime.now(UTC) + timedelta(seconds=seconds)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def closed_with(ws: GraphQLWebSocket) -> tuple[int | None, str]:
    """The close code and reason, once the server has closed the connection (operation messages
    and a legacy connection_error may come first; nothing else may)."""
    async with asyncio.timeout(CLOSE_WITHIN):
        while True:
            try:
                message = await ws._recv()
            except websockets.ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
            assert message["type"] in ("ka", "pong", "next", "data", "complete", "connection_error"), message


async def subscribed(ws: GraphQLWebSocket, execution_id: str, document: str = EXECUTION) -> str:
    """An operation on the waiting execution, after its first result."""
    op = await ws.subscribe(document, {"id": execution_id})
    await ws.next_data(op)
    return op


# --- 1. every operation re-checks the session ------------------------------------------------------


class TestOperationsRecheckTheSession:
    @pytest.mark.parametrize("how", ["disable", "demote", "password"])
    async def test_a_revoked_operator_can_change_nothing_on_an_open_socket(
        self, stack: Stack, how: str
    ) -> None:
        user_id, headers = await stack.user("operator")
        url = f"https://hooks.example.com/{uuid.uuid4().hex}"
        async with GraphQLWebSocket.open(stack.ws, TRANSPORT_WS, token=token_of(headers)) as ws:
            op = await ws.subscribe(
                CREATE, {"input": {"name": "before", "tasks": [{"id": "a", "name": "a"}]}}
            )
            assert (await ws.next_data(op))["createWorkflowDefinition"]["id"]
            await stack.revoke(user_id, how)
            await ws.subscribe(REGISTER, {"input": {"url": url, "events": ["*"]}})
            code, reason = await closed_with(ws)
        assert code == 4401, (code, reason)
        assert "log in again" in reason
        hooks = (await stack.http.get("/api/v2/webhooks", params={"limit": 100}, headers=stack.admin)).json()[
            "items"
        ]
        assert url not in [h["url"] for h in hooks], "the revoked user's webhook was stored"

    async def test_legacy_protocol_refuses_a_new_subscription_of_a_disabled_user(self, stack: Stack) -> None:
        user_id, headers = await stack.user("viewer")
        async with GraphQLWebSocket.open(stack.ws, LEGACY_WS, token=token_of(headers)) as ws:
            await stack.revoke(user_id, "disable")
            await ws.subscribe(EVENTS, {"id": stack.waiting_id})
            code, reason = await closed_with(ws)
            errors = [m for m in ws.received if m["type"] == "connection_error"]
        assert code == 4401, (code, reason)
        assert errors and errors[0]["payload"]["code"] == "UNAUTHENTICATED", ws.received
        assert not [m for m in ws.received if m["type"] == "data"], "data flowed after the user was disabled"

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_operations_started_together_all_run(self, stack: Stack, protocol: str) -> None:
        """Each operation's check of the session runs while the others' resolvers ask who the caller is."""
        _, headers = await stack.user("viewer")
        async with GraphQLWebSocket.open(stack.ws, protocol, token=token_of(headers)) as ws:
            ops = [await ws.subscribe(EXECUTION, {"id": stack.waiting_id}) for _ in range(MAX_OPERATIONS)]
            for op in ops:
                assert (await ws.next_data(op))["workflowExecutionUpdated"]["status"] == "RUNNING"

    async def test_operations_of_a_valid_session_go_on(self, stack: Stack) -> None:
        _, headers = await stack.user("operator")
        async with GraphQLWebSocket.open(stack.ws, TRANSPORT_WS, token=token_of(headers)) as ws:
            for i in range(5):
                op = await ws.subscribe(
                    CREATE, {"input": {"name": f"d{i}", "tasks": [{"id": "a", "name": "a"}]}}
                )
                assert (await ws.next_data(op))["createWorkflowDefinition"]["id"]


# --- 2. open connections end at expiry and on revocation ---------------------------------------------


class TestSessionsEnd:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("how", ["disable", "demote", "password"])
    async def test_a_running_subscription_ends_when_the_user_is_revoked(
        self, stack: Stack, protocol: str, how: str
    ) -> None:
        user_id, headers = await stack.user("operator")
        async with GraphQLWebSocket.open(stack.ws, protocol, token=token_of(headers)) as ws:
            await subscribed(ws, stack.waiting_id)
            await stack.revoke(user_id, how)
            code, reason = await closed_with(ws)
        assert code == 4401, (code, reason)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_the_connection_closes_when_its_token_expires(self, stack: Stack, protocol: str) -> None:
        _, headers = await stack.user("viewer")
        token = short_lived(token_of(headers), 3)
        async with GraphQLWebSocket.open(stack.ws, protocol, token=token) as ws:
            await subscribed(ws, stack.waiting_id)
            code, reason = await closed_with(ws)
        assert code == 4401, (code, reason)
        assert "expired" in reason

    async def test_an_idle_connection_closes_at_expiry_too(self, stack: Stack) -> None:
        _, headers = await stack.user("viewer")
        async with GraphQLWebSocket.open(
            stack.ws, TRANSPORT_WS, token=short_lived(token_of(headers), 3)
        ) as ws:
            code, reason = await closed_with(ws)
        assert code == 4401, (code, reason)

    async def test_an_expired_token_over_http_is_refused_as_before(self, stack: Stack) -> None:
        """Control: the same claims over HTTP, once expired, are a 401 answer."""
        _, headers = await stack.user("viewer")
        token = short_lived(token_of(headers), -60)
        response = await stack.http.post(
            "/graphql", json={"query": "{ me { username } }"}, headers=bearer(token)
        )
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


# --- 3. limits -------------------------------------------------------------------------------------------


class TestLimits:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_operations_per_connection_are_capped(self, stack: Stack, protocol: str) -> None:
        _, headers = await stack.user("viewer")
        async with GraphQLWebSocket.open(stack.ws, protocol, token=token_of(headers)) as ws:
            ops = [await subscribed(ws, stack.waiting_id) for _ in range(MAX_OPERATIONS)]
            refused = await ws.subscribe(EXECUTION, {"id": stack.waiting_id})
            with pytest.raises(SubscriptionError) as error:
                await ws.next_data(refused)
            (problem,) = error.value.errors
            assert problem["extensions"]["code"] == "RATE_LIMITED", problem
            assert str(MAX_OPERATIONS) in problem["message"]
            # The others run on; ending one makes room for another.
            await ws.stop(ops[0])
            if protocol == LEGACY_WS:
                assert (await ws.receive(ops[0])).kind == "complete"  # graphql-transport-ws answers nothing
            await subscribed(ws, stack.waiting_id)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_connections_per_user_are_capped(self, stack: Stack, protocol: str) -> None:
        _, headers = await stack.user("viewer")
        _, other = await stack.user("viewer")
        token = token_of(headers)
        async with contextlib.AsyncExitStack() as held:
            for _ in range(MAX_CONNECTIONS):
                await held.enter_async_context(GraphQLWebSocket.open(stack.ws, protocol, token=token))
            with pytest.raises(ConnectionRejected) as refused:
                async with GraphQLWebSocket.open(stack.ws, protocol, token=token):
                    pass
            assert refused.value.code == 4429, refused.value
            if protocol == LEGACY_WS:
                assert refused.value.error["code"] == "RATE_LIMITED", refused.value.error
            # Someone else is not affected.
            async with GraphQLWebSocket.open(stack.ws, protocol, token=token_of(other)) as ws:
                await subscribed(ws, stack.waiting_id)
        # Closed connections no longer count.
        async with contextlib.AsyncExitStack() as held:
            for _ in range(MAX_CONNECTIONS):
                ws = await held.enter_async_context(GraphQLWebSocket.open(stack.ws, protocol, token=token))
            await subscribed(ws, stack.waiting_id)


# --- 4. an idle subscription reloads nothing (item 5) ----------------------------------------------------


@contextlib.contextmanager
def statements_of(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the API's engine runs while the block lasts."""
    seen: list[str] = []
    engine = app.state.engine.sync_engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def full_reloads(statements: list[str]) -> list[str]:
    """Reads of the whole execution (its task rows): what a subscriber's reload costs."""
    return [s for s in statements if "FROM task_executions" in s]


def looks_at_the_execution(statements: list[str]) -> list[str]:
    """Reads of the execution's row: each watcher asks at least this each time it wakes up."""
    return [s for s in statements if "FROM executions" in s and "WHERE executions.id" in s]


class TestIdleSubscriptions:
    async def test_an_idle_subscription_issues_no_full_reload(self, stack: Stack) -> None:
        _, headers = await stack.user("viewer")
        execution_id, gate_id = await gated(stack.http, stack.admin)
        async with GraphQLWebSocket.open(stack.ws, TRANSPORT_WS, token=token_of(headers)) as ws:
            execution_op = await subscribed(ws, execution_id)
            progress_op = await subscribed(ws, execution_id, PROGRESS)
            with statements_of(stack.app) as statements:
                # Until the subscribers have looked at the execution a few times (each wakes up
                # once per period of its own): nothing changed, so nothing may have been reloaded.
                async with asyncio.timeout(60):
                    while len(looks_at_the_execution(statements)) < 6:
                        await asyncio.sleep(0.05)
                assert full_reloads(statements) == [], statements
            # A change still reaches them: approving the gate moves the execution on.
            response = await stack.http.post(
                f"/api/tasks/{gate_id}/complete", json={"output": "ok"}, headers=stack.admin
            )
            assert response.status_code == 200, response.text
            moved = await ws.next_data(execution_op)
            assert moved["workflowExecutionUpdated"]["sequence"] > 0
            await ws.next_data(progress_op)


# --- the dev-mode token key file (a low item) --------------------------------------------------------


class TestDevTokenKeyFile:
    """In dev mode without WFO_JWT_SECRET, tokens are signed with a key kept in <data dir>/jwt-secret."""

    def dev_settings(self, data_dir: Path) -> Settings:
        return Settings(
            dev_mode=True, data_dir=data_dir, jwt_secret=None, database_url=f"sqlite:///{data_dir / 'wfo.db'}"
        )

    @pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"], ids=["empty", "newline", "blank"])
    def test_an_empty_key_file_is_replaced_by_a_random_key(self, tmp_path: Path, content: bytes) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "jwt-secret").write_bytes(content)
        key = self.dev_settings(data).jwt_key()
        assert len(key) >= MIN_JWT_SECRET_BYTES
        assert (data / "jwt-secret").read_bytes().strip() == key
        assert (data / "jwt-secret").stat().st_mode & 0o077 == 0, "the key file is readable by others"

    def test_a_short_key_file_is_refused_with_a_clear_message(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "jwt-secret").write_bytes(b"dev-key-7")
        with pytest.raises(InsecureSettings) as refused:
            create_app(self.dev_settings(data))
        message = str(refused.value)
        assert str(data / "jwt-secret") in message and "WFO_JWT_SECRET" in message and "delete it" in message
        assert "dev-key-7" not in message, "the key itself is never shown"

    def test_the_server_refuses_to_start_with_a_short_key_file(self, tmp_path: Path) -> None:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "jwt-secret").write_bytes(b"short")
        result = run_server(tmp_path, clean_env(tmp_path, WFO_DEV_MODE="true"))
        assert_refused(result, "jwt-secret", "WFO_JWT_SECRET")

    def test_a_good_key_file_is_kept(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "jwt-secret").write_bytes(b"k" * 48 + b"\n")
        assert self.dev_settings(data).jwt_key() == b"k" * 48
