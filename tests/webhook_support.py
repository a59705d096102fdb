"""Helpers of the webhook tests: a Standard Webhooks verifier written independently of
activities/signing.py (the few lines a receiver writes), a receiver on a port chosen in advance
(to bring a "dead" receiver back up), and the REST calls the tests repeat, with waits on conditions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

import httpx

from tests.loopback import LoopbackServer, RecordedRequest, _RequestHandler, _Server

#: The API reference's secret (14 characters: over the 12-character minimum).
SPEC_SECRET = "webhook-secret"
#: Public event names, as the API reference's webhook section and the issue list them.
EVENTS = (
    "workflow.execution.started",
    "workflow.execution.completed",
    "workflow.execution.failed",
    "workflow.execution.cancelled",
    "task.execution.started",
    "task.execution.completed",
    "task.execution.failed",
    "task.execution.cancelled",
    "task.execution.waiting",
    "synchronization.point.reached",
    "synchronization.point.failed",
    "milestone.achieved",
    "blocker.detected",
    "blocker.resolved",
    "progress.updated",
)
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


# --- what a receiver does ------------------------------------------------------------------------


def receiver_key(secret: str) -> bytes:
    """Standard Webhooks: a `whsec_` secret is base64 of the key; any other secret is its own bytes."""
    return base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()


def expected_signature(secret: str, request: RecordedRequest) -> str:
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
    )
    return "v1," + base64.b64encode(hmac.new(receiver_key(secret), signed, hashlib.sha256).digest()).decode()


def verify_signature(secret: str, request: RecordedRequest) -> bool:
    """Any of the space-separated `v1,` signatures matching HMAC-SHA256(id.timestamp.body) is enough."""
    expected = expected_signature(secret, request).encode()
    return any(
        hmac.compare_digest(expected, s.encode())
        for s in request.headers.get("webhook-signature", "").split()
    )


# --- a receiver that can come back on the same port ------------------------------------------------


class ReceiverOnPort(LoopbackServer):
    """A LoopbackServer on a given port (the base class lets the OS pick one)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._wanted_port = port

    def start(self) -> Self:
        server = _Server((self.host, self._wanted_port), _RequestHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self


# --- REST calls ----------------------------------------------------------------------------------


async def register(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    url: str,
    events: Iterable[str] = ("*",),
    secret: str | None = SPEC_SECRET,
    **fields: Any,
) -> dict[str, Any]:
    """Register a webhook (201 expected); returns the v2 answer (with the secret, this once)."""
    body: dict[str, Any] = {"url": url, "events": list(events), **fields}
    if secret is not None:
        body["secret"] = secret
    response = await client.post("/api/v2/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def webhook(client: httpx.AsyncClient, headers: dict[str, str], webhook_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v2/webhooks/{webhook_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], webhook_id: str, **params: Any
) -> list[dict[str, Any]]:
    """The delivery log (v2, up to 100 entries, newest first)."""
    response = await client.get(
        f"/api/v2/webhooks/{webhook_id}/deliveries", params={"limit": 100, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def wait_deliveries(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    webhook_id: str,
    predicate: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll the delivery log until `predicate(items)` holds."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = await deliveries(client, headers, webhook_id)
        if predicate(items):
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"webhook {webhook_id}: {what} not seen within {timeout}s; log: {json.dumps(items, indent=1)}"
    )


async def wait_all_delivered(
    client: httpx.AsyncClient, headers: dict[str, str], webhook_id: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    return await wait_deliveries(
        client,
        headers,
        webhook_id,
        lambda items: len(items) == count and all(d["status"] == "DELIVERED" for d in items),
        f"{count} deliveries DELIVERED",
        timeout,
    )


async def define(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    tasks: list[dict[str, Any]],
    sync_points: list[dict[str, Any]] | None = None,
) -> str:
    body = {"name": "webhook-test", "tasks": tasks, "synchronizationPoints": sync_points or []}
    response = await client.post("/api/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def start(client: httpx.AsyncClient, headers: dict[str, str], definition_id: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v2/executions", json={"workflowDefinitionId": definition_id}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def run_noop(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """Start an execution of one noop task; returns its id (it completes at once)."""
    return (await start(client, headers, await define(client, headers, [{"id": "only", "name": "only"}])))[
        "id"
    ]


async def wait_execution(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    execution_id: str,
    predicate: Callable[[dict[str, Any]], bool] = lambda body: body["status"] in FINISHED,
    what: str = "finished",
    timeout: float = 30.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await client.get(f"/api/v2/executions/{execution_id}", headers=headers)).json()
        if predicate(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"execution {execution_id}: {what} not seen within {timeout}s; last: {json.dumps(body, indent=1)}"
    )


def task_of(execution: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    return next((t for t in execution["taskExecutions"] if t["taskDefinitionId"] == task_id), None)


def by_message(requests: Iterable[RecordedRequest]) -> dict[str, list[RecordedRequest]]:
    """Requests grouped by webhook-id (one delivery's attempts), in arrival order."""
    grouped: dict[str, list[RecordedRequest]] = {}
    for request in requests:
        grouped.setdefault(request.headers["webhook-id"], []).append(request)
    return grouped


def gaps(requests: list[RecordedRequest]) -> list[float]:
    """Seconds between consecutive requests."""
    return [b.received_at - a.received_at for a, b in itertools.pairwise(requests)]
