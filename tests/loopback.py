"""A real HTTP server on loopback for tests (http tasks, webhooks): scripted replies, a request log.

```python
with LoopbackServer() as server:                     # or the `loopback` fixture below
    server.route("/ok", json={"id": 7})              # 200 + JSON, every time
    server.route("/flaky", status=[500, 500, 200])   # one status per request; the last repeats
    server.route("/slow", delay=5, text="late")      # answers after 5 s (or when the server stops)
    server.route("/hook", method="POST", handler=echo)   # compute the reply from the request
    server.route("/drip", stream=lambda: itertools.repeat(b"x"), interval=0.05)   # chunked, endless
    ...  # call server.url_for("/ok")
    server.requests_to("/hook")[0].json()
```

It is `http.server` in a thread on a port the OS picks (no race for a "free" port), HTTP/1.1 with
keep-alive, every reply with a Content-Length (a streamed one is chunked). Unrouted paths answer
404. Stopping wakes delayed replies and closes open connections, so a test never waits on a
sleeping handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import pytest

_UNSET: Any = object()
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass
class Reply:
    """One scripted response: status, body (JSON, text or bytes), headers, and a delay before it.

    `stream` makes the body chunked: one chunk per item of `stream()`, `interval` seconds apart,
    until the items end, the client goes away or the server stops. With `raw`, the items are the
    whole response as sent, status line and headers included (for heads that never end).
    """

    status: int = 200
    json: Any = _UNSET
    text: str | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: Callable[[], Iterable[bytes]] | None = None
    interval: float = 0.0
    raw: bool = False

    def encode(self) -> tuple[bytes, dict[str, str]]:
        """The body bytes and the headers to send (a content type is added for JSON and text)."""
        headers = dict(self.headers)
        names = {name.lower() for name in headers}
        if self.json is not _UNSET:
            data = jsonlib.dumps(self.json).encode()
            default_type = "application/json"
        elif self.text is not None:
            data = self.text.encode()
            default_type = "text/plain; charset=utf-8"
        else:
            data = self.body or b""
            default_type = None
        if default_type and "content-type" not in names:
            headers["Content-Type"] = default_type
        return data, headers


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)


Handler = Callable[[RecordedRequest], Reply]


def echo(request: RecordedRequest) -> Reply:
    """A handler that answers 200 with the request as JSON (method, path, query, headers, body)."""
    try:
        body: Any = request.json()
    except ValueError:
        body = request.text
    return Reply(
        json={
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": body,
        }
    )


class Route:
    """The replies of one path (and method): a sequence whose last entry repeats, or a handler."""

    def __init__(self, replies: Sequence[Reply] | None = None, handler: Handler | None = None) -> None:
        if not replies and handler is None:
            raise ValueError("a route needs replies or a handler")
        self._replies = list(replies or [])
        self._handler = handler
        self._lock = threading.Lock()
        self.hits = 0

    def next_reply(self, request: RecordedRequest) -> Reply:
        """The reply for this request (handlers run in the server's thread)."""
        with self._lock:
            index = self.hits
            self.hits += 1
        if self._handler is not None:
            return self._handler(request)
        return self._replies[min(index, len(self._replies) - 1)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a delayed reply must not hold up stop()
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (cancelled, timed out) is expected in tests: stay quiet."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._connections.add(self.connection)

    def finish(self) -> None:
        self.server.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=self._read_body(),
            received_at=time.monotonic(),
        )
        owner._record(request)
        route = owner._find(request.method, request.path)
        reply = (
            route.next_reply(request) if route else Reply(404, json={"error": f"no route for {request.path}"})
        )
        if reply.delay and owner._stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.stream is not None and reply.raw:
            self._write_all(reply.stream(), reply.interval, chunked=False)
            return
        data, reply_headers = reply.encode()
        self.send_response(reply.status)
        for name, value in reply_headers.items():
            self.send_header(name, value)
        if reply.stream is not None:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._write_all(reply.stream(), reply.interval, chunked=True)
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _write_all(self, pieces: Iterable[bytes], interval: float, *, chunked: bool) -> None:
        self.close_connection = True
        try:
            for piece in pieces:
                if self.server.owner._stopping.wait(interval):
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client went away: the point of most endless streams

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_") and name[3:] in _METHODS:
            return self._handle
        raise AttributeError(name)


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 with scripted routes and a log of what it received."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._routes: dict[tuple[str | None, str], Route] = {}
        self._requests: list[RecordedRequest] = []
        self._received = threading.Condition()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> Self:
        """Listen on a port the OS picks and serve in a daemon thread."""
        server = _Server((self.host, 0), _RequestHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake delayed replies, close connections and the listening socket."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    # --- scripting ---

    def route(
        self,
        path: str,
        *,
        method: str | None = None,
        status: int | Sequence[int] = 200,
        json: Any = _UNSET,
        text: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        stream: Callable[[], Iterable[bytes]] | None = None,
        interval: float = 0.0,
        raw: bool = False,
        replies: Sequence[Reply] | None = None,
        handler: Handler | None = None,
    ) -> Route:
        """Script `path` (any method unless `method`): `replies`, a `handler`, or one reply built from the
        keywords, where a list of `status` gives one reply per request (the last one repeats)."""
        if replies is None and handler is None:
            statuses = [status] if isinstance(status, int) else list(status)
            replies = [
                Reply(
                    status=s,
                    json=json,
                    text=text,
                    body=body,
                    headers=dict(headers or {}),
                    delay=delay,
                    stream=stream,
                    interval=interval,
                    raw=raw,
                )
                for s in statuses
            ]
        route = Route(replies, handler)
        self._routes[(method.upper() if method else None, path)] = route
        return route

    def reset(self) -> None:
        """Forget routes and recorded requests."""
        self._routes.clear()
        with self._received:
            self._requests.clear()

    # --- the log ---

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._received:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    def wait_for_requests(
        self, count: int, path: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Block until `count` requests (to `path`, if given) arrived; AssertionError after `timeout`."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._received:
            if not self._received.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(
                    f"expected {count} requests to {path or 'any path'}, got {len(matching())}"
                )
            return matching()

    async def wait_for_requests_async(
        self, count: int, path: str | None = None, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """`wait_for_requests` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_requests, count, path, timeout)

    def _find(self, method: str, path: str) -> Route | None:
        return self._routes.get((method, path)) or self._routes.get((None, path))

    def _record(self, request: RecordedRequest) -> None:
        with self._received:
            self._requests.append(request)
            self._received.notify_all()


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    """A started LoopbackServer, stopped after the test."""
    with LoopbackServer() as server:
        yield server
