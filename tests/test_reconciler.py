"""The reconciler, against the real Temporal dev server, both databases and real workers.

Runs that Temporal ended without their last publish (terminated, cancelled into a database that
lost the commit, never started) are repaired by appending events; live executions are left
alone; the on-demand endpoint, the schedule, /readyz, and a start whose answer was lost on the
wire (issue 9, fault path 8). The repair rules themselves are tested alone at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlmodel import col, select
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.models.base import format_timestamp
from api.models.executions import BlockerRow, ExecutionEventRow, ExecutionRow
from api.models.webhooks import WebhookDeliveryRow
from api.services.reconciler import (
    BlockerView,
    ExecutionView,
    PassReport,
    Reconciler,
    RunStatus,
    RunView,
    TaskView,
    Verdict,
    assess,
    ensure_schedule,
    plan_repair,
)
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, login, make_settings, problem, running_worker, temporal_address
from tests.graphql_client import data_of, gql
from tests.loopback import LoopbackServer
from tests.processes import ApiClient, ProcessSet, task_of, wait_worker_polling
from tests.tcp_proxy import Mode, TcpProxy
from tests.webhook_support import register
from workflows.constants import RECONCILER_WORKFLOW, reconciler_schedule_id, workflow_id

#: Test settings: a repair 2 s after Temporal closed a run, passes that look at executions quiet
#: for 1 s, starts that are in doubt after 2 s.
GRACE = 2.0
#: How long a test waits for the state it expects (a shared, noisy machine).
DEADLINE = 45.0

APPROVAL_DAG = [
    {"id": "first", "name": "First"},
    {"id": "gate", "name": "Gate", "type": "approval", "dependencies": ["first"]},
    {"id": "after", "name": "After", "dependencies": ["gate"]},
]


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    return engine_settings.model_copy(
        update={
            "start_timeout_seconds": GRACE,
            "reconcile_grace_seconds": GRACE,
            "reconcile_interval_seconds": 1,
            # A webhook queue of this test alone (delivery ids repeat in every fresh database).
            "webhook_task_queue": f"webhooks-{engine_settings.workflow_id_prefix}",
        }
    )


@pytest_asyncio.fixture
async def api(client: httpx.AsyncClient, admin: dict[str, str]) -> ApiClient:
    return ApiClient(client, admin)


# --- helpers -----------------------------------------------------------------------------------


async def reconcile_pass(app: FastAPI, settings: Settings, temporal: Any, **overrides: Any) -> PassReport:
    async with app.state.sessions() as session:
        return await Reconciler(session, settings.model_copy(update=overrides), temporal).run_pass()


async def pass_until(
    app: FastAPI, settings: Settings, temporal: Any, done: Callable[[PassReport], bool], what: str
) -> PassReport:
    """Run passes until one reports `done` (a closed run is repaired only once the grace period passed)."""
    deadline = time.monotonic() + DEADLINE
    report = PassReport()
    while time.monotonic() < deadline:
        report = await reconcile_pass(app, settings, temporal)
        if done(report):
            return report
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen within {DEADLINE}s; last pass: {report}")


async def events_of(app: FastAPI, execution_id: str) -> list[ExecutionEventRow]:
    async with app.state.sessions() as session:
        rows = await session.exec(
            select(ExecutionEventRow)
            .where(ExecutionEventRow.execution_id == int(execution_id))
            .order_by(col(ExecutionEventRow.seq))
        )
        return list(rows)


async def blockers_of(app: FastAPI, execution_id: str) -> list[BlockerRow]:
    async with app.state.sessions() as session:
        rows = await session.exec(
            select(BlockerRow)
            .where(BlockerRow.execution_id == int(execution_id))
            .order_by(col(BlockerRow.id))
        )
        return list(rows)


async def wait_quiet(app: FastAPI, execution_id: str, seconds: float) -> None:
    """Until the execution's row has not been written for `seconds` (a pass skips busier ones)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        async with app.state.sessions() as session:
            row = await session.get(ExecutionRow, int(execution_id))
            assert row is not None
            if datetime.now(UTC) - row.updated_at >= timedelta(seconds=seconds):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"execution {execution_id} was still being written after {DEADLINE}s")


def handle_of(temporal_env: WorkflowEnvironment, settings: Settings, definition_id: str, execution_id: str):
    return temporal_env.client.get_workflow_handle(
        workflow_id(settings.workflow_id_prefix, definition_id, execution_id)
    )


async def waiting_gate(api: ApiClient, name: str = "approval") -> tuple[str, str]:
    """A started execution whose approval task waits; returns (definition id, execution id)."""
    definition = await api.define(name, APPROVAL_DAG)
    execution_id = (await api.start(definition))["id"]
    await api.wait_task(execution_id, "gate", ["WAITING"], timeout=DEADLINE)
    return definition, execution_id


@contextlib.asynccontextmanager
async def api_with(settings: Settings) -> AsyncIterator[tuple[FastAPI, ApiClient]]:
    """Another instance of the API (its own Temporal client, from these settings), logged in as admin."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, ApiClient(http, await login(http, "admin", ADMIN_PASSWORD))


# --- a terminated run ----------------------------------------------------------------------------


class TestTerminatedRun:
    async def test_is_repaired_by_appending_events_and_the_retried_task_completes(
        self, app, api, settings, temporal_env, worker, loopback: LoopbackServer
    ):
        """Terminate the run while its approval waits: a pass marks the task and the execution FAILED
        with a `reconciled` blocker naming the reason, after every event the workflow published, and
        webhooks get the repair; retrying the task then reopens the execution and it completes."""
        loopback.route("/hook")
        await register(
            api.http,
            api.headers,
            loopback.url_for("/hook"),
            ["workflow.execution.failed", "blocker.detected"],
        )
        definition, execution_id = await waiting_gate(api)
        before = await events_of(app, execution_id)
        handle = handle_of(temporal_env, settings, definition, execution_id)
        await handle.terminate(reason="stuck deploy, ops ticket 7")

        await pass_until(app, settings, temporal_env.client, lambda r: r.repaired == 1, "the repair")

        final = await api.execution(execution_id)
        closed = (await handle.describe()).close_time
        assert final["status"] == "FAILED", final
        assert final["endTime"] == format_timestamp(closed)
        assert "terminated" in final["error"] and "stuck deploy, ops ticket 7" in final["error"]
        gate = task_of(final, "gate")
        assert gate is not None and gate["status"] == "FAILED" and "terminated" in gate["error"]
        assert gate["endTime"] == final["endTime"]
        assert task_of(final, "first")["status"] == "COMPLETED"  # type: ignore[index]
        assert task_of(final, "after") is None

        # Only appended: what the workflow published is unchanged, the repair follows in sequence.
        after = await events_of(app, execution_id)
        assert [(e.seq, e.type, e.data) for e in after[: len(before)]] == [
            (e.seq, e.type, e.data) for e in before
        ]
        repair = after[len(before) :]
        assert [e.seq for e in repair] == list(range(before[-1].seq + 1, before[-1].seq + 1 + len(repair)))
        assert [e.type for e in repair] == [
            "task.execution.failed",
            "blocker.resolved",  # the approval's
            "blocker.detected",  # task-failed:gate
            "blocker.detected",  # reconciled
            "workflow.execution.failed",
        ]
        assert all(e.data["reconciled"] is True for e in repair)
        (reconciled,) = [b for b in await blockers_of(app, execution_id) if b.kind == "reconciled"]
        assert (
            "TERMINATED" in reconciled.description and "stuck deploy, ops ticket 7" in reconciled.description
        )
        assert "reconciler repaired" in reconciled.description
        progress = await api.progress(execution_id)
        assert reconciled.description in [b["description"] for b in progress["blockers"]]

        # Webhooks see the repair like any other event: queued with it, and delivered.
        async with app.state.sessions() as session:
            queued = (
                await session.exec(
                    select(WebhookDeliveryRow.event_type).where(
                        col(WebhookDeliveryRow.event_id).in_([e.id for e in repair])
                    )
                )
            ).all()
        assert sorted(queued) == ["blocker.detected", "blocker.detected", "workflow.execution.failed"]
        deadline = time.monotonic() + DEADLINE
        while not any(
            r.json()["type"] == "workflow.execution.failed"
            and r.json()["data"]["executionId"] == execution_id
            for r in loopback.requests_to("/hook")
        ):
            assert time.monotonic() < deadline, "the repair's webhook delivery never arrived"
            await asyncio.sleep(0.1)

        # The repaired state is a usable one: the failed task reopens the execution, and it completes.
        retried = await api.http.post(f"/api/tasks/{gate['id']}/retry", headers=api.headers)
        assert retried.status_code == 200, retried.text
        reopened = await api.wait_task(execution_id, "gate", ["WAITING"], timeout=DEADLINE)
        assert task_of(reopened, "gate")["attempts"] == 2  # type: ignore[index]
        approved = await api.http.post(
            f"/api/tasks/{gate['id']}/complete", json={"output": {"ok": True}}, headers=api.headers
        )
        assert approved.status_code == 200, approved.text
        done = await api.wait_status(execution_id, ["COMPLETED"], timeout=DEADLINE)
        assert [t["status"] for t in done["taskExecutions"]] == ["COMPLETED"] * 3
        events = await events_of(app, execution_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        blockers = await blockers_of(app, execution_id)
        failed_blockers = [b for b in blockers if b.key == "task-failed:gate"]
        assert failed_blockers and all(
            b.resolved_at is not None for b in failed_blockers
        )  # the reopen resolved it
        # ...and what the reconciler said about the run it repaired
        assert [b.resolved_at is not None for b in blockers if b.kind == "reconciled"] == [True]


# --- a cancelled run whose last publish was lost -------------------------------------------------


class TestCancelledRun:
    # SQLite's backup API copies a live database: the "restored" copy a worker writes into while
    # the API reads the original stands for a failover that lost the last commits. The repair
    # itself runs on both databases in the other tests.
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_is_repaired_to_cancelled_with_the_run_own_task_states(
        self, app, api, settings, temporal_env, tmp_path
    ):
        definition = await api.define("approval", APPROVAL_DAG)
        async with running_worker(temporal_env.client, settings, identity="before-failover"):
            execution_id = (await api.start(definition))["id"]
            await api.wait_task(execution_id, "gate", ["WAITING"], timeout=DEADLINE)
        restored = tmp_path / "restored.db"
        source = sqlite3.connect(settings.sqlalchemy_url.removeprefix("sqlite:///"))
        target = sqlite3.connect(restored)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()

        handle = handle_of(temporal_env, settings, definition, execution_id)
        elsewhere = settings.model_copy(update={"database_url": f"sqlite:///{restored}"})
        async with running_worker(temporal_env.client, elsewhere, identity="after-failover"):
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                async with asyncio.timeout(DEADLINE):
                    await handle.result()
            assert (await api.execution(execution_id))[
                "status"
            ] == "RUNNING"  # its last publish went elsewhere
            # The worker answers the closed run's state query: the repair takes the run's own task states.
            await pass_until(app, settings, temporal_env.client, lambda r: r.repaired == 1, "the repair")

        final = await api.execution(execution_id)
        assert final["status"] == "CANCELLED" and final["error"] is None, final
        assert final["endTime"] == format_timestamp((await handle.describe()).close_time)
        gate = task_of(final, "gate")
        assert gate is not None and gate["status"] == "CANCELLED" and gate["error"] is None
        (reconciled,) = [b for b in await blockers_of(app, execution_id) if b.kind == "reconciled"]
        assert "CANCELED" in reconciled.description
        retried = await api.http.post(f"/api/tasks/{gate['id']}/retry", headers=api.headers)
        assert "only a FAILED task" in problem(retried, 409)["detail"]


# --- starts in doubt (fault path 8) ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxied_api(
    settings: Settings, temporal_env: WorkflowEnvironment
) -> AsyncIterator[tuple[FastAPI, ApiClient, TcpProxy]]:
    """The API with its Temporal client behind a proxy of the test's, connected (so the loss that
    follows hits the start, not the connection)."""
    host, port = temporal_address(temporal_env).rsplit(":", 1)
    async with (
        TcpProxy(host, int(port)) as proxy,
        api_with(settings.model_copy(update={"temporal_address": proxy.address})) as (app, api),
    ):
        assert (await api.http.get("/readyz")).status_code == 200
        yield app, api, proxy


class TestStartInDoubt:
    async def test_a_start_whose_answer_was_lost_keeps_the_execution_and_it_completes(
        self, settings, temporal_env
    ):
        """Temporal starts the run, its answer never arrives: 503 with Retry-After, the execution is
        kept, runs to COMPLETED (within 45 s), and the retried request returns it instead of a second one."""
        async with (
            proxied_api(settings, temporal_env) as (_, api, proxy),
            running_worker(temporal_env.client, settings),
        ):
            definition = await api.define(
                "two", [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "dependencies": ["a"]}]
            )
            body = {"workflowDefinitionId": definition, "initialContext": {"order": 42}}
            headers = {**api.headers, "Idempotency-Key": "order-42"}
            proxy.mode = Mode.LOSE_ANSWERS
            response = await api.http.post("/api/v2/executions", json=body, headers=headers)
            lost = problem(response, 503)
            assert response.headers["retry-after"] and "Idempotency-Key" in lost["detail"]
            execution_id = lost["executionId"]

            final = await api.wait_status(execution_id, ["COMPLETED"], timeout=DEADLINE)
            assert final["context"]["data"] == {"order": 42, "a-result": "success", "b-result": "success"}
            again = await api.http.post("/api/v2/executions", json=body, headers=headers)
            assert again.status_code == 201 and again.json()["id"] == execution_id, again.text
            assert (await api.http.get("/api/v2/executions", headers=api.headers)).json()["total"] == 1

    async def test_a_start_that_never_arrived_fails_after_the_grace_period(self, settings, temporal_env):
        """The start never reaches Temporal: 503, the execution is kept RUNNING, and the reconciler
        marks it FAILED once Temporal has had no run of it for the grace period."""
        async with proxied_api(settings, temporal_env) as (app, api, proxy):
            definition = await api.define("one", [{"id": "a", "name": "a"}])
            proxy.mode = Mode.LOSE_EVERYTHING
            response = await api.http.post(
                "/api/v2/executions", json={"workflowDefinitionId": definition}, headers=api.headers
            )
            execution_id = problem(response, 503)["executionId"]
            assert (await api.execution(execution_id))["status"] == "RUNNING"
            with pytest.raises(RPCError) as missing:
                await handle_of(temporal_env, settings, definition, execution_id).describe()
            assert missing.value.status == RPCStatusCode.NOT_FOUND

            await pass_until(app, settings, temporal_env.client, lambda r: r.repaired == 1, "the repair")
            final = await api.execution(execution_id)
            assert final["status"] == "FAILED" and "no run of this execution" in final["error"], final
            (reconciled,) = [b for b in await blockers_of(app, execution_id) if b.kind == "reconciled"]
            assert "not found" in reconciled.description
            assert [e.type for e in await events_of(app, execution_id)] == [
                "blocker.detected",
                "workflow.execution.failed",
            ]

    async def test_a_start_refused_before_it_reaches_temporal_leaves_nothing(self, api):
        """Certain failures (here: an input Temporal would refuse, over 1.8 MB even packed) keep nothing."""

        def noise() -> str:  # incompressible: packing the task list cannot save it
            return base64.b64encode(os.urandom(12_000)).decode()

        tasks = [{"id": f"t{i}", "name": f"t{i}", "input": {"blob": noise()}} for i in range(120)]
        definition = await api.define("big", tasks)
        body = {"workflowDefinitionId": definition, "initialContext": {"blob": noise() * 40}}
        response = await api.http.post("/api/v2/executions", json=body, headers=api.headers)
        assert response.status_code == 422, response.text[:300]
        assert "more than one execution can carry" in problem(response, 422)["detail"]
        assert (await api.http.get("/api/v2/executions", headers=api.headers)).json()["total"] == 0


# --- live executions, the endpoint, /readyz ------------------------------------------------------


class TestOnDemand:
    async def test_leaves_a_live_execution_alone_and_repairs_once_temporal_ended_it(
        self, app, api, client, operator, viewer, settings, temporal_env, worker
    ):
        definition, execution_id = await waiting_gate(api)
        await wait_quiet(app, execution_id, 1.0)
        before = await events_of(app, execution_id)

        report = await reconcile_pass(app, settings, temporal_env.client)
        assert report.outcomes == {"live": 1}, report
        response = await client.post(f"/api/executions/{execution_id}/reconcile", headers=operator)
        assert response.status_code == 200, response.text
        assert response.headers["reconciliation-outcome"] == "live"
        assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v1+json"
        assert response.json()["status"] == "RUNNING" and isinstance(response.json()["context"]["data"], str)
        assert [(e.seq, e.type) for e in await events_of(app, execution_id)] == [
            (e.seq, e.type) for e in before
        ]

        problem(await client.post(f"/api/executions/{execution_id}/reconcile", headers=viewer), 403)
        assert (
            "424242"
            in problem(await client.post("/api/executions/424242/reconcile", headers=operator), 404)["detail"]
        )

        await handle_of(temporal_env, settings, definition, execution_id).terminate(reason="by hand")
        deadline = time.monotonic() + DEADLINE
        while True:
            response = await client.post(f"/api/v2/executions/{execution_id}/reconcile", headers=operator)
            assert response.status_code == 200, response.text
            if response.headers["reconciliation-outcome"] == "repaired":
                break
            assert response.headers["reconciliation-outcome"] == "pending"  # closed within the grace period
            assert time.monotonic() < deadline, "never repaired"
            await asyncio.sleep(0.2)
        body = response.json()
        assert body["status"] == "FAILED" and "by hand" in body["error"]
        again = await client.post(f"/api/executions/{execution_id}/reconcile", headers=operator)
        assert again.headers["reconciliation-outcome"] == "finished"
        result = await gql(
            client,
            "mutation($id: ID!) { reconcileWorkflowExecution(id: $id) { id status } }",
            {"id": execution_id},
            operator,
        )
        assert data_of(result)["reconcileWorkflowExecution"] == {"id": execution_id, "status": "FAILED"}

    async def test_temporal_unreachable_is_503(self, api, settings, worker, database_url, tmp_path):
        _, execution_id = await waiting_gate(api)
        # Another API replica on the same database whose Temporal is gone (nothing listens there).
        unreachable = make_settings(database_url, tmp_path)
        async with api_with(unreachable) as (_, elsewhere):
            response = await elsewhere.http.post(
                f"/api/executions/{execution_id}/reconcile", headers=elsewhere.headers
            )
            assert "Temporal" in problem(response, 503)["detail"]
            assert response.headers["retry-after"]


class TestReadiness:
    async def test_readyz_shows_the_backlog_and_stays_ready(
        self, app, api, client, settings, temporal_env, worker
    ):
        ready = (await client.get("/readyz")).json()
        assert ready["reconciler"] == {"backlog": 0, "unchecked": 0, "lastPassAt": None}
        definition, execution_id = await waiting_gate(api)
        await wait_quiet(app, execution_id, 1.0)
        await handle_of(temporal_env, settings, definition, execution_id).terminate(reason="to see a backlog")

        # Diverging, but not for an hour yet: left alone and counted.
        report = await reconcile_pass(app, settings, temporal_env.client, reconcile_grace_seconds=3600)
        assert (report.backlog, report.repaired) == (1, 0), report
        response = await client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ready"
        assert response.json()["reconciler"]["backlog"] == 1 and response.json()["reconciler"]["lastPassAt"]
        assert (await api.execution(execution_id))["status"] == "RUNNING"

        await pass_until(app, settings, temporal_env.client, lambda r: r.repaired == 1, "the repair")
        assert (await client.get("/readyz")).json()["reconciler"]["backlog"] == 0


# --- the schedule --------------------------------------------------------------------------------


class TestSchedule:
    @pytest.mark.slow
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_a_system_worker_creates_it_and_a_triggered_pass_repairs(
        self, app, api, settings, temporal_env, processes: ProcessSet
    ):
        # An hour between ticks: the passes this test sees are the ones it triggers.
        hourly = settings.model_copy(update={"reconcile_interval_seconds": 3600})
        schedule = temporal_env.client.get_schedule_handle(
            reconciler_schedule_id(settings.workflow_id_prefix)
        )
        system = processes.start_worker(hourly, identity="system-worker")
        try:
            await wait_worker_polling(
                temporal_env.client, settings.system_task_queue, "system-worker", system
            )
            described = await schedule.describe()
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert action.workflow == RECONCILER_WORKFLOW and action.task_queue == settings.system_task_queue
            assert described.schedule.spec.intervals[0].every == timedelta(hours=1)

            definition, execution_id = await waiting_gate(api)
            handle = handle_of(temporal_env, settings, definition, execution_id)
            await handle.terminate(reason="ops")
            deadline = time.monotonic() + DEADLINE
            while (await api.execution(execution_id))["status"] == "RUNNING":
                # A pass within the grace period (or before the row is quiet) repairs nothing yet.
                assert time.monotonic() < deadline, system.log_tail()
                triggered = datetime.now(UTC)
                await schedule.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)  # never skipped
                await wait_pass_after(app, triggered, schedule)
                await asyncio.sleep(0.5)
            assert (await api.execution(execution_id))["status"] == "FAILED"
            recent = (await schedule.describe()).info.recent_actions
            assert recent and recent[-1].action.workflow_id.startswith(schedule.id)
        finally:
            with contextlib.suppress(RPCError):
                await schedule.delete()

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_starting_again_updates_it_and_keeps_a_pause(self, settings, temporal_env):
        schedule = temporal_env.client.get_schedule_handle(
            reconciler_schedule_id(settings.workflow_id_prefix)
        )
        try:
            await ensure_schedule(temporal_env.client, settings)
            await schedule.pause(note="an operator's pause")
            await ensure_schedule(
                temporal_env.client, settings.model_copy(update={"reconcile_interval_seconds": 120})
            )
            described = await schedule.describe()
            assert described.schedule.spec.intervals[0].every == timedelta(minutes=2)
            assert described.schedule.state.paused and described.schedule.state.note == "an operator's pause"
        finally:
            with contextlib.suppress(RPCError):
                await schedule.delete()


async def wait_pass_after(app: FastAPI, moment: datetime, schedule: Any) -> None:
    from api.services.reconciler import last_pass

    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        async with app.state.sessions() as session:
            latest = await last_pass(session)
        if latest is not None and latest.started_at >= moment:
            return
        await asyncio.sleep(0.1)
    info = (await schedule.describe()).info
    raise AssertionError(
        f"no pass ran after the trigger: running {info.running_actions}, recent {info.recent_actions}"
    )


# --- the rules alone ----------------------------------------------------------------------------


def test_a_grace_period_shorter_than_a_start_is_refused(tmp_path):
    """A start still in flight must never be taken for one that never reached Temporal."""
    with pytest.raises(ValueError, match="WFO_RECONCILE_GRACE_SECONDS"):
        make_settings("sqlite:///unused.db", tmp_path, start_timeout_seconds=10, reconcile_grace_seconds=5)
    assert make_settings(
        "sqlite:///unused.db", tmp_path, start_timeout_seconds=10, reconcile_grace_seconds=10
    )


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(hours=1)
UNFINISHED = ("PENDING", "RUNNING", "WAITING")
ENDED = ("COMPLETED", "FAILED", "CANCELLED")


def execution_view(**fields: Any) -> ExecutionView:
    values: dict[str, Any] = {
        "execution_id": "7",
        "workflow_id": "wfo-4-7",
        "status": "RUNNING",
        "start_time": STARTED,
        "updated_at": NOW - timedelta(minutes=5),
        "last_seq": 12,
        "run_id": "run-1",
        "total_tasks": 3,
    }
    return ExecutionView(**{**values, **fields})


class TestAssess:
    @pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.CONTINUED_AS_NEW])
    def test_a_run_that_goes_on_is_live(self, status):
        assert assess(execution_view(), RunView(status, "run-2"), NOW, 30) is Verdict.LIVE

    def test_a_finished_execution_is_not_compared(self):
        run = RunView(RunStatus.TERMINATED, "run-1", NOW - timedelta(hours=1))
        assert assess(execution_view(status="FAILED"), run, NOW, 30) is Verdict.FINISHED

    @pytest.mark.parametrize(
        "status",
        sorted(set(RunStatus) - {RunStatus.RUNNING, RunStatus.CONTINUED_AS_NEW, RunStatus.NOT_FOUND}),
    )
    def test_a_closed_run_is_repaired_only_after_the_grace_period(self, status):
        assert (
            assess(execution_view(), RunView(status, "r", NOW - timedelta(seconds=29)), NOW, 30)
            is Verdict.PENDING
        )
        assert (
            assess(execution_view(), RunView(status, "r", NOW - timedelta(seconds=30)), NOW, 30)
            is Verdict.REPAIR
        )

    def test_a_missing_run_counts_from_the_last_write(self):
        fresh = execution_view(updated_at=NOW - timedelta(seconds=5))
        assert assess(fresh, RunView(RunStatus.NOT_FOUND), NOW, 30) is Verdict.PENDING
        assert assess(execution_view(), RunView(RunStatus.NOT_FOUND), NOW, 30) is Verdict.REPAIR


class TestPlanRepair:
    def test_a_terminated_run_with_a_waiting_approval(self):
        closed = NOW - timedelta(minutes=1)
        view = execution_view(
            tasks=(
                TaskView("first", "First", "noop", "COMPLETED", STARTED, 1),
                TaskView("gate", "Gate", "approval", "WAITING", STARTED, 1),
            ),
            open_blockers=(
                BlockerView("approval:gate", "approval", "Task gate waits for approval", "gate", STARTED),
            ),
            completed_tasks=1,
        )
        run = RunView(RunStatus.TERMINATED, "run-1", closed, reason="stuck", identity="ops@host")
        events = plan_repair(view, run, NOW)
        assert [(e.seq, e.type) for e in events] == [
            (13, "task.execution.failed"),
            (14, "blocker.resolved"),
            (15, "blocker.detected"),
            (16, "blocker.detected"),
            (17, "workflow.execution.failed"),
        ]
        failed, resolved, task_blocker, reconciled, end = (e.data for e in events)
        assert (
            failed["taskId"] == "gate"
            and failed["status"] == "FAILED"
            and failed["endTime"] == closed.isoformat()
        )
        assert "terminated in Temporal by ops@host: stuck" in failed["error"] and "WAITING" in failed["error"]
        assert resolved["key"] == "approval:gate" and resolved["resolvedAt"] == closed.isoformat()
        assert task_blocker["key"] == "task-failed:gate"
        assert reconciled["kind"] == "reconciled" and reconciled["key"] == "reconciled:run-1"
        assert "run-1 TERMINATED" in reconciled["description"] and "stuck" in reconciled["description"]
        assert end == {
            "status": "FAILED",
            "startTime": STARTED.isoformat(),
            "endTime": closed.isoformat(),
            "error": "the workflow run was terminated in Temporal by ops@host: stuck",
            "contextVersion": 1,
            "reconciled": True,
        }

    def test_the_run_own_failure_summary_becomes_the_error(self):
        run = RunView(RunStatus.FAILED, "run-1", NOW, reason="task b failed", failure_type="ExecutionFailed")
        assert plan_repair(execution_view(), run, NOW)[-1].data["error"] == "task b failed"
        other = RunView(RunStatus.FAILED, "run-1", NOW, reason="boom", failure_type="RuntimeError")
        assert (
            plan_repair(execution_view(), other, NOW)[-1].data["error"]
            == "the workflow run failed in Temporal: boom"
        )

    def test_a_completed_run_completes_what_is_left_and_its_milestone(self):
        view = execution_view(
            tasks=(TaskView("c", "C", "noop", "RUNNING", STARTED, 1),),
            completed_tasks=2,
            completion_pending=True,
        )
        events = plan_repair(view, RunView(RunStatus.COMPLETED, "run-1", NOW), NOW)
        assert [e.type for e in events] == [
            "task.execution.completed",
            "progress.updated",
            "milestone.achieved",
            "blocker.detected",
            "workflow.execution.completed",
        ]
        assert events[1].data["completedTasks"] == 3 and events[-1].data["error"] is None

    def test_a_running_run_has_nothing_to_repair(self):
        with pytest.raises(ValueError):
            plan_repair(execution_view(), RunView(RunStatus.RUNNING, "run-1"), NOW)


task_ids = st.text(alphabet="abcdefgh-", min_size=1, max_size=6)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ExecutionView, RunView]:
    ids = draw(st.lists(task_ids, unique=True, max_size=8))
    tasks = tuple(
        TaskView(
            i,
            i.upper(),
            draw(st.sampled_from(["noop", "approval", "sleep"])),
            draw(st.sampled_from(UNFINISHED + ENDED)),
            STARTED,
            draw(st.integers(0, 5)),
        )
        for i in ids
    )
    blockers = tuple(
        BlockerView(f"{kind}:{t.task_id}", kind, "open", t.task_id, STARTED)
        for t in tasks
        for kind in ("approval", "no-workers", "task-failed")
        if draw(st.booleans())
    )
    status = draw(st.sampled_from(sorted(set(RunStatus) - {RunStatus.RUNNING, RunStatus.CONTINUED_AS_NEW})))
    queried = None
    if status is not RunStatus.NOT_FOUND and draw(st.booleans()):
        queried = {
            "tasks": [
                {
                    "taskId": t.task_id,
                    "status": draw(st.sampled_from(UNFINISHED + ENDED)),
                    "endTime": None,
                    "attempts": 1,
                    "error": None,
                }
                for t in tasks
                if draw(st.booleans())
            ]
        }
    run = RunView(
        status,
        None if status is RunStatus.NOT_FOUND else "run-9",
        None if status is RunStatus.NOT_FOUND else NOW - timedelta(minutes=1),
        reason=draw(st.none() | st.text(max_size=20)),
        failure_type=draw(st.none() | st.sampled_from(["ExecutionFailed", "Other"])),
        state=queried,
    )
    view = execution_view(
        tasks=tasks,
        open_blockers=blockers,
        last_seq=draw(st.integers(0, 10_000)),
        completed_tasks=sum(t.status == "COMPLETED" for t in tasks),
        total_tasks=len(tasks) + draw(st.integers(0, 3)),
        completion_pending=draw(st.booleans()),
    )
    return view, run


class TestPlanRepairProperties:
    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios())
    def test_appends_in_order_and_leaves_nothing_unfinished(self, scenario):
        view, run = scenario
        events = plan_repair(view, run, NOW)

        # Numbered right after the last applied event, one by one: only appended, nothing reordered.
        assert [e.seq for e in events] == list(range(view.last_seq + 1, view.last_seq + 1 + len(events)))
        assert all(e.at == NOW and e.data["reconciled"] is True for e in events)
        # The execution ends last, exactly once, as Temporal ended it.
        ends = [e for e in events if e.type.startswith("workflow.execution.")]
        assert ends == [events[-1]]
        expected = {RunStatus.COMPLETED: "COMPLETED", RunStatus.CANCELED: "CANCELLED"}.get(
            run.status, "FAILED"
        )
        assert ends[0].type == f"workflow.execution.{expected.lower()}" and ends[0].data["status"] == expected
        assert (ends[0].data["error"] is None) == (expected != "FAILED")
        # One blocker says what Temporal reported.
        reconciled = [e for e in events if e.type == "blocker.detected" and e.data["kind"] == "reconciled"]
        assert len(reconciled) == 1
        said = "not found" if run.status is RunStatus.NOT_FOUND else f"run-9 {run.status}"
        assert said in reconciled[0].data["description"]

        # Folded the way the writer applies them: every task ends, each once; finished ones stay.
        statuses = {t.task_id: t.status for t in view.tasks}
        touched = []
        open_keys = {b.key for b in view.open_blockers}
        for event in events:
            if event.type.startswith("task.execution."):
                assert event.type == f"task.execution.{event.data['status'].lower()}"
                statuses[event.data["taskId"]] = event.data["status"]
                touched.append(event.data["taskId"])
            elif event.type == "blocker.detected":
                assert event.data["key"] not in open_keys, "a blocker opened twice"
                open_keys.add(event.data["key"])
            elif event.type == "blocker.resolved":
                assert event.data["key"] in open_keys
                open_keys.discard(event.data["key"])
        assert sorted(touched) == sorted(t.task_id for t in view.tasks if t.status in UNFINISHED)
        assert all(status in ENDED for status in statuses.values())
        queried = {t["taskId"]: t["status"] for t in (run.state or {}).get("tasks", [])}
        for task in view.tasks:
            if task.status in ENDED:
                assert statuses[task.task_id] == task.status
            elif queried.get(task.task_id) in ENDED:
                assert statuses[task.task_id] == queried[task.task_id]  # the run's own word
            elif task.status == "PENDING":
                assert statuses[task.task_id] != "FAILED"  # never ran: a reopen runs it
            if statuses[task.task_id] == "FAILED" and task.status in UNFINISHED:
                assert f"task-failed:{task.task_id}" in open_keys
            if task.task_id in touched:
                assert (
                    f"approval:{task.task_id}" not in open_keys
                    and f"no-workers:{task.task_id}" not in open_keys
                )
