"""Pure ASGI middleware: API version negotiation, body size and media type checks.

They answer before routing, so they render their problems themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import AppError, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from api.problems import problem_response

SUPPORTED_VERSIONS = (1, 2)
DEFAULT_VERSION = 1
VENDOR_MEDIA_TYPE = "application/vnd.workflow-orchestration.v{version}+json"

_URL_VERSION = re.compile(r"^/api/v(\d{1,6})(/.*)?$")
_VENDOR = re.compile(r"^application/vnd\.workflow-orchestration\.v(\d{1,6})\+json$", re.IGNORECASE)
_GENERIC_JSON = {"*/*", "application/*", "application/json"}


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
        elif item.media in _GENERIC_JSON or not item.media.startswith("application/vnd.workflow-orchestration"):
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


class RequestBodyMiddleware:
    """Bodies over `max_bytes` get 413 (declared or streamed); API bodies that are not JSON get 415.

    The body is read here, bounded, and replayed to the app: every API body is JSON that the
    app reads whole anyway.
    """

    _METHODS = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self._METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        too_large = PayloadTooLarge(f"The request body exceeds the limit of {self.max_bytes} bytes.")
        declared = headers.get("content-length")
        if declared is not None and declared.isdecimal() and int(declared) > self.max_bytes:
            await _reject(scope, receive, send, too_large)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _reject(scope, receive, send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        if body and _is_api(scope["path"]) and not _is_json(headers.get("content-type", "")):
            problem = UnsupportedMediaType("Send the request body as JSON with Content-Type: application/json.")
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
