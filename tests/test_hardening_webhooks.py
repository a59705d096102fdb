"""Issue 10, item 4: the webhooks of a disabled or demoted user stop receiving events.

Two real users register webhooks through the API; executions run on the session's Temporal dev
server with the real worker (webhook queue and dispatcher); receivers are real HTTP servers on
loopback. An admin then disables or demotes one of the users: that user's webhook gets no new
deliveries (events carry task results), and its pending ones are given up with the reason,
while the other user's webhook goes on as before.

Also the receiver's side of signing: `signing.verify` refuses stale and future timestamps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities import signing
from api.settings import Settings
from tests.conftest import login
from tests.loopback import LoopbackServer
from tests.webhook_support import (
    deliveries,
    register,
    run_noop,
    wait_all_delivered,
    wait_deliveries,
    wait_execution,
)

COMPLETED_ONLY = ["workflow.execution.completed"]


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    # A webhook queue of this test alone (the dev server is shared); retries every second.
    return engine_settings.model_copy(
        update={
            "webhook_task_queue": f"webhooks-{engine_settings.workflow_id_prefix}",
            "webhook_initial_retry_seconds": 1.0,
            "webhook_max_retry_interval_seconds": 1.0,
            "webhook_timeout_seconds": 2.0,
            "webhook_dispatch_seconds": 0.05,
        }
    )


async def new_user(
    client: httpx.AsyncClient, admin: dict[str, str], name: str, role: str = "operator"
) -> tuple[str, dict[str, str]]:
    """(user id, Authorization headers) of a new user."""
    password = f"{name}-password-123"
    response = await client.post(
        "/api/users", json={"username": name, "password": password, "role": role}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], await login(client, name, password)


async def revoke(client: httpx.AsyncClient, admin: dict[str, str], user_id: str, how: str) -> None:
    if how == "disable":
        response = await client.post(f"/api/users/{user_id}/disable", headers=admin)
    else:
        response = await client.patch(f"/api/users/{user_id}", json={"role": "viewer"}, headers=admin)
    assert response.status_code == 200, response.text


REASONS = {"disable": "is disabled", "demote": "no longer has the operator role"}


class TestWebhooksOfRevokedOwners:
    @pytest.mark.parametrize("how", ["disable", "demote"])
    async def test_new_events_reach_only_owners_who_may_still_have_webhooks(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        worker: Any,
        loopback: LoopbackServer,
        how: str,
    ) -> None:
        loopback.route("/alice", method="POST", status=204)
        loopback.route("/bob", method="POST", status=204)
        alice_id, alice = await new_user(client, admin, "alice")
        _, bob = await new_user(client, admin, "bob")
        alice_hook = await register(client, alice, loopback.url_for("/alice"))
        bob_hook = await register(client, bob, loopback.url_for("/bob"))

        # Control: both receive every event of an execution.
        first = await run_noop(client, bob)
        await wait_execution(client, bob, first)
        delivered = await wait_deliveries(
            client,
            bob,
            bob_hook["id"],
            lambda items: items and all(d["status"] == "DELIVERED" for d in items),
            "first run delivered",
        )
        per_run = len(delivered)
        await wait_all_delivered(client, admin, alice_hook["id"], per_run)
        sent_to_alice = len(loopback.requests_to("/alice"))
        assert sent_to_alice == per_run

        await revoke(client, admin, alice_id, how)
        second = await run_noop(client, bob)
        await wait_execution(client, bob, second)
        # Bob's deliveries of the second run are written with its events, in the same
        # transaction as Alice's would be: once they are all delivered, Alice's log is final.
        await wait_all_delivered(client, bob, bob_hook["id"], 2 * per_run)
        assert len(await deliveries(client, admin, alice_hook["id"])) == per_run, (
            "new events queued for a revoked owner"
        )
        assert len(loopback.requests_to("/alice")) == sent_to_alice, (
            "a revoked owner's receiver got new events"
        )

    @pytest.mark.parametrize("how", ["disable", "demote"])
    async def test_pending_deliveries_of_a_revoked_owner_are_given_up(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        worker: Any,
        loopback: LoopbackServer,
        how: str,
    ) -> None:
        # Alice's receiver fails every time: her delivery stays PENDING, retried every second.
        loopback.route("/alice", method="POST", status=500)
        loopback.route("/bob", method="POST", status=[500, 204])
        alice_id, alice = await new_user(client, admin, "alice")
        _, bob = await new_user(client, admin, "bob")
        alice_hook = await register(client, alice, loopback.url_for("/alice"), events=COMPLETED_ONLY)
        bob_hook = await register(client, bob, loopback.url_for("/bob"), events=COMPLETED_ONLY)
        execution = await run_noop(client, alice)
        await wait_execution(client, alice, execution)
        await wait_deliveries(
            client,
            alice,
            alice_hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] >= 1,
            "a failed attempt",
        )

        await revoke(client, admin, alice_id, how)
        (given_up,) = await wait_deliveries(
            client,
            admin,
            alice_hook["id"],
            lambda items: items[0]["status"] == "FAILED",
            "the delivery given up",
        )
        assert REASONS[how] in given_up["lastError"], given_up
        assert "alice" in given_up["lastError"], given_up
        # Bob's delivery of the same event, retried after its own failure, is delivered.
        await wait_all_delivered(client, bob, bob_hook["id"], 1)


# --- signing.verify: a timestamp tolerance (a low item) ---------------------------------------------


def readme_verify() -> Any:
    """The receiver's `verify()` the README shows (in its receiver.py), run as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("<!-- readme-file: receiver.py -->")) + len("```python\n")
    namespace: dict[str, Any] = {"__name__": "readme_receiver"}  # not __main__: no server starts
    exec(text[start : text.index("```", start)], namespace)  # noqa: S102 (our own README)
    return namespace["verify"]


class TestVerify:
    SECRET = signing.generate_secret()
    BODY = b'{"type":"workflow.execution.completed"}'

    def request(self, timestamp: int) -> tuple[str, str, str]:
        headers = signing.headers(self.SECRET, "msg_1", timestamp, self.BODY)
        return headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]

    def test_a_fresh_request_verifies(self) -> None:
        assert signing.verify(
            self.SECRET, *self.request(int(time.time()))[:2], self.BODY, self.request(int(time.time()))[2]
        )

    @pytest.mark.parametrize(
        "offset", [-301, 301, -86400, 10**9], ids=["stale", "future", "a-day-old", "far-future"]
    )
    def test_a_correctly_signed_request_outside_the_tolerance_is_refused(self, offset: int) -> None:
        now = time.time()
        message_id, timestamp, signature = self.request(int(now) + offset)
        assert not signing.verify(self.SECRET, message_id, timestamp, self.BODY, signature, now=now)
        # The signature itself is right: a wider tolerance accepts it.
        assert signing.verify(
            self.SECRET,
            message_id,
            timestamp,
            self.BODY,
            signature,
            now=now,
            tolerance_seconds=abs(offset) + 1,
        )

    def test_the_tolerance_is_a_parameter(self) -> None:
        now = time.time()
        message_id, timestamp, signature = self.request(int(now) - 60)
        assert signing.verify(self.SECRET, message_id, timestamp, self.BODY, signature, now=now)
        assert not signing.verify(
            self.SECRET, message_id, timestamp, self.BODY, signature, now=now, tolerance_seconds=30
        )

    @pytest.mark.parametrize("timestamp", ["", "abc", "-5", "1e9", "١٢٣", "9" * 5000])
    def test_a_malformed_timestamp_is_refused(self, timestamp: str) -> None:
        assert not signing.verify(self.SECRET, "msg_1", timestamp, self.BODY, "v1,AAAA")

    @pytest.mark.parametrize("offset", [0, -60, -299, -301, 301, -86400])
    def test_the_readme_example_agrees(self, offset: int) -> None:
        message_id, timestamp, signature = self.request(int(time.time()) + offset)
        headers = {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
        assert readme_verify()(self.SECRET, headers, self.BODY) == signing.verify(
            self.SECRET, message_id, timestamp, self.BODY, signature
        )
