"""A small, real GraphQL client for tests: HTTP (httpx) and WebSocket subscriptions over both
protocols strawberry serves, with the `websockets` package.

* `graphql-transport-ws` (the current protocol): connection_init -> connection_ack, subscribe ->
  next* -> complete | error, ping/pong; refusals close the socket with a 44xx code.
* `graphql-ws` (the legacy subscriptions-transport-ws protocol): connection_init ->
  connection_ack | connection_error, start -> data* -> complete | error, stop, "ka" keep-alives.

```python
async with GraphQLWebSocket.open(ws_url, TRANSPORT_WS, token=token) as ws:   # connection_init + ack
    op = await ws.subscribe(QUERY, {"id": "1"})
    first = await ws.next_data(op)              # the `data` of one result (raises on an error)
    rest = await ws.collect(op)                 # every result until `complete`
```

Messages are read from the socket only when the test asks for them, so a test can leave a
connection unread on purpose (a slow client). Messages of other operations read meanwhile are
kept for later, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import httpx
import jwt
import websockets
from websockets.asyncio.client import ClientConnection

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)

#: Seconds a test waits for one message before calling the server stuck.
RECEIVE_TIMEOUT = 30.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def expired_token(valid: str, secret: str) -> str:
    """`valid`'s claims, expired a minute ago, signed with the right secret."""
    claims = jwt.decode(valid, options={"verify_signature": False})
    now = datetime.now(UTC)
    claims.update(iat=now - timedelta(hours=2), nbf=now - timedelta(hours=2), exp=now - timedelta(minutes=1))
    return jwt.encode(claims, secret, algorithm="HS256")


def foreign_token(valid: str) -> str:
    """`valid`'s claims, promoted to admin and signed with someone else's secret."""
    claims = jwt.decode(valid, options={"verify_signature": False})
    claims["roles"] = ["admin"]
    return jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")


# --- HTTP ---------------------------------------------------------------------------------------


async def gql(
    http: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    operation_name: str | None = None,
) -> dict[str, Any]:
    """POST one operation to /graphql; returns the JSON body after checking it is a GraphQL answer
    (HTTP 200, JSON, `data` and/or `errors`, never a stack trace)."""
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    if operation_name is not None:
        body["operationName"] = operation_name
    response = await http.post("/graphql", json=body, headers=headers or {})
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    result = response.json()
    assert set(result) <= {"data", "errors", "extensions"} and ("data" in result or "errors" in result), (
        result
    )
    return result


def data_of(result: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a result that must have no errors."""
    assert not result.get("errors"), json.dumps(result["errors"], indent=1)
    assert result["data"] is not None
    return result["data"]


def error_of(result: dict[str, Any], code: str) -> dict[str, Any]:
    """The only error of a result, after checking its `extensions.code` (and that no data leaked)."""
    errors = result.get("errors")
    assert errors and len(errors) == 1, json.dumps(result, indent=1)
    error = errors[0]
    assert error["extensions"]["code"] == code, json.dumps(error, indent=1)
    assert error["message"], error
    assert not result.get("data"), f"an error answer carries no data: {result}"
    return error


# --- WebSocket ----------------------------------------------------------------------------------


class ConnectionRejected(Exception):
    """The server refused the connection: closed it (code, reason) or sent connection_error first."""

    def __init__(self, code: int | None, reason: str, error: Any = None) -> None:
        super().__init__(
            f"connection rejected: close code {code} {reason!r}, connection_error payload {error!r}"
        )
        self.code = code
        self.reason = reason
        self.error = error


class SubscriptionError(Exception):
    """An operation ended with an `error` message (its payload: a list of GraphQL errors)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(json.dumps(errors))
        self.errors = errors


@dataclass
class Message:
    """One operation message, the same for both protocols: kind is next | error | complete."""

    kind: str
    id: str
    payload: Any = None


@dataclass
class GraphQLWebSocket:
    ws: ClientConnection
    protocol: str
    #: Every protocol message received, raw, in order (keep-alives included).
    received: list[dict[str, Any]] = field(default_factory=list)
    _pending: dict[str, deque[Message]] = field(default_factory=lambda: defaultdict(deque))
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # --- connecting ---

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        protocol: str,
        *,
        token: str | None = None,
        init_payload: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        init: bool = True,
        slow: bool = False,
    ) -> AsyncIterator[Self]:
        """A connection; with `init` (the default) connection_init is sent, with `{"Authorization":
        "Bearer <token>"}` as payload when `token` is given (else `init_payload`), and the ack awaited.

        `slow`: a reader that applies back-pressure early (tiny kernel receive buffer, one queued
        frame), so the server's sends block once a little data is unread."""
        assert protocol in PROTOCOLS
        options: dict[str, Any] = {
            "subprotocols": [protocol],
            "additional_headers": headers or {},
            "proxy": None,
            "compression": None,
            "open_timeout": 10,
            "max_size": 64 * 1024 * 1024,
        }
        if slow:
            options["sock"] = _small_socket(url)
            options["max_queue"] = 1
        async with websockets.connect(url, **options) as ws:
            assert ws.subprotocol == protocol, f"server chose {ws.subprotocol!r}"
            client = cls(ws, protocol)
            if init:
                payload = {"Authorization": f"Bearer {token}"} if token is not None else init_payload
                await client.initialize(payload)
            yield client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def initialize(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        """connection_init, then the ack; ConnectionRejected if the server refuses."""
        init: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            init["payload"] = payload
        await self.send(init)
        while True:
            try:
                message = await self._recv()
            except websockets.ConnectionClosed as exc:
                raise ConnectionRejected(
                    exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
                ) from exc
            if message["type"] == "connection_ack":
                return message
            if message["type"] == "connection_error":
                code, reason = await self.wait_closed()
                raise ConnectionRejected(code, reason, message.get("payload"))
            if message["type"] in ("ka", "ping", "pong"):
                continue
            raise AssertionError(f"unexpected message before the ack: {message}")

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes the socket; returns its close code and reason. Any
        operation message read meanwhile fails the test (nothing may flow on a refused connection)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._recv()
                    assert message["type"] in ("ka", "ping", "pong", "connection_error"), (
                        f"data on a refused connection: {message}"
                    )
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")

    # --- operations ---

    async def subscribe(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        operation_name: str | None = None,
        op_id: str | None = None,
    ) -> str:
        op_id = op_id or str(next(self._ids))
        payload: dict[str, Any] = {"query": query, "variables": variables or {}}
        if operation_name is not None:
            payload["operationName"] = operation_name
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    async def stop(self, op_id: str) -> None:
        """Client-side end of one operation."""
        await self.send({"id": op_id, "type": "complete" if self.protocol == TRANSPORT_WS else "stop"})

    async def receive(self, op_id: str, timeout: float = RECEIVE_TIMEOUT) -> Message:
        """The next message of one operation."""
        queue = self._pending[op_id]
        async with asyncio.timeout(timeout):
            while not queue:
                message = await self._recv()
                parsed = self._operation_message(message)
                if parsed is not None:
                    self._pending[parsed.id].append(parsed)
        return queue.popleft()

    async def next_data(self, op_id: str, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        """The `data` of the operation's next result; fails on an error, a result with errors, or complete."""
        message = await self.receive(op_id, timeout)
        if message.kind == "error":
            raise SubscriptionError(message.payload)
        assert message.kind == "next", f"expected a result, got {message}"
        assert not message.payload.get("errors"), message.payload
        return message.payload["data"]

    async def collect(self, op_id: str, timeout: float = RECEIVE_TIMEOUT) -> list[dict[str, Any]]:
        """The `data` of every result until the operation completes (`timeout` per message)."""
        results = []
        while True:
            message = await self.receive(op_id, timeout)
            if message.kind == "complete":
                return results
            if message.kind == "error":
                raise SubscriptionError(message.payload)
            assert not message.payload.get("errors"), message.payload
            results.append(message.payload["data"])

    async def _recv(self) -> dict[str, Any]:
        while True:
            raw = await self.ws.recv()
            message = json.loads(raw)
            self.received.append(message)
            if self.protocol == TRANSPORT_WS and message.get("type") == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    def _operation_message(self, message: dict[str, Any]) -> Message | None:
        kind = message.get("type")
        if kind in ("ka", "ping", "pong"):
            return None
        if kind in ("next", "data"):
            return Message("next", message["id"], message["payload"])
        if kind == "error":
            payload = message["payload"]
            # graphql-transport-ws sends a list of errors; graphql-ws one error (or a list).
            return Message("error", message["id"], payload if isinstance(payload, list) else [payload])
        if kind == "complete":
            return Message("complete", message["id"])
        raise AssertionError(f"unexpected message: {message}")


def _small_socket(url: str) -> socket.socket:
    """A connected TCP socket with the smallest receive buffer the kernel allows."""
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock
