"""Request bodies and memory before authentication, against a real server (`python -m server`).

An anonymous caller may make the server read a small body only: 16 KB for a login, 64 KB for
GraphQL (request or WebSocket message), and on any other route nothing over 64 KB without a valid
bearer token (GraphQL requests with one may be as large as REST bodies). Large bodies of authenticated callers are read a few at a time. Memory is the
server process's own peak (VmHWM), read from /proc; requests are written over plain sockets, so
a test sees whether the server answered before it was sent the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, JWT_SECRET, make_settings
from tests.graphql_client import expired_token, foreign_token
from tests.processes import ApiClient, Process, free_port, running_processes, server_client, wait_http_ready

pytestmark = pytest.mark.slow

MB = 1024 * 1024
#: How much the server's peak memory may grow over all the bad requests of a test.
MEMORY_GROWTH_LIMIT = 50 * MB
#: How long the server may take to answer a request it should refuse before reading its body.
ANSWER_WITHIN = 10.0


def nested_lists(size: int) -> bytes:
    """`[[],[],...]`: JSON of `size` bytes that costs its parser about 20 times its size in memory."""
    count = (size - 2) // 3
    return b"[" + b"[]," * (count - 1) + b"[]]"


def peak_memory(process: Process) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/problem+json", self.headers
        body = json.loads(self.body)
        assert body["status"] == self.status and body["title"] and body["detail"], body
        return body


@dataclass
class RawRequest:
    """An HTTP/1.1 request written over a plain socket, its body sent only when the test says so."""

    port: int
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def open(self, content_length: int | None) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        headers = {"Host": "127.0.0.1", "Content-Type": "application/json", **self.headers}
        if content_length is None:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(content_length)
        head = f"{self.method} {self.path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        self.writer.write(head.encode() + b"\r\n")
        await self.writer.drain()

    async def send(self, data: bytes, *, chunked: bool = False) -> bool:
        """Write part of the body; False once the server has closed the connection."""
        assert self.writer is not None
        if chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def answer(self, timeout: float = ANSWER_WITHIN) -> Answer:
        """The server's response (TimeoutError if it gives none in time: it still waits for the body)."""
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, *, content_length: int | None
) -> AsyncIterator[RawRequest]:
    request = RawRequest(port, method, path, headers or {})
    await request.open(content_length)
    try:
        yield request
    finally:
        await request.close()


async def send_whole(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None, *, chunked: bool
) -> int | None:
    """Send a whole request body (in 64 KB parts) while the server may answer early and close:
    the status it answered with, or None when it closed first (a reset may eat the answer)."""
    async with raw_request(
        port, "POST", path, headers, content_length=None if chunked else len(body)
    ) as request:

        async def write() -> None:
            for start in range(0, len(body), 64 * 1024):
                if not await request.send(body[start : start + 64 * 1024], chunked=chunked):
                    return
            if chunked:
                await request.send(b"0\r\n\r\n")

        writer = asyncio.create_task(write())
        try:
            return (await request.answer(timeout=60)).status
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


def definition_body(tasks: int, padding: int = 0) -> dict[str, Any]:
    """A chain of `tasks` noop tasks, each with a description of `padding` characters."""
    return {
        "name": "big",
        "tasks": [
            {
                "id": f"t{i}",
                "name": f"t{i}",
                "description": "d" * padding,
                "dependencies": [f"t{i - 1}"] if i else [],
            }
            for i in range(tasks)
        ],
    }


@dataclass
class Server:
    process: Process
    port: int
    http: httpx.AsyncClient
    settings: Settings
    operator: dict[str, str]

    @property
    def operator_token(self) -> str:
        return self.operator["Authorization"].removeprefix("Bearer ")


@contextlib.asynccontextmanager
async def api_server(tmp: Path, **overrides: Any) -> AsyncIterator[Server]:
    """One API process (SQLite, no Temporal: nothing here runs an execution) and an operator."""
    settings = make_settings(f"sqlite:///{tmp / 'wfo.db'}", tmp, log_level="WARNING", **overrides)
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        api = procs.start_api(settings, port)
        url = f"http://127.0.0.1:{port}"
        await wait_http_ready(api, f"{url}/healthz")
        async with server_client(url, timeout=60) as http:
            admin = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
            response = await http.post(
                "/api/users",
                json={"username": "olivia", "password": "olivia-password-123", "role": "operator"},
                headers=admin.headers,
            )
            assert response.status_code == 201, response.text
            operator = await ApiClient.login(http, "olivia", "olivia-password-123")
            yield Server(api, port, http, settings, operator.headers)
        api.check_alive()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with api_server(tmp_path_factory.mktemp("hardening-bodies")) as started:
        yield started


ANONYMOUS_TARGETS = [
    "/api/auth/login",
    "/api/v1/auth/login",
    "/graphql",
    "/api/workflows",
    "/api/v2/executions",
]


class TestMemoryBeforeAuthentication:
    async def test_large_anonymous_bodies_leave_memory_flat(self, server: Server) -> None:
        body = nested_lists(server.settings.max_body_bytes - 1024)
        before = peak_memory(server.process)
        answers = {}
        for path in ANONYMOUS_TARGETS:
            for chunked in (False, True):
                answers[path, chunked] = await send_whole(server.port, path, body, chunked=chunked)
        grown = peak_memory(server.process) - before
        assert grown < MEMORY_GROWTH_LIMIT, f"peak memory grew by {grown / MB:.0f} MB over anonymous bodies"
        assert set(answers.values()) <= {None, 401, 413}, answers
        assert (await server.http.get("/healthz")).status_code == 200

    async def test_large_anonymous_websocket_messages_leave_memory_flat(self, server: Server) -> None:
        url = f"ws://127.0.0.1:{server.port}/graphql"
        message = b'{"type": "connection_init", "payload": ' + nested_lists(4 * MB) + b"}"
        before = peak_memory(server.process)
        for _ in range(4):
            async with websockets.connect(
                url, subprotocols=["graphql-transport-ws"], max_size=None, proxy=None, compression=None
            ) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(message.decode())
                    await asyncio.wait_for(ws.recv(), ANSWER_WITHIN)
                assert ws.close_code == 1009, ws.close_code
        grown = peak_memory(server.process) - before
        assert grown < MEMORY_GROWTH_LIMIT, f"peak memory grew by {grown / MB:.0f} MB over WebSocket messages"


class TestRouteCaps:
    @pytest.mark.parametrize("path", ["/api/auth/login", "/api/v2/auth/login"])
    async def test_a_login_body_over_its_cap_is_413(self, server: Server, path: str) -> None:
        cap = server.settings.login_max_body_bytes
        response = await server.http.post(path, json={"username": "admin", "password": "p" * cap})
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert str(cap) in response.json()["detail"]
        ok = await server.http.post(path, json={"username": "admin", "password": ADMIN_PASSWORD})
        assert ok.status_code == 200, ok.text

    @pytest.mark.parametrize("path", ["/api/auth/login", "/graphql"])
    async def test_a_declared_length_over_the_cap_is_refused_before_the_body(
        self, server: Server, path: str
    ) -> None:
        async with raw_request(server.port, "POST", path, content_length=8 * MB - 1024) as request:
            answer = await request.answer()
        assert answer.status == 413
        assert "exceeds the limit" in answer.problem()["detail"]


class TestAuthenticatedGraphQL:
    async def test_an_operator_sends_a_large_mutation(self, server: Server) -> None:
        mutation = "mutation($input: CreateWorkflowDefinitionInput!) { createWorkflowDefinition(input: $input) { id } }"
        body = {"query": mutation, "variables": {"input": definition_body(400, padding=500)}}
        assert len(json.dumps(body)) > server.settings.graphql_max_body_bytes
        response = await server.http.post("/graphql", json=body, headers=server.operator)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["data"]["createWorkflowDefinition"]["id"]
        anonymous = await server.http.post("/graphql", json=body)
        assert anonymous.status_code == 413, anonymous.text[:300]


class TestBearerBeforeLargeBodies:
    @pytest.mark.parametrize("path", ["/api/workflows", "/api/v2/executions", "/api/users"])
    async def test_no_token_is_401_before_the_body_is_sent(self, server: Server, path: str) -> None:
        async with raw_request(server.port, "POST", path, content_length=4 * MB) as request:
            answer = await request.answer()
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        answer.problem()

    async def test_expired_and_forged_tokens_are_401_before_the_body(self, server: Server) -> None:
        for token in (
            expired_token(server.operator_token, JWT_SECRET),
            foreign_token(server.operator_token),
            "garbage",
        ):
            headers = {"Authorization": f"Bearer {token}"}
            async with raw_request(
                server.port, "POST", "/api/workflows", headers, content_length=4 * MB
            ) as request:
                answer = await request.answer()
            assert answer.status == 401, token
            assert 'error="invalid_token"' in answer.headers["www-authenticate"]
            answer.problem()

    async def test_a_chunked_anonymous_body_is_cut_off_past_the_small_size(self, server: Server) -> None:
        async with raw_request(server.port, "POST", "/api/workflows", content_length=None) as request:
            for _ in range(server.settings.large_body_bytes // (16 * 1024) + 2):
                await request.send(b" " * 16 * 1024, chunked=True)
            answer = await request.answer()  # the body never ends: the server must not wait for it
        assert answer.status == 401
        answer.problem()

    async def test_a_small_anonymous_body_gets_the_usual_401(self, server: Server) -> None:
        response = await server.http.post("/api/workflows", json={"name": "x"})
        assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"


class TestLargeDefinitions:
    async def test_an_operator_stores_a_large_definition(self, server: Server) -> None:
        body = definition_body(5000, padding=500)
        size = len(json.dumps(body))
        assert 2 * MB < size < server.settings.max_body_bytes
        response = await server.http.post("/api/workflows", json=body, headers=server.operator)
        assert response.status_code == 201, response.text[:500]
        stored = await server.http.get(f"/api/workflows/{response.json()['id']}", headers=server.operator)
        assert len(stored.json()["tasks"]) == 5000

    async def test_an_operator_streams_a_large_definition(self, server: Server) -> None:
        content = json.dumps(definition_body(2000, padding=500)).encode()

        async def parts() -> AsyncIterator[bytes]:  # no Content-Length: read as it arrives
            for start in range(0, len(content), 256 * 1024):
                yield content[start : start + 256 * 1024]

        headers = {**server.operator, "Content-Type": "application/json"}
        response = await server.http.post("/api/workflows", content=parts(), headers=headers)
        assert response.status_code == 201, response.text[:500]


class TestLargeBodyConcurrency:
    async def test_large_bodies_beyond_the_concurrency_wait_then_get_503(self, tmp_path: Path) -> None:
        async with api_server(tmp_path, large_body_concurrency=1, large_body_wait_seconds=0.5) as server:
            big = definition_body(400, padding=500)
            assert len(json.dumps(big)) > server.settings.large_body_bytes
            # One operator upload holds the only slot: it has sent part of its body and stalls.
            async with raw_request(
                server.port, "POST", "/api/workflows", server.operator, content_length=MB
            ) as slow:
                await slow.send(b" " * 128 * 1024)
                await asyncio.sleep(0.5)
                refused = await server.http.post("/api/workflows", json=big, headers=server.operator)
                assert refused.status_code == 503, refused.text[:300]
                assert refused.headers["content-type"] == "application/problem+json"
                assert int(refused.headers["retry-after"]) >= 1
                small = await server.http.post(
                    "/api/workflows", json=definition_body(3), headers=server.operator
                )
                assert small.status_code == 201, "small bodies never wait for a slot"
            # The stalled upload went away: its slot is free again.
            for _ in range(50):
                response = await server.http.post("/api/workflows", json=big, headers=server.operator)
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.2)
            assert response.status_code == 201, response.text[:300]
