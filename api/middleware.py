"""Pure ASGI middleware: API version negotiation, request body limits, security headers.

They answer before routing, so they render their problems themselves.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import (
    AppError,
    NotAcceptable,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthenticated,
    UnsupportedMediaType,
)
from api.problems import problem_response
from api.security import InvalidToken, decode_token
from api.settings import Settings

SUPPORTED_VERSIONS = (1, 2)
DEFAULT_VERSION = 1
VENDOR_MEDIA_TYPE = "application/vnd.workflow-orchestration.v{version}+json"

_URL_VERSION = re.compile(r"^/api/v(\d{1,6})(/.*)?$")
_VENDOR = re.compile(r"^application/vnd\.workflow-orchestration\.v(\d{1,6})\+json$", re.IGNORECASE)
_GENERIC_JSON = {"*/*", "application/*", "application/json"}
#: The login route under every version prefix (this middleware runs before versions are resolved).
_LOGIN = re.compile(r"^/api(?:/v\d{1,6})?/auth/login/?$")


def media_type(version: int) -> str:
    return VENDOR_MEDIA_TYPE.format(version=version)


async def _reject(scope: Scope, receive: Receive, send: Send, problem: AppError) -> None:
    response = problem_response(problem, scope.get("path"))
    await response(scope, receive, send)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


@dataclass(frozen=True, slots=True)
class _Range:
    media: str
    quality: float


def _parse_accept(value: str) -> list[_Range]:
    ranges = []
    for part in value.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw)
                except ValueError:
                    quality = 0.0
        ranges.append(_Range(media.lower(), quality))
    return ranges


def negotiate_version(accept: str | None) -> int:
    """The version an `Accept` header asks for; 406 if it only asks for versions we lack."""
    if not accept:
        return DEFAULT_VERSION
    asked: list[tuple[float, int]] = []
    fallback = False
    for item in _parse_accept(accept):
        if item.quality <= 0:
            continue
        match = _VENDOR.match(item.media)
        if match:
            asked.append((item.quality, int(match[1])))
        elif item.media in _GENERIC_JSON or not item.media.startswith(
            "application/vnd.workflow-orchestration"
        ):
            fallback = True
    supported = [(q, v) for q, v in asked if v in SUPPORTED_VERSIONS]
    if supported:
        return max(supported)[1]
    if asked and not fallback:
        versions = ", ".join(f"v{v}" for _, v in asked)
        raise NotAcceptable(
            f"API version {versions} is not available; this server speaks "
            + ", ".join(f"v{v}" for v in SUPPORTED_VERSIONS)
            + "."
        )
    return DEFAULT_VERSION


class ApiVersionMiddleware:
    """`/api/vN/...` and `Accept: application/vnd.workflow-orchestration.vN+json` choose the version
    (the URL wins); routes live once under `/api` and read `scope["wfo.api_version"]`; JSON answers
    name the version served in their Content-Type."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        match = _URL_VERSION.match(path)
        try:
            if match:
                version = int(match[1])
                if version not in SUPPORTED_VERSIONS:
                    raise NotAcceptable(
                        f"API version v{version} does not exist; use "
                        + " or ".join(f"/api/v{v}" for v in SUPPORTED_VERSIONS)
                        + "."
                    )
                inner = "/api" + (match[2] or "")
            else:
                version = negotiate_version(Headers(scope=scope).get("accept"))
                inner = path
        except NotAcceptable as problem:
            await _reject(scope, receive, send, problem)
            return

        scope = dict(scope, path=inner, raw_path=inner.encode())
        scope["wfo.api_version"] = version
        scope["wfo.original_path"] = path
        served = media_type(version)

        async def send_versioned(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith("application/json"):
                    headers["content-type"] = served
                headers.append("vary", "Accept")
            await send(message)

        await self.app(scope, receive, send_versioned)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _is_login(path: str) -> bool:
    return _LOGIN.match(path) is not None


def _is_graphql(path: str) -> bool:
    return path in ("/graphql", "/graphql/")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How much of a request body the server reads, and for whom (from the settings)."""

    #: Any route's largest body.
    max_bytes: int
    #: The login route's, and GraphQL's without a valid bearer token (and any WebSocket message):
    #: read before anyone is authenticated, so they stay small.
    login_bytes: int
    graphql_bytes: int
    #: Bodies over this are read only for a valid bearer token, and `large_concurrency` at a time.
    large_bytes: int
    large_concurrency: int
    large_wait_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(
            max_bytes=settings.max_body_bytes,
            login_bytes=settings.login_max_body_bytes,
            graphql_bytes=settings.graphql_max_body_bytes,
            large_bytes=settings.large_body_bytes,
            large_concurrency=settings.large_body_concurrency,
            large_wait_seconds=settings.large_body_wait_seconds,
        )

    def cap(self, path: str, *, bearer: bool) -> int:
        """The largest body `path` takes; `bearer`: the request carries a valid bearer token."""
        if _is_login(path):
            return self.login_bytes
        if _is_graphql(path) and not bearer:
            return self.graphql_bytes
        return self.max_bytes


def _declared_length(headers: Headers) -> int | None:
    declared = headers.get("content-length")
    return int(declared) if declared is not None and declared.isdecimal() else None


def _too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds the limit of {cap} bytes.")


class RequestBodyMiddleware:
    """Bounds what a request body can cost before anyone is authenticated.

    * Each route has a cap (login, and GraphQL without a valid bearer token, small): a declared
      Content-Length over it is 413 before the body is read, a streamed body is cut off at it.
    * A body over `large_bytes` is read only with a valid bearer token (signature and expiry: no
      database work here): without one the answer is 401 before the body, or as soon as a streamed
      body grows past `large_bytes`. Whether the token's user is still active is the route's check.
    * At most `large_concurrency` large bodies are read and handled at once (JSON parsing costs many
      times the body's size); the others wait up to `large_wait_seconds`, then get 503.
    * API bodies that are not JSON get 415.
    * WebSocket messages on /graphql over its cap close the socket (1009) before they are parsed.

    The body is read here, bounded, and replayed to the app: every API body is JSON that the app
    reads whole anyway.
    """

    _METHODS = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.limits = BodyLimits.of(settings)
        self._large = asyncio.Semaphore(self.limits.large_concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _is_graphql(scope["path"]):
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] not in self._METHODS:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        headers = Headers(scope=scope)
        path = scope["path"]
        unauthenticated = None if _is_login(path) else self._bearer_problem(headers)
        cap = limits.cap(path, bearer=unauthenticated is None)
        declared = _declared_length(headers)
        if declared is not None and declared > cap:
            await _reject(scope, receive, send, _too_large(cap))
            return
        may_be_large = cap > limits.large_bytes and (declared is None or declared > limits.large_bytes)
        refusal = unauthenticated if may_be_large else None
        if refusal is not None and declared is not None:
            await _reject(scope, receive, send, refusal)
            return

        holding = False
        try:
            if may_be_large and declared is not None:
                if not await self._take_turn():
                    await _reject(scope, receive, send, self._busy())
                    return
                holding = True
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > cap:
                    await _reject(scope, receive, send, _too_large(cap))
                    return
                if size > limits.large_bytes and not holding and may_be_large:
                    # A streamed body just grew large: the same checks as a declared one, now.
                    if refusal is not None:
                        await _reject(scope, receive, send, refusal)
                        return
                    if not await self._take_turn():
                        await _reject(scope, receive, send, self._busy())
                        return
                    holding = True
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            del chunks  # the parts: only the joined copy stays while the app parses it

            if body and _is_api(path) and not _is_json(headers.get("content-type", "")):
                problem = UnsupportedMediaType(
                    "Send the request body as JSON with Content-Type: application/json."
                )
                await _reject(scope, receive, send, problem)
                return

            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            if holding:
                self._large.release()

    def _bearer_problem(self, headers: Headers) -> Unauthenticated | None:
        """Why the request's bearer token does not let it send a large body (None: it does)."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Unauthenticated("A valid bearer token is required to send a body this large.")
        try:
            decode_token(self.settings, token.strip())
        except InvalidToken:
            return Unauthenticated("The bearer token is invalid or expired.", invalid_token=True)
        return None

    async def _take_turn(self) -> bool:
        """Wait (a while) for one of the large-body slots; False when none came free in time."""
        try:
            async with asyncio.timeout(self.limits.large_wait_seconds):
                await self._large.acquire()
        except TimeoutError:
            return False
        return True

    def _busy(self) -> ServiceUnavailable:
        retry_after = max(1, math.ceil(self.limits.large_wait_seconds))
        return ServiceUnavailable(
            "Too many large request bodies are being handled; try again shortly.",
            headers={"Retry-After": str(retry_after)},
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.limits.graphql_bytes
        closed = False

        async def bounded_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and _message_size(message) > cap:
                # 1009: "message too big". Never handed to the app, so never parsed.
                closed = True
                await send(
                    {
                        "type": "websocket.close",
                        "code": 1009,
                        "reason": f"messages are limited to {cap} bytes",
                    }
                )
                return {"type": "websocket.disconnect", "code": 1009}
            return message

        async def guarded_send(message: Message) -> None:
            if not closed:  # the app may still try to answer or close a socket closed above
                await send(message)

        await self.app(scope, bounded_receive, guarded_send)


def _message_size(message: Message) -> int:
    """A WebSocket message's size in bytes (UTF-8 encoded only when it is not ASCII)."""
    data = message.get("bytes")
    if data is not None:
        return len(data)
    text = message.get("text") or ""
    return len(text) if text.isascii() else len(text.encode())


#: On every answer: no MIME sniffing, no referrer sent onwards, no framing (clickjacking).
_EVERY_ANSWER = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: Every answer that does not set its own policy loads and runs nothing. The pages (api/pages) set
#: theirs: scripts, styles and connections from this service only.
_STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"


class SecurityHeadersMiddleware:
    """Security headers on every HTTP answer, the middleware's own refusals included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _EVERY_ANSWER.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", _STRICT_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)
