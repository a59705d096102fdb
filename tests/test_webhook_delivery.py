"""Webhook deliveries on the real stack: the Temporal dev server, the real worker (webhook queue
and dispatcher), the real database, and receivers that are real HTTP servers on loopback.

Every event type is produced by driving executions (approval, failing http task, cancel, a sync
point reached and one missed, blockers); then retries and backoff, Retry-After, 410, receivers
that are down, slow or dead, restarts of the worker and of the API, the end of the retry period,
time-based deactivation, the delivery log and redelivery, signatures, and the SSRF guard at
delivery time. Settings are small so that all of it takes seconds.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.testing import WorkflowEnvironment

from api.db import create_engine, session_factory, utcnow
from api.models.executions import ExecutionRow
from api.models.webhooks import WebhookDeliveryRow
from api.services.delivery import Deliverer
from api.services.readmodel import apply_batch
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, free_port, login, problem, running_worker
from tests.graphql_client import data_of, error_of, gql
from tests.loopback import RecordedRequest, Reply
from tests.processes import (
    server_client,
    wait_http_ready,
    wait_temporal_ready,
    wait_worker_polling,
)
from tests.webhook_support import (
    EVENTS,
    SPEC_SECRET,
    ReceiverOnPort,
    by_message,
    define,
    deliveries,
    gaps,
    register,
    run_noop,
    start,
    task_of,
    verify_signature,
    wait_all_delivered,
    wait_deliveries,
    wait_execution,
    webhook,
)
from workflows.inputs import DeliveryInput, Event, EventBatch

DELIVERY_KEYS = {
    "id", "webhookId", "event", "eventId", "status", "attempts", "lastStatusCode", "lastError",
    "lastAttemptAt", "nextAttemptAt", "createdAt", "deliveredAt",
}  # fmt: skip
COMPLETED_ONLY = ["workflow.execution.completed"]


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (parametrize `overrides` to change them)."""
    return {}


def tuned(**values: Any) -> pytest.MarkDecorator:
    """Run the test with these settings on top of the module's."""
    return pytest.mark.parametrize("overrides", [values], ids=["tuned"])


@pytest.fixture
def settings(engine_settings: Settings, overrides: dict[str, Any]) -> Settings:
    # A webhook queue of this test alone: the session's dev server is shared, and a delivery
    # workflow of an earlier test must never be picked up by this test's worker (delivery ids are
    # small integers in every fresh database).
    return engine_settings.model_copy(
        update={
            "webhook_task_queue": f"webhooks-{engine_settings.workflow_id_prefix}",
            "webhook_initial_retry_seconds": 1.0,  # Temporal's shortest retry interval anyway
            "webhook_max_retry_interval_seconds": 1.0,
            "webhook_timeout_seconds": 2.0,
            "webhook_dispatch_seconds": 0.05,
            **overrides,
        }
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def sqlite_only() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def public_events(app, execution_ids: list[str]) -> list[tuple[str, int, str]]:
    """(execution id, sequence, type) of the execution's public events, from the read model's event log."""
    async with app.state.engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT execution_id, seq, type FROM execution_events WHERE execution_id IN :ids ORDER BY execution_id, seq"
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"ids": [int(i) for i in execution_ids]},
        )
        return [(str(e), s, t) for e, s, t in rows if t in EVENTS]


def gated(gate: threading.Event, reply: Reply) -> Any:
    """A handler that holds the request until `gate` is set, then answers `reply`."""

    def handler(request: RecordedRequest) -> Reply:
        gate.wait(30)
        return reply

    return handler


# --- every event, with its snapshot ------------------------------------------------------------------


class TestEvents:
    async def test_every_event_is_delivered_with_its_snapshot(self, app, client, operator, worker, loopback):
        for path in ("/all", "/some", "/off"):
            loopback.route(path, method="POST", json={"ok": True})
        loopback.route("/gone", status=404, json={"error": "no such thing"})
        everything = await register(client, operator, loopback.url_for("/all"))
        some = await register(
            client,
            operator,
            loopback.url_for("/some"),
            ["task.execution.failed", "workflow.execution.completed"],
        )
        off = await register(client, operator, loopback.url_for("/off"), ["*"], active=False)

        completes = await define(
            client,
            operator,
            [
                {"id": "a", "name": "A"},
                {"id": "b", "name": "Sign-off", "type": "approval", "dependencies": ["a"]},
                {"id": "c", "name": "C", "dependencies": ["b"]},
            ],
            [{"id": "after-a", "name": "After A", "requiredTasks": ["a"]}],
        )
        fails = await define(
            client,
            operator,
            [
                {
                    "id": "fetch",
                    "name": "Fetch",
                    "type": "http",
                    "input": {"url": loopback.url_for("/gone")},
                    "retryPolicy": {"maxAttempts": 1},
                }
            ],
        )
        cancels = await define(client, operator, [{"id": "wait", "name": "Wait", "type": "approval"}])
        misses = await define(
            client,
            operator,
            [{"id": "gate", "name": "Gate", "type": "approval"}],
            [{"id": "deadline", "name": "Deadline", "requiredTasks": ["gate"], "timeout": 2}],
        )
        ids = {
            name: (await start(client, operator, d))["id"]
            for name, d in (
                ("completes", completes),
                ("fails", fails),
                ("cancels", cancels),
                ("misses", misses),
            )
        }

        waiting = await wait_execution(
            client,
            operator,
            ids["completes"],
            lambda b: (task_of(b, "b") or {}).get("status") == "WAITING",
            "b WAITING",
        )
        approved = await client.post(
            f"/api/tasks/{task_of(waiting, 'b')['id']}/complete",
            json={"output": {"approvedBy": "olivia"}},
            headers=operator,
        )
        assert approved.status_code == 200, approved.text
        await wait_execution(
            client,
            operator,
            ids["cancels"],
            lambda b: (task_of(b, "wait") or {}).get("status") == "WAITING",
            "wait WAITING",
        )
        cancelled = await client.post(f"/api/v2/executions/{ids['cancels']}/cancel", headers=operator)
        assert cancelled.status_code == 200, cancelled.text

        finals = {
            name: await wait_execution(client, operator, execution_id) for name, execution_id in ids.items()
        }
        assert {name: body["status"] for name, body in finals.items()} == {
            "completes": "COMPLETED", "fails": "FAILED", "cancels": "CANCELLED", "misses": "FAILED",
        }  # fmt: skip

        # Every public event of the event log is one delivery to the `*` webhook, and one request.
        expected = await public_events(app, list(ids.values()))
        await wait_all_delivered(client, operator, everything["id"], len(expected))
        requests = loopback.requests_to("/all")
        bodies = [r.json() for r in requests]
        assert Counter(
            (b["data"]["executionId"], b["data"]["sequence"], b["type"]) for b in bodies
        ) == Counter(expected)
        assert {b["type"] for b in bodies} == set(EVENTS), set(EVENTS) - {b["type"] for b in bodies}

        tasks = {
            name: {t["taskDefinitionId"]: t["id"] for t in body["taskExecutions"]}
            for name, body in finals.items()
        }
        execution_of = {v: k for k, v in ids.items()}
        for request, body in zip(requests, bodies, strict=True):
            assert set(body) == {"id", "type", "createdAt", "data"}
            assert body["id"] == request.headers["webhook-id"] and body["id"].startswith("msg_")
            assert body["createdAt"].endswith("Z")
            assert verify_signature(SPEC_SECRET, request), body
            data = body["data"]
            name = execution_of[data["executionId"]]
            assert data["workflowDefinitionId"] == finals[name]["workflowDefinitionId"]
            kind = body["type"]
            if kind.startswith("workflow.execution."):
                status = {"started": "RUNNING"}.get(kind.rsplit(".", 1)[1], kind.rsplit(".", 1)[1].upper())
                assert (
                    data["execution"]["id"] == data["executionId"] and data["execution"]["status"] == status
                ), body
            elif kind.startswith("task.execution."):
                status = {"started": "RUNNING"}.get(kind.rsplit(".", 1)[1], kind.rsplit(".", 1)[1].upper())
                task = data["task"]
                assert task["status"] == status, body
                assert task["id"] == tasks[name][task["taskDefinitionId"]], body
            elif kind.startswith("synchronization.point."):
                assert data["synchronizationPoint"]["id"] in ("after-a", "deadline")
            elif kind == "milestone.achieved":
                assert data["milestone"]["achieved"] is True and data["milestone"]["achievedAt"]
            elif kind.startswith("blocker."):
                assert data["blocker"]["id"] and data["blocker"]["description"]
                assert (data["blocker"]["resolvedAt"] is not None) == (kind == "blocker.resolved"), body
            elif kind == "progress.updated":
                assert 1 <= data["progress"]["completedTasks"] <= data["progress"]["totalTasks"]

        def of(name: str, kind: str) -> list[dict[str, Any]]:
            return sorted(
                (b["data"] for b in bodies if b["type"] == kind and b["data"]["executionId"] == ids[name]),
                key=lambda d: d["sequence"],
            )

        # What each execution told, in its own words.
        assert [d["task"]["taskDefinitionId"] for d in of("completes", "task.execution.completed")] == [
            "a",
            "b",
            "c",
        ]
        assert of("completes", "task.execution.completed")[1]["task"]["result"] == {"approvedBy": "olivia"}
        assert [d["task"]["taskDefinitionId"] for d in of("completes", "task.execution.waiting")] == ["b"]
        assert [
            d["synchronizationPoint"]["id"] for d in of("completes", "synchronization.point.reached")
        ] == ["after-a"]
        assert [d["milestone"]["name"] for d in of("completes", "milestone.achieved")] == [
            "Initialization",
            "After A",
            "Completion",
        ]
        assert [d["progress"] for d in of("completes", "progress.updated")] == [
            {"completedTasks": n, "totalTasks": 3} for n in (1, 2, 3)
        ]
        assert [d["blocker"]["kind"] for d in of("completes", "blocker.detected")] == ["approval"]
        assert [d["blocker"]["kind"] for d in of("completes", "blocker.resolved")] == ["approval"]
        assert (
            of("completes", "blocker.resolved")[0]["blocker"]["id"]
            == of("completes", "blocker.detected")[0]["blocker"]["id"]
        )

        (failed_task,) = of("fails", "task.execution.failed")
        assert failed_task["task"]["taskDefinitionId"] == "fetch" and "404" in failed_task["task"]["error"]
        assert [d["blocker"]["kind"] for d in of("fails", "blocker.detected")] == ["task_failed"]
        assert of("fails", "blocker.detected")[0]["blocker"]["taskExecutionId"] == tasks["fails"]["fetch"]
        assert of("fails", "workflow.execution.failed")[0]["execution"]["error"]

        assert [d["task"]["taskDefinitionId"] for d in of("cancels", "task.execution.cancelled")] == ["wait"]
        assert len(of("cancels", "workflow.execution.cancelled")) == 1

        (missed,) = of("misses", "synchronization.point.failed")
        assert missed["synchronizationPoint"]["id"] == "deadline"
        assert (
            missed["synchronizationPoint"]["error"]
            == "synchronization point deadline was not reached within 2s"
        )
        assert sorted(d["blocker"]["kind"] for d in of("misses", "blocker.detected")) == [
            "approval",
            "sync_point_missed",
        ]
        assert [d["task"]["taskDefinitionId"] for d in of("misses", "task.execution.cancelled")] == ["gate"]
        assert of("misses", "workflow.execution.failed")[0]["execution"]["status"] == "FAILED"

        # The sequence is the execution's own numbering, without gaps between public and internal events.
        for execution_id in ids.values():
            sequences = sorted(
                b["data"]["sequence"] for b in bodies if b["data"]["executionId"] == execution_id
            )
            assert sequences == sorted(s for e, s, _ in expected if e == execution_id)
            assert len(set(sequences)) == len(sequences)

        # A subscription to two events gets exactly those, and an inactive webhook nothing.
        wanted = [e for e in expected if e[2] in ("task.execution.failed", "workflow.execution.completed")]
        assert len(wanted) == 2
        await wait_all_delivered(client, operator, some["id"], len(wanted))
        got = [r.json() for r in loopback.requests_to("/some")]
        assert sorted((b["data"]["executionId"], b["data"]["sequence"], b["type"]) for b in got) == sorted(
            wanted
        )
        assert await deliveries(client, operator, off["id"]) == [] and loopback.requests_to("/off") == []


# --- retries ---------------------------------------------------------------------------------------


@sqlite_only()
class TestRetries:
    # The Temporal server waits at least a second before retrying an activity (a shorter interval,
    # or next_retry_delay, becomes 1 s: measured on the dev server 1.32), so backoff is observed
    # from 1 s on: 1 s, 2 s, then capped at the longest interval, 2 s.
    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=2.0)
    async def test_exponential_backoff_after_server_errors(self, client, operator, worker, loopback):
        loopback.route("/hook", status=[500, 500, 500, 200], text="oops")
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)

        # Between attempts the log says what happened and when the next attempt is due.
        (pending,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] >= 1 and items[0]["status"] == "PENDING",
            "a failed attempt",
        )
        assert (
            pending["lastStatusCode"] == 500 and pending["lastError"] == "answered 500 Internal Server Error"
        )
        due = (parse_time(pending["nextAttemptAt"]) - parse_time(pending["lastAttemptAt"])).total_seconds()
        assert due == pytest.approx(min(2.0 ** (pending["attempts"] - 1), 2.0), abs=0.002)
        assert pending["deliveredAt"] is None

        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert done["attempts"] == 4 and done["lastStatusCode"] == 200 and done["lastError"] is None
        assert done["nextAttemptAt"] is None and done["deliveredAt"] == done["lastAttemptAt"]
        requests = loopback.requests_to("/hook")
        assert len(requests) == 4
        for gap, expected in zip(gaps(requests), (1.0, 2.0, 2.0), strict=True):
            assert expected * 0.95 <= gap < expected + 1.0, (gaps(requests), expected)
        assert (await webhook(client, operator, hook["id"]))["lastSuccessAt"] == done["deliveredAt"]

    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=1.0)
    async def test_every_attempt_keeps_the_id_with_a_fresh_timestamp_and_signature(
        self, client, operator, worker, loopback
    ):
        loopback.route("/hook", status=[503, 500, 200])
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        attempts = loopback.requests_to("/hook")
        assert len(attempts) == done["attempts"] == 3
        assert {r.headers["webhook-id"] for r in attempts} == {done["eventId"]}
        assert len({r.body for r in attempts}) == 1, "every attempt sends the same body"
        stamps = [int(r.headers["webhook-timestamp"]) for r in attempts]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3, stamps
        assert abs(stamps[-1] - time.time()) < 30
        assert len({r.headers["webhook-signature"] for r in attempts}) == 3
        assert all(verify_signature(SPEC_SECRET, r) for r in attempts)

    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=1.0)
    async def test_receiver_down_then_back_up(self, client, operator, worker):
        port = free_port()
        hook = await register(client, operator, f"http://127.0.0.1:{port}/hook", COMPLETED_ONLY)
        await run_noop(client, operator)
        (down,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] >= 2,
            "two refused attempts",
        )
        assert down["status"] == "PENDING" and down["lastStatusCode"] is None
        assert down["lastError"] == "connection refused" and down["nextAttemptAt"]

        with ReceiverOnPort(port) as receiver:
            receiver.route("/hook", json={})
            (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
            (request,) = receiver.requests_to("/hook")
        assert done["attempts"] >= 3 and done["lastStatusCode"] == 200 and done["lastError"] is None
        assert request.headers["webhook-id"] == done["eventId"] and verify_signature(SPEC_SECRET, request)

    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=10)
    async def test_retry_after_is_honoured_on_429_and_503(self, client, operator, worker, loopback):
        answers = iter(
            [
                # An HTTP date three seconds ahead (whole seconds: 2 to 3 s from now).
                lambda: Reply(
                    503, headers={"Retry-After": email.utils.formatdate(time.time() + 3, usegmt=True)}
                ),
                lambda: Reply(429, headers={"Retry-After": "3"}),
                lambda: Reply(200),
            ]
        )
        loopback.route("/hook", handler=lambda request: next(answers)())
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        (pending,) = await wait_deliveries(
            client, operator, hook["id"], lambda items: items and items[0]["attempts"] >= 1, "attempt 1"
        )
        if pending["attempts"] == 1:
            due = (
                parse_time(pending["nextAttemptAt"]) - parse_time(pending["lastAttemptAt"])
            ).total_seconds()
            assert 1.9 <= due <= 3.0, pending
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert done["attempts"] == 3
        first, second = gaps(loopback.requests_to("/hook"))
        # Without Retry-After the backoff would wait 1 s, then 2 s.
        assert 1.9 <= first < 4.5, first
        assert 2.9 <= second < 4.5, second

    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=1.0)
    async def test_retry_after_is_capped_by_the_longest_interval(self, client, operator, worker, loopback):
        loopback.route("/hook", replies=[Reply(503, headers={"Retry-After": "3600"}), Reply(200)])
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, hook["id"], 1)
        (gap,) = gaps(loopback.requests_to("/hook"))
        assert 0.9 <= gap < 3.5, gap

    async def test_410_deactivates_the_webhook_at_once(self, client, operator, worker, loopback):
        loopback.route("/gone", status=410, text="unsubscribed")
        loopback.route("/control", json={})
        gone = await register(client, operator, loopback.url_for("/gone"), COMPLETED_ONLY)
        control = await register(client, operator, loopback.url_for("/control"), COMPLETED_ONLY)
        await run_noop(client, operator)

        (failed,) = await wait_deliveries(
            client,
            operator,
            gone["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
            "FAILED",
        )
        assert failed["attempts"] == 1 and failed["lastStatusCode"] == 410
        assert "answered 410 Gone" in failed["lastError"]
        assert failed["nextAttemptAt"] is None
        v2 = await webhook(client, operator, gone["id"])
        assert v2["active"] is False and "410 Gone" in v2["deactivatedReason"], v2
        assert (await client.get(f"/api/webhooks/{gone['id']}", headers=operator)).json()["active"] is False

        # Later events go to the control webhook only.
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, control["id"], 2)
        assert len(loopback.requests_to("/control")) == 2
        assert len(loopback.requests_to("/gone")) == 1
        assert len(await deliveries(client, operator, gone["id"])) == 1

    @tuned(webhook_timeout_seconds=20)
    async def test_slow_and_dead_receivers_do_not_hold_up_others(self, client, operator, worker, loopback):
        gate = threading.Event()
        loopback.route("/slow", handler=gated(gate, Reply(200)))
        loopback.route("/fast", json={})
        try:
            slow = await register(client, operator, loopback.url_for("/slow"))
            dead = await register(client, operator, f"http://127.0.0.1:{free_port()}/hook")
            fast = await register(client, operator, loopback.url_for("/fast"))
            definition = await define(
                client, operator, [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "dependencies": ["a"]}]
            )
            execution = await start(client, operator, definition)
            # The execution is not held up either (deliveries have their own queue).
            final = await wait_execution(client, operator, execution["id"])
            assert final["status"] == "COMPLETED"
            # Deliveries are written with the events: all of them exist once the execution finished.
            count = len(await deliveries(client, operator, fast["id"]))
            assert count >= 7 and len(await deliveries(client, operator, slow["id"])) == count
            await wait_all_delivered(client, operator, fast["id"], count)
            assert len(loopback.requests_to("/fast")) == count

            # Meanwhile every request to the slow receiver is still waiting for its answer...
            assert not gate.is_set()
            slow_log = await deliveries(client, operator, slow["id"])
            assert len(slow_log) == count and all(
                d["status"] == "PENDING" and d["attempts"] == 0 for d in slow_log
            ), slow_log
            # ...and the dead one keeps failing.
            dead_log = await wait_deliveries(
                client,
                operator,
                dead["id"],
                lambda items: len(items) == count and all(d["attempts"] >= 1 for d in items),
                "attempts",
            )
            assert all(d["status"] == "PENDING" and d["lastError"] == "connection refused" for d in dead_log)
        finally:
            gate.set()
        await wait_all_delivered(client, operator, slow["id"], count)

    @tuned(
        webhook_retry_period_seconds=2.5,
        webhook_initial_retry_seconds=1.0,
        webhook_max_retry_interval_seconds=1.0,
    )
    async def test_end_of_the_retry_period_marks_the_delivery_failed(
        self, client, operator, worker, loopback
    ):
        loopback.route("/hook", status=500)
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        (failed,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
            "FAILED",
        )
        assert failed["attempts"] >= 2 and failed["attempts"] == len(loopback.requests_to("/hook"))
        # The last answer stays visible (the text around it depends on how Temporal ended the retries:
        # "gave up after N attempts: Not enough time ... (last: answered 500 ...)" or just the answer).
        assert "answered 500 Internal Server Error" in failed["lastError"], failed["lastError"]
        assert (
            failed["lastStatusCode"] == 500
            and failed["nextAttemptAt"] is None
            and failed["deliveredAt"] is None
        )
        first, last = loopback.requests_to("/hook")[0], loopback.requests_to("/hook")[-1]
        assert last.received_at - first.received_at < 2.5
        # One failed delivery does not deactivate the webhook (that takes webhook_disable_after_seconds).
        assert (await webhook(client, operator, hook["id"]))["active"] is True


# --- restarts --------------------------------------------------------------------------------------


@pytest.mark.slow
@sqlite_only()
class TestRestarts:
    @tuned(webhook_initial_retry_seconds=1.5, webhook_max_retry_interval_seconds=1.5)
    async def test_worker_killed_mid_retry(
        self, settings, client, operator, temporal_env: WorkflowEnvironment, loopback, processes
    ):
        """SIGKILL the system worker between two attempts; the retry waits for a worker, and the
        restarted worker completes the delivery under the same webhook-id."""
        loopback.route("/hook", status=[500, 200])
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        system = processes.start_worker(settings, identity="system-worker")
        await wait_worker_polling(temporal_env.client, settings.webhook_task_queue, "system-worker", system)

        await run_noop(client, operator)
        (first,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] == 1,
            "attempt 1",
        )
        system.kill()
        assert first["status"] == "PENDING" and first["lastStatusCode"] == 500
        assert len(loopback.requests_to("/hook")) == 1, "killed before the second attempt"

        # Temporal holds the retry: due, and no worker to run it.
        handle = temporal_env.client.get_workflow_handle(
            f"{settings.workflow_id_prefix}-webhook-delivery-{first['id']}-0"
        )
        deadline = time.monotonic() + 30
        while True:
            (pending,) = (await handle.describe()).raw_description.pending_activities
            due = pending.scheduled_time.ToDatetime().timestamp() if pending.HasField("scheduled_time") else 0
            if (
                pending.attempt == 2
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
                and due
                and due <= time.time()
            ):
                break
            assert time.monotonic() < deadline, pending
            await asyncio.sleep(0.1)
        assert len(loopback.requests_to("/hook")) == 1
        assert (await deliveries(client, operator, hook["id"]))[0]["status"] == "PENDING"

        system.start()
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert done["attempts"] == 2 and done["lastStatusCode"] == 200
        attempts = loopback.requests_to("/hook")
        assert len(attempts) == 2 and {r.headers["webhook-id"] for r in attempts} == {done["eventId"]}
        assert all(verify_signature(SPEC_SECRET, r) for r in attempts)

    @tuned(webhook_initial_retry_seconds=1.0, webhook_max_retry_interval_seconds=1.0)
    async def test_deliveries_go_on_while_the_api_restarts(
        self, settings, temporal_env: WorkflowEnvironment, loopback, processes
    ):
        """The API (a real `python -m server`) is stopped mid-retry; the retry and a delivery of an
        event that happens while it is down both arrive; the restarted API shows them DELIVERED."""
        seen: set[str] = set()

        def first_attempt_fails(request: RecordedRequest) -> Reply:
            message = request.headers["webhook-id"]
            if message in seen:
                return Reply(200)
            seen.add(message)
            return Reply(500)

        gate = threading.Event()
        loopback.route("/hook", handler=first_attempt_fails)
        loopback.route("/work", handler=gated(gate, Reply(200, json={"done": True})))
        port = free_port()
        api = processes.start_api(settings, port)
        try:
            await wait_http_ready(api, f"http://127.0.0.1:{port}/readyz")
            async with (
                running_worker(temporal_env.client, settings, identity="api-restart-worker"),
                server_client(f"http://127.0.0.1:{port}", timeout=30) as http,
            ):
                headers = await login(http, "admin", ADMIN_PASSWORD)
                hook = await register(
                    http,
                    headers,
                    loopback.url_for("/hook"),
                    ["workflow.execution.started", "workflow.execution.completed"],
                )
                definition = await define(
                    http,
                    headers,
                    [
                        {
                            "id": "fetch",
                            "name": "fetch",
                            "type": "http",
                            "input": {"url": loopback.url_for("/work")},
                        }
                    ],
                )
                execution = await start(http, headers, definition)
                (pending,) = await wait_deliveries(
                    http,
                    headers,
                    hook["id"],
                    lambda items: len(items) == 1 and items[0]["attempts"] == 1,
                    "attempt 1",
                )
                assert pending["event"] == "workflow.execution.started" and pending["status"] == "PENDING"

                api.terminate()
                assert not api.alive
                with pytest.raises(httpx.ConnectError):
                    await http.get("/healthz")
                gate.set()  # the execution completes while the API is down
                received = await loopback.wait_for_requests_async(4, "/hook", timeout=30)
                assert Counter(r.json()["type"] for r in received) == {
                    "workflow.execution.started": 2,
                    "workflow.execution.completed": 2,
                }

                api.start()
                await wait_http_ready(api, f"http://127.0.0.1:{port}/readyz")
                log = await wait_all_delivered(http, headers, hook["id"], 2)
                assert sorted(d["event"] for d in log) == [
                    "workflow.execution.completed",
                    "workflow.execution.started",
                ]
                assert all(d["attempts"] == 2 and d["lastStatusCode"] == 200 for d in log), log
                assert {d["eventId"] for d in log} == set(by_message(received))
                final = (await http.get(f"/api/v2/executions/{execution['id']}", headers=headers)).json()
                assert final["status"] == "COMPLETED"
        finally:
            gate.set()

    @tuned(webhook_initial_retry_seconds=4.0, webhook_max_retry_interval_seconds=4.0)
    async def test_pending_delivery_survives_a_temporal_restart(
        self, settings, tmp_path: Path, loopback, processes
    ):
        """A dev server of this test's own is stopped (SIGTERM) between two attempts and started
        again on its data file: the delivery's retry timer was kept, and the next attempt arrives
        under the same webhook-id."""
        loopback.route("/hook", status=[500, 200])
        temporal, temporal_client, address = await processes.start_own_temporal(tmp_path / "temporal")
        settings = settings.model_copy(update={"temporal_address": address})
        api_port = free_port()
        api = processes.start_api(settings, api_port)
        await wait_http_ready(api, f"http://127.0.0.1:{api_port}/readyz")
        system = processes.start_worker(settings, identity="delivery-survivor")
        await wait_worker_polling(temporal_client, settings.webhook_task_queue, "delivery-survivor", system)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", timeout=30, trust_env=False
        ) as http:
            headers = await login(http, "admin", ADMIN_PASSWORD)
            hook = await register(http, headers, loopback.url_for("/hook"), COMPLETED_ONLY)
            await run_noop(http, headers)
            (first,) = await wait_deliveries(
                http,
                headers,
                hook["id"],
                lambda items: len(items) == 1 and items[0]["attempts"] == 1,
                "attempt 1",
            )
            temporal.terminate()
            assert not temporal.alive
            assert first["status"] == "PENDING" and first["lastStatusCode"] == 500
            assert len(loopback.requests_to("/hook")) == 1, "stopped before the second attempt"
            # The API still answers from the database while Temporal is down.
            assert (await deliveries(http, headers, hook["id"]))[0]["status"] == "PENDING"

            temporal.start()  # same data file, same port
            await wait_temporal_ready(temporal, address)
            (done,) = await wait_all_delivered(http, headers, hook["id"], 1)
            system.check_alive()
        assert done["attempts"] == 2 and done["lastStatusCode"] == 200
        attempts = loopback.requests_to("/hook")
        assert len(attempts) == 2 and {r.headers["webhook-id"] for r in attempts} == {done["eventId"]}
        assert all(verify_signature(SPEC_SECRET, r) for r in attempts)


# --- the delivery log, redelivery, deactivation --------------------------------------------------------


@sqlite_only()
class TestDeliveryLog:
    @tuned(
        webhook_retry_period_seconds=1.5,
        webhook_initial_retry_seconds=1.0,
        webhook_max_retry_interval_seconds=1.0,
    )
    async def test_log_shapes_and_filters(self, client, operator, worker, loopback):
        def milestones_fail(request: RecordedRequest) -> Reply:
            return Reply(500 if request.json()["type"] == "milestone.achieved" else 200)

        loopback.route("/hook", handler=milestones_fail)
        hook = await register(client, operator, loopback.url_for("/hook"))
        execution_id = await run_noop(client, operator)
        await wait_execution(client, operator, execution_id)
        items = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 7 and all(d["status"] != "PENDING" for d in items),
            "all settled",
        )

        response = await client.get(
            f"/api/webhooks/{hook['id']}/deliveries", params={"limit": 100}, headers=operator
        )
        v1 = response.json()
        assert isinstance(v1, list) and v1 == items
        assert all(set(d) == DELIVERY_KEYS and d["webhookId"] == hook["id"] for d in v1)
        assert [int(d["id"]) for d in v1] == sorted((int(d["id"]) for d in v1), reverse=True), "newest first"
        assert Counter(d["event"] for d in v1) == {
            "workflow.execution.started": 1, "milestone.achieved": 2, "task.execution.started": 1,
            "task.execution.completed": 1, "progress.updated": 1, "workflow.execution.completed": 1,
        }  # fmt: skip
        sent = by_message(loopback.requests_to("/hook"))
        for delivery in v1:
            assert (
                delivery["eventId"] in sent
                and sent[delivery["eventId"]][0].json()["type"] == delivery["event"]
            )
            if delivery["status"] == "DELIVERED":
                assert delivery["attempts"] == len(sent[delivery["eventId"]])
            else:  # an attempt answered after the give-up reached the receiver but not the log
                assert 1 <= delivery["attempts"] <= len(sent[delivery["eventId"]])

        failed = (
            await client.get(
                f"/api/webhooks/{hook['id']}/deliveries", params={"status": "FAILED"}, headers=operator
            )
        ).json()
        assert [d["event"] for d in failed] == ["milestone.achieved"] * 2
        for d in failed:
            assert (
                d["lastStatusCode"] == 500
                and "answered 500 Internal Server Error" in d["lastError"]
                and d["deliveredAt"] is None
            )
            # Retried until the period ended (how often depends on the machine's pace: TestRetries
            # counts the retries); a late attempt's outcome never reopens a given-up delivery.
            assert d["nextAttemptAt"] is None and d["attempts"] >= 1
        delivered = (
            await client.get(
                f"/api/webhooks/{hook['id']}/deliveries", params={"status": "DELIVERED"}, headers=operator
            )
        ).json()
        assert len(delivered) == 5
        assert all(
            d["lastStatusCode"] == 200
            and d["lastError"] is None
            and d["deliveredAt"]
            and d["nextAttemptAt"] is None
            for d in delivered
        )

        page = (
            await client.get(
                f"/api/v2/webhooks/{hook['id']}/deliveries",
                params={"limit": 2, "offset": 1},
                headers=operator,
            )
        ).json()
        assert page["total"] == 7 and page["limit"] == 2 and page["offset"] == 1 and page["items"] == v1[1:3]
        problem(
            await client.get(
                f"/api/webhooks/{hook['id']}/deliveries", params={"status": "LOST"}, headers=operator
            ),
            422,
        )
        problem(await client.get("/api/webhooks/999/deliveries", headers=operator), 404)

        graphql = data_of(
            await gql(
                client,
                "query($id: ID!) { webhookDeliveries(webhookId: $id, limit: 100) { total items { id event eventId status attempts lastStatusCode lastError nextAttemptAt } } }",
                {"id": hook["id"]},
                operator,
            )
        )["webhookDeliveries"]
        assert graphql["total"] == 7
        assert [
            {
                k: d[k]
                for k in (
                    "id",
                    "event",
                    "eventId",
                    "status",
                    "attempts",
                    "lastStatusCode",
                    "lastError",
                    "nextAttemptAt",
                )
            }
            for d in v1
        ] == graphql["items"]

    @tuned(
        webhook_retry_period_seconds=2.5,
        webhook_initial_retry_seconds=1.0,
        webhook_max_retry_interval_seconds=1.0,
    )
    async def test_redeliver(self, client, admin, operator, worker, loopback):
        gate = threading.Event()
        mode = {"now": "hold"}

        def receiver(request: RecordedRequest) -> Reply:
            if mode["now"] == "hold":
                gate.wait(30)
            return Reply(200 if mode["now"] == "ok" else 500)

        loopback.route("/hook", handler=receiver)
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        try:
            await run_noop(client, operator)
            await loopback.wait_for_requests_async(1, "/hook", timeout=30)
            (in_flight,) = await deliveries(client, operator, hook["id"])
            assert in_flight["status"] == "PENDING" and in_flight["attempts"] == 0
            url = f"/api/webhooks/{hook['id']}/deliveries/{in_flight['id']}/redeliver"
            conflict = problem(await client.post(url, headers=operator), 409)
            assert "still being delivered" in conflict["detail"]
            redeliver = "mutation($w: ID!, $d: ID!) { redeliverWebhookDelivery(webhookId: $w, deliveryId: $d) { id status eventId attempts } }"
            error_of(
                await gql(client, redeliver, {"w": hook["id"], "d": in_flight["id"]}, operator), "CONFLICT"
            )
        finally:
            mode["now"] = "fail"
            gate.set()

        (failed,) = await wait_deliveries(
            client, operator, hook["id"], lambda items: items[0]["status"] == "FAILED", "FAILED"
        )
        original = loopback.requests_to("/hook")
        assert len(original) == failed["attempts"] >= 2

        mode["now"] = "ok"
        response = await client.post(url, headers=operator)
        assert response.status_code == 200, response.text
        again = response.json()
        assert set(again) == DELIVERY_KEYS
        assert (
            again["id"] == failed["id"]
            and again["eventId"] == failed["eventId"]
            and again["status"] == "PENDING"
        )
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert (
            done["attempts"] == failed["attempts"] + 1
            and done["lastStatusCode"] == 200
            and done["lastError"] is None
        )
        resent = loopback.requests_to("/hook")[len(original) :]
        assert len(resent) == 1
        assert resent[0].headers["webhook-id"] == failed["eventId"] and resent[0].body == original[0].body
        assert verify_signature(SPEC_SECRET, resent[0])
        assert int(resent[0].headers["webhook-timestamp"]) >= int(original[0].headers["webhook-timestamp"])

        # After DELIVERED it can be sent again too (here over GraphQL, by an admin).
        answer = data_of(await gql(client, redeliver, {"w": hook["id"], "d": done["id"]}, admin))[
            "redeliverWebhookDelivery"
        ]
        assert answer["status"] == "PENDING" and answer["eventId"] == done["eventId"]
        await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: items[0]["status"] == "DELIVERED" and items[0]["attempts"] == done["attempts"] + 1,
            "redelivered",
        )
        third = loopback.requests_to("/hook")[len(original) + 1 :]
        assert [r.headers["webhook-id"] for r in third] == [failed["eventId"]]

        # Unknown deliveries, and deliveries of another webhook, are not found.
        other = await register(client, operator, loopback.url_for("/other"), COMPLETED_ONLY)
        body = problem(
            await client.post(f"/api/webhooks/{hook['id']}/deliveries/999/redeliver", headers=operator), 404
        )
        assert body["detail"] == "Delivery '999' does not exist."
        problem(
            await client.post(
                f"/api/webhooks/{other['id']}/deliveries/{done['id']}/redeliver", headers=operator
            ),
            404,
        )

    @tuned(
        webhook_disable_after_seconds=1.0,
        webhook_retry_period_seconds=60,
        webhook_initial_retry_seconds=1.0,
        webhook_max_retry_interval_seconds=1.0,
    )
    async def test_failing_too_long_deactivates_the_webhook(self, client, operator, worker, loopback):
        mode = {"status": 500}
        loopback.route("/hook", handler=lambda request: Reply(mode["status"]))
        loopback.route("/control", json={})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        control = await register(client, operator, loopback.url_for("/control"), COMPLETED_ONLY)
        await run_noop(client, operator)

        (failed,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
            "FAILED",
            timeout=30,
        )
        assert failed["attempts"] >= 2  # the first starts the failing period, one a second later ends it
        assert "answered 500 Internal Server Error" in failed["lastError"]
        state = await webhook(client, operator, hook["id"])
        assert state["active"] is False
        assert state["deactivatedReason"].startswith("no successful delivery for ")
        assert state["deactivatedReason"].endswith("(last: answered 500 Internal Server Error)")
        assert state["lastSuccessAt"] is None

        # Nothing more is sent to it, and it cannot be redelivered until reactivated.
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, control["id"], 2)
        assert len(await deliveries(client, operator, hook["id"])) == 1
        attempts = len(loopback.requests_to("/hook"))
        assert attempts == failed["attempts"]
        refused = problem(
            await client.post(
                f"/api/webhooks/{hook['id']}/deliveries/{failed['id']}/redeliver", headers=operator
            ),
            422,
        )
        assert "not active" in refused["detail"]

        mode["status"] = 200
        on = (
            await client.put(
                f"/api/v2/webhooks/{hook['id']}",
                json={"url": hook["url"], "events": COMPLETED_ONLY, "active": True},
                headers=operator,
            )
        ).json()
        assert on["active"] is True and on["deactivatedReason"] is None
        assert (
            await client.post(
                f"/api/webhooks/{hook['id']}/deliveries/{failed['id']}/redeliver", headers=operator
            )
        ).status_code == 200
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert (await webhook(client, operator, hook["id"]))["lastSuccessAt"] == done["deliveredAt"]


# --- signatures ------------------------------------------------------------------------------------


@sqlite_only()
class TestSignatures:
    @pytest.mark.parametrize("secret", [SPEC_SECRET, None], ids=["given", "generated"])
    async def test_receiver_verifies_the_signature(self, client, operator, worker, loopback, secret):
        loopback.route("/hook", json={})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY, secret=secret)
        key_text = hook["secret"]
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, hook["id"], 1)
        (request,) = loopback.requests_to("/hook")

        # What a receiver writes, in a few lines (Standard Webhooks).
        key = (
            base64.b64decode(key_text.removeprefix("whsec_"))
            if key_text.startswith("whsec_")
            else key_text.encode()
        )
        signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.{request.body.decode()}".encode()
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert expected in request.headers["webhook-signature"].split()
        if secret is None:
            assert key_text.startswith("whsec_") and len(key) == 32
            as_text = (
                "v1,"
                + base64.b64encode(hmac.new(key_text.encode(), signed, hashlib.sha256).digest()).decode()
            )
            assert as_text not in request.headers["webhook-signature"].split(), "the key is the decoded bytes"
        assert request.headers["content-type"] == "application/json"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60

    async def test_masked_put_keeps_the_secret_and_a_new_one_signs_from_then_on(
        self, client, operator, worker, loopback
    ):
        loopback.route("/hook", json={})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        got = (await client.get(f"/api/webhooks/{hook['id']}", headers=operator)).json()
        assert (
            await client.put(f"/api/webhooks/{hook['id']}", json=got, headers=operator)
        ).status_code == 200
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, hook["id"], 1)
        assert verify_signature(SPEC_SECRET, loopback.requests_to("/hook")[0])

        rotated = {"url": hook["url"], "events": COMPLETED_ONLY, "secret": "rotated-secret-2025"}
        assert (await client.put(f"/api/webhooks/{hook['id']}", json=rotated, headers=operator)).json()[
            "secret"
        ] == "********"
        await run_noop(client, operator)
        await wait_all_delivered(client, operator, hook["id"], 2)
        latest = loopback.requests_to("/hook")[1]
        assert verify_signature("rotated-secret-2025", latest) and not verify_signature(SPEC_SECRET, latest)


# --- the SSRF guard at delivery time ---------------------------------------------------------------


@sqlite_only()
class TestSsrfAtDelivery:
    async def test_delivery_to_a_private_address_is_refused_without_contact(
        self, settings, client, operator, temporal_env: WorkflowEnvironment, loopback
    ):
        """Registered while private networks were allowed (the API's settings here); delivered by a
        worker that refuses them: checked again at delivery, FAILED at once, nothing sent."""
        loopback.route("/hook", json={})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        named = await register(client, operator, f"http://localhost:{loopback.port}/hook", COMPLETED_ONLY)
        strict = settings.model_copy(update={"allow_private_networks": False})
        async with running_worker(temporal_env.client, strict, identity="strict-worker"):
            await run_noop(client, operator)
            (failed,) = await wait_deliveries(
                client,
                operator,
                hook["id"],
                lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
                "FAILED",
            )
            (failed_named,) = await wait_deliveries(
                client,
                operator,
                named["id"],
                lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
                "FAILED",
            )
        assert failed["attempts"] == 1 and failed["lastStatusCode"] is None
        assert (
            failed["lastError"]
            == "refused: 127.0.0.1 is a loopback address; only public addresses are allowed"
        )
        assert (
            failed_named["lastError"]
            == "refused: 'localhost' resolves to a loopback address; only public addresses are allowed"
        )
        assert loopback.requests == []

    async def test_redirect_is_a_failed_attempt(self, client, operator, worker, loopback):
        loopback.route("/hook", status=[307, 200], headers={"Location": "/elsewhere"})
        loopback.route("/elsewhere", json={})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        (done,) = await wait_all_delivered(client, operator, hook["id"], 1)
        assert done["attempts"] == 2
        assert loopback.requests_to("/elsewhere") == [] and len(loopback.requests_to("/hook")) == 2

    async def test_redirect_failure_is_in_the_log(self, client, operator, worker, loopback):
        loopback.route("/hook", status=302, headers={"Location": "http://169.254.169.254/"})
        hook = await register(client, operator, loopback.url_for("/hook"), COMPLETED_ONLY)
        await run_noop(client, operator)
        (pending,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] >= 1,
            "attempt",
        )
        assert pending["lastStatusCode"] == 302
        assert pending["lastError"] == "answered 302: webhooks do not follow redirects"

    @tuned(
        webhook_retry_period_seconds=4.0,
        webhook_initial_retry_seconds=1.0,
        webhook_max_retry_interval_seconds=1.0,
    )
    async def test_unresolvable_host_is_retried_until_the_end_of_the_retry_period(
        self, client, operator, worker
    ):
        """A DNS failure is transient: the delivery stays PENDING with a next attempt while its
        attempts count up, and is FAILED only when the retry period is over, naming the host.
        (`.invalid` never resolves: nothing leaves the machine.)"""
        hook = await register(client, operator, "http://no-such-host.invalid/hook", COMPLETED_ONLY)
        await run_noop(client, operator)
        (pending,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "PENDING" and items[0]["attempts"] >= 2,
            "a second attempt, still PENDING",
            timeout=15,
        )
        assert pending["nextAttemptAt"] is not None and pending["lastStatusCode"] is None, pending
        assert parse_time(pending["nextAttemptAt"]) > parse_time(pending["lastAttemptAt"]), pending
        assert pending["lastError"].startswith("cannot resolve 'no-such-host.invalid'"), pending
        (failed,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "FAILED",
            "FAILED",
        )
        assert failed["attempts"] > pending["attempts"], failed
        assert "cannot resolve 'no-such-host.invalid'" in failed["lastError"], failed
        assert failed["nextAttemptAt"] is None and failed["deliveredAt"] is None, failed
        # Retried to the end of the period: no retry is due once the next one (1 s later) would be past it.
        assert (parse_time(failed["lastAttemptAt"]) - parse_time(failed["createdAt"])).total_seconds() >= 2.5
        # One failed delivery does not deactivate the webhook (that takes webhook_disable_after_seconds).
        assert (await webhook(client, operator, hook["id"]))["active"] is True

    async def test_http_task_retries_an_unresolvable_host_and_refuses_a_private_one_at_once(
        self, settings, client, operator, temporal_env: WorkflowEnvironment, loopback
    ):
        """In one execution on a worker that refuses private networks: a name that does not resolve
        is attempted as often as the task's retry policy says, then fails naming the host; a name
        that resolves to loopback is refused on its first attempt, never contacted."""
        loopback.route("/internal", json={"secret": True})
        strict = settings.model_copy(update={"allow_private_networks": False})
        fast = {"initialInterval": 0.1, "backoffCoefficient": 1}
        async with running_worker(temporal_env.client, strict, identity="strict-worker"):
            definition = await define(
                client,
                operator,
                [
                    {
                        "id": "report",
                        "name": "Nightly report",
                        "type": "http",
                        "input": {"url": "http://nightly-report.invalid/report"},
                        "retryPolicy": {"maxAttempts": 3, **fast},
                    },
                    {
                        "id": "internal",
                        "name": "internal",
                        "type": "http",
                        "input": {"url": f"http://localhost:{loopback.port}/internal"},
                        "retryPolicy": {"maxAttempts": 3, **fast},
                    },
                ],
            )
            execution = await start(client, operator, definition)
            final = await wait_execution(client, operator, execution["id"])
        report, internal = task_of(final, "report"), task_of(final, "internal")
        assert final["status"] == "FAILED", final
        assert report["status"] == "FAILED" and report["attempts"] == 3, report
        assert report["error"].startswith(
            "UnresolvableHost: GET http://nightly-report.invalid/report failed: "
            "cannot resolve 'nightly-report.invalid'"
        ), report["error"]
        assert internal["status"] == "FAILED" and internal["attempts"] == 1, internal
        assert "'localhost' resolves to a loopback address" in internal["error"], internal["error"]
        assert loopback.requests == []

    async def test_http_task_to_a_private_address_fails_without_retries(
        self, settings, client, operator, temporal_env: WorkflowEnvironment, loopback
    ):
        loopback.route("/internal", json={"secret": True})
        strict = settings.model_copy(update={"allow_private_networks": False})
        async with running_worker(temporal_env.client, strict, identity="strict-worker"):
            definition = await define(
                client,
                operator,
                [
                    {
                        "id": "fetch",
                        "name": "fetch",
                        "type": "http",
                        "input": {"url": f"http://localhost:{loopback.port}/internal"},
                        "retryPolicy": {"maxAttempts": 5, "initialInterval": 0.1},
                    }
                ],
            )
            execution = await start(client, operator, definition)
            final = await wait_execution(client, operator, execution["id"])
        fetch = task_of(final, "fetch")
        assert final["status"] == "FAILED" and fetch["status"] == "FAILED" and fetch["attempts"] == 1, final
        assert (
            "refused" in fetch["error"] and "'localhost' resolves to a loopback address" in fetch["error"]
        ), fetch["error"]
        assert loopback.requests == []


# --- a late attempt never changes a settled delivery ------------------------------------------------


class TestLateAttempt:
    async def test_an_attempt_answered_after_the_give_up_leaves_the_delivery_failed(
        self, client, operator, settings, loopback
    ):
        """The interleaving that once left a FAILED delivery with a next attempt time, made exactly:
        an attempt is in flight (the receiver holds its answer), the delivery is given up, then the
        attempt's 500 comes back. Its record must not touch the settled delivery."""
        gate = threading.Event()

        def held_500(request: RecordedRequest) -> Reply:
            gate.wait(30)
            return Reply(500)

        loopback.route("/hook", handler=held_500)
        hook = await register(client, operator, loopback.url_for("/hook"))
        definition = await define(client, operator, [{"id": "only", "name": "only"}])
        engine = create_engine(settings)
        sessions = session_factory(engine)
        try:
            async with sessions() as session:
                execution = ExecutionRow(
                    definition_id=int(definition), definition_version="1.0.0", status="RUNNING", start_time=utcnow(),
                    workflow_id="late-attempt", context={}, context_created_at=utcnow(), context_updated_at=utcnow(),
                )  # fmt: skip
                session.add(execution)
                await session.commit()
                event = Event(
                    seq=1,
                    type="workflow.execution.started",
                    at=utcnow(),
                    data={"status": "RUNNING", "startTime": utcnow()},
                )
                await apply_batch(session, EventBatch(str(execution.id), "late-attempt", "run", [event]))
                delivery = (
                    await session.exec(
                        select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == int(hook["id"]))
                    )
                ).one()
            deliverer = Deliverer(sessions, settings)
            attempt = asyncio.create_task(deliverer.attempt(DeliveryInput(delivery_id=str(delivery.id))))
            await loopback.wait_for_requests_async(1, "/hook", timeout=30)
            await deliverer.give_up(str(delivery.id), "the retry period is over")
            gate.set()
            await asyncio.gather(attempt, return_exceptions=True)
            async with sessions() as session:
                settled = await session.get(WebhookDeliveryRow, delivery.id)
        finally:
            gate.set()
            await engine.dispose()
        assert settled is not None
        assert settled.status == "FAILED" and settled.next_attempt_at is None
        assert (
            settled.attempts == 0
            and settled.last_error == "gave up after 0 attempts: the retry period is over"
        )
