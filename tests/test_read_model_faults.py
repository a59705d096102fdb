"""The read model against what really happens: the ways a run could end, or stall, without the API
showing it (issue 9), each reproduced on the real Temporal dev server, the real databases and
loopback HTTP servers, and each ending with the API showing the true state within a stated bound.

* a task runs only once the API shows it running (the events of an activation are written before
  its commands leave the worker);
* Temporal not answering the look at a long-running task;
* a cancel racing the end of an execution;
* tasks that get a large context: the history's size, not only its length, hands the run over,
  and one workflow task schedules no more than Temporal takes in one completion;
* NUL characters in a result or an error (PostgreSQL refuses them, SQLite does not);
* reopening a failed execution with a large context, and after a synchronization point's
  deadline; the blockers still open go with it.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.registry import task_function
from api.db import create_sync_engine
from api.settings import Settings
from tests.conftest import running_worker, running_worker_set
from tests.loopback import LoopbackServer, RecordedRequest, Reply
from tests.processes import ApiClient, task_of
from tests.tcp_proxy import Mode, TcpProxy
from tests.test_engine_faults import gated, in_process_api
from workflows.constants import workflow_id

pytestmark = pytest.mark.slow


@task_function("tests.readmodel.nul_result")
def nul_result(input: dict[str, Any], context: dict[str, Any]) -> dict[str, str]:
    return {"text": "before\x00after"}


@task_function("tests.readmodel.nul_error")
def nul_error(input: dict[str, Any], context: dict[str, Any]) -> None:
    raise ApplicationError("a bad byte \x00 in the message", non_retryable=True)


@task_function("tests.readmodel.context_size")
def context_size(input: dict[str, Any], context: dict[str, Any]) -> int:
    """Small result; the task gets the whole context (as every python task does)."""
    return len(json.dumps(context))


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    return engine_settings


@pytest_asyncio.fixture
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with in_process_api(settings) as client:
        yield client


def incompressible_text(size: int, seed: int = 9) -> str:
    """Text that deflate cannot shrink much (a packed context stays about this large)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=size))


async def runs_of(temporal_env: WorkflowEnvironment, wid: str) -> list[Any]:
    runs = [w async for w in temporal_env.client.list_workflows(f'WorkflowId = "{wid}"')]
    return sorted(runs, key=lambda r: r.start_time)


def event_kinds(settings: Settings, execution_id: str) -> list[str]:
    engine = create_sync_engine(settings)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT type FROM execution_events WHERE execution_id = :id ORDER BY seq"),
                {"id": int(execution_id)},
            )
            return [kind for (kind,) in rows]
    finally:
        engine.dispose()


class TestTasksStartOnlyOnceShown:
    async def test_every_task_finds_itself_running_in_the_read_model(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment, loopback: LoopbackServer
    ) -> None:
        """Each http task, as it runs, reads its own row straight from the database: it is there,
        RUNNING, every time (a chain, a fan-out and a fan-in)."""
        engine = create_sync_engine(settings)
        seen: dict[str, str | None] = {}
        lock = threading.Lock()

        def look(request: RecordedRequest) -> Reply:
            task_id = request.path.rsplit("/", 1)[1]
            with engine.connect() as conn:
                status = conn.execute(
                    sa.text("SELECT status FROM task_executions WHERE task_definition_id = :t"),
                    {"t": task_id},
                ).scalar()
            with lock:
                seen[task_id] = status
            return Reply(json={"saw": status})

        ids = ["a", "b", *(f"f{i}" for i in range(6)), "z"]
        for task_id in ids:
            loopback.route(f"/look/{task_id}", handler=look)

        def http(task_id: str, deps: list[str]) -> dict[str, Any]:
            return {
                "id": task_id,
                "name": task_id,
                "type": "http",
                "dependencies": deps,
                "input": {"url": loopback.url_for(f"/look/{task_id}")},
            }

        tasks = [
            http("a", []),
            http("b", ["a"]),
            *(http(f"f{i}", ["b"]) for i in range(6)),
            http("z", [f"f{i}" for i in range(6)]),
        ]
        try:
            async with running_worker(temporal_env.client, settings):
                definition = await api.define("shown-first", tasks)
                execution = await api.start(definition)
                final = await api.wait_status(execution["id"], timeout=60)
        finally:
            engine.dispose()
        assert final["status"] == "COMPLETED", final["error"]
        assert seen == dict.fromkeys(ids, "RUNNING"), seen


class TestInspectionRefused:
    async def test_a_look_temporal_does_not_answer_leaves_the_execution_running(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment, loopback: LoopbackServer
    ) -> None:
        """The worker's look at a long-running task (Temporal's describe) goes through a proxy that
        drops everything: both attempts of the inspection fail. The execution goes on, and completes
        when its task answers (before, the failed local activity failed the whole execution)."""
        gate = threading.Event()
        loopback.route("/slow", handler=gated(gate, Reply(json={"done": True})))
        host, port = settings.temporal_address.rsplit(":", 1)
        async with (
            TcpProxy(host, int(port)) as proxy,
            running_worker_set(temporal_env.client, settings) as worker_set,
        ):
            assert worker_set.system is not None
            worker_set.system.client = await Client.connect(proxy.address)
            definition = await api.define(
                "inspection-refused",
                [{"id": "slow", "name": "slow", "type": "http", "input": {"url": loopback.url_for("/slow")}}],
            )
            execution = await api.start(definition)
            await loopback.wait_for_requests_async(1, "/slow", timeout=30)
            proxy.mode = Mode.LOSE_EVERYTHING
            handle = temporal_env.client.get_workflow_handle(
                workflow_id(settings.workflow_id_prefix, definition, execution["id"])
            )
            began = time.monotonic()
            while True:  # an inspection is due 1 s after the start; it fails after two attempts
                history = await handle.fetch_history()
                failed_looks = [
                    e for e in history.events
                    if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and e.marker_recorded_event_attributes.HasField("failure")
                ]  # fmt: skip
                if failed_looks:
                    break
                assert time.monotonic() - began < 60, "no failed inspection recorded"
                await asyncio.sleep(0.25)
            assert (await api.execution(execution["id"]))["status"] == "RUNNING"
            proxy.mode = Mode.FORWARD
            gate.set()
            final = await api.wait_status(execution["id"], timeout=60)
        assert final["status"] == "COMPLETED", final["error"]


class TestCancelRacingTheEnd:
    async def test_the_api_shows_how_temporal_closed_each_run(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """An approval decided at the same moment as a cancel, several times: whichever wins, the
        execution ends in the API as its run closed in Temporal, with one terminal event, last."""
        closing = {
            WorkflowExecutionStatus.COMPLETED: "COMPLETED",
            WorkflowExecutionStatus.CANCELED: "CANCELLED",
        }
        async with running_worker(temporal_env.client, settings):
            definition = await api.define(
                "race",
                [
                    {"id": "work", "name": "work"},
                    {"id": "gate", "name": "gate", "type": "approval", "dependencies": ["work"]},
                ],
            )
            outcomes = []
            for round_ in range(6):
                execution = await api.start(definition)
                waiting = await api.wait_task(execution["id"], "gate", ["WAITING"], timeout=30)
                gate = task_of(waiting, "gate")
                assert gate is not None
                decide = api.http.post(
                    f"/api/tasks/{gate['id']}/complete", json={"output": round_}, headers=api.headers
                )
                cancel = api.cancel(execution["id"])
                calls = [decide, cancel] if round_ % 2 else [cancel, decide]
                await asyncio.gather(*calls)
                final = await api.wait_status(execution["id"], timeout=30)
                handle = temporal_env.client.get_workflow_handle(
                    workflow_id(settings.workflow_id_prefix, definition, execution["id"])
                )
                closed = (await handle.describe()).status
                assert closed in closing, closed
                assert final["status"] == closing[closed], (final, closed)
                kinds = event_kinds(settings, execution["id"])
                terminal = [
                    k
                    for k in kinds
                    if k.startswith("workflow.execution.") and k != "workflow.execution.started"
                ]
                assert (
                    terminal == [kinds[-1]] and kinds[-1] == f"workflow.execution.{final['status'].lower()}"
                ), kinds
                assert all(t["status"] in ("COMPLETED", "CANCELLED") for t in final["taskExecutions"]), final
                outcomes.append(final["status"])
        assert set(outcomes) <= {"COMPLETED", "CANCELLED"}


class TestLargeContexts:
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    async def test_a_long_chain_with_a_large_context_hands_over_by_size(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """60 python tasks, each handed the whole 900 KB context: 54 MB of history in one run,
        over Temporal's 50 MB limit (it terminates such a run). The run hands over by size instead,
        and the execution completes as one, in a few runs."""
        tasks = [
            {
                "id": f"t{i}",
                "name": f"t{i}",
                "type": "python",
                "input": {"function": "tests.readmodel.context_size"},
                "dependencies": [f"t{i - 1}"] if i else [],
            }
            for i in range(60)
        ]
        async with running_worker(temporal_env.client, settings):
            definition = await api.define("large-context-chain", tasks)
            execution = await api.start(definition, {"blob": incompressible_text(900_000)})
            final = await api.wait_status(execution["id"], timeout=240)
        assert final["status"] == "COMPLETED", final["error"]
        assert (
            all(t["status"] == "COMPLETED" for t in final["taskExecutions"])
            and len(final["taskExecutions"]) == 60
        )
        runs = await runs_of(
            temporal_env, workflow_id(settings.workflow_id_prefix, definition, execution["id"])
        )
        assert len(runs) >= 3, [r.status for r in runs]
        for run in runs:
            description = await temporal_env.client.get_workflow_handle(run.id, run_id=run.run_id).describe()
            size = description.raw_description.workflow_execution_info.history_size_bytes
            assert size < settings.continue_after_bytes + 4 * 1024 * 1024, size

    async def test_a_wide_layer_of_large_inputs_is_scheduled_in_parts(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """Twelve python tasks ready at once, each with the 900 KB context as input: 10.8 MB, more
        than Temporal takes in one workflow-task completion (4 MB). They start a few at a time."""
        tasks = [{"id": "first", "name": "first"}] + [
            {
                "id": f"w{i}",
                "name": f"w{i}",
                "type": "python",
                "input": {"function": "tests.readmodel.context_size"},
                "dependencies": ["first"],
            }
            for i in range(12)
        ]
        async with running_worker(temporal_env.client, settings):
            definition = await api.define("large-context-fan-out", tasks)
            execution = await api.start(definition, {"blob": incompressible_text(900_000)})
            final = await api.wait_status(execution["id"], timeout=120)
        assert final["status"] == "COMPLETED", final["error"]
        sizes = [final["context"]["data"][f"w{i}-result"] for i in range(12)]
        assert min(sizes) > 900_000, "every task got the whole context"
        # Started in parts: tasks of a later part saw the results of an earlier one.
        assert len(set(sizes)) > 1, sizes


class TestPoisonData:
    async def test_nul_in_a_result_or_an_error_fails_the_task_not_the_read_model(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """A result holding \\u0000 fails its task, saying why; an error message holding it is kept
        with the character replaced. Same answer on SQLite and PostgreSQL, and the execution ends."""
        tasks = [
            {
                "id": "result",
                "name": "result",
                "type": "python",
                "input": {"function": "tests.readmodel.nul_result"},
                "retryPolicy": {"maxAttempts": 1},
            },
            {
                "id": "error",
                "name": "error",
                "type": "python",
                "input": {"function": "tests.readmodel.nul_error"},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "fine", "name": "fine"},
            {"id": "after", "name": "after", "dependencies": ["result"]},
        ]
        async with running_worker(temporal_env.client, settings):
            definition = await api.define("nul", tasks)
            execution = await api.start(definition)
            final = await api.wait_status(execution["id"], timeout=60)
        assert final["status"] == "FAILED"
        result, error, fine = (task_of(final, t) for t in ("result", "error", "fine"))
        assert result and result["status"] == "FAILED"
        assert result["error"] == "the result contains a NUL character (\\u0000), which cannot be stored"
        assert error and error["status"] == "FAILED" and "a bad byte \ufffd in the message" in error["error"]
        assert fine and fine["status"] == "COMPLETED"
        assert task_of(final, "after") is None, "what depends on the failed task never ran"
        assert "result-result" not in final["context"]["data"]


class TestReopen:
    async def test_a_failed_execution_with_a_large_context_reopens(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment, loopback: LoopbackServer
    ) -> None:
        """A 950 KB context: the reopened run's input carries it once, packed, not twice (which
        was over Temporal's 2 MB and answered 422), and the retried task completes."""
        loopback.route("/flaky", status=[500, 200])
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": loopback.url_for("/flaky")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "after", "name": "after", "dependencies": ["call"]},
        ]
        async with running_worker(temporal_env.client, settings):
            definition = await api.define("reopen-large", tasks)
            execution = await api.start(definition, {"blob": incompressible_text(950_000)})
            failed = await api.wait_status(execution["id"], timeout=60)
            assert failed["status"] == "FAILED"
            call = task_of(failed, "call")
            assert call is not None
            response = await api.http.post(f"/api/tasks/{call['id']}/retry", headers=api.headers)
            assert response.status_code == 200, response.text
            final = await api.wait_status(execution["id"], ["COMPLETED"], timeout=60)
        assert len(final["context"]["data"]["blob"]) == 950_000
        assert task_of(final, "call")["attempts"] == 2  # type: ignore[index]

    async def test_a_reopened_execution_gets_its_sync_points_time_again_and_its_blockers(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment, loopback: LoopbackServer
    ) -> None:
        """Two tasks fail; the synchronization point waiting on one has a 3 s deadline. Retried
        after the deadline, the reopened run counts it afresh and reaches it; the other task's
        blocker, still open, is known to the new run and resolved when that task is retried."""
        loopback.route("/one", status=[500, 200])
        loopback.route("/two", status=[500, 200])
        tasks = [
            {
                "id": "one",
                "name": "one",
                "type": "http",
                "input": {"url": loopback.url_for("/one")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {
                "id": "two",
                "name": "two",
                "type": "http",
                "input": {"url": loopback.url_for("/two")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "after", "name": "after", "dependencies": ["gate"]},
        ]
        sync = [{"id": "gate", "name": "Gate", "requiredTasks": ["one"], "timeout": 3}]
        async with running_worker(temporal_env.client, settings):
            definition = await api.define("reopen-deadline", tasks, sync)
            execution = await api.start(definition)
            failed = await api.wait_status(execution["id"], timeout=60)
            assert failed["status"] == "FAILED"
            started = time.monotonic()
            while time.monotonic() - started < 3.5:  # the deadline passes while it is failed
                await asyncio.sleep(0.2)
            one = task_of(failed, "one")
            assert one is not None
            response = await api.http.post(f"/api/tasks/{one['id']}/retry", headers=api.headers)
            assert response.status_code == 200, response.text
            again = await api.wait_for(
                execution["id"],
                lambda b: (
                    (task_of(b, "after") or {}).get("status") == "COMPLETED" or b["status"] != "RUNNING"
                ),
                "after done",
                30,
            )
            assert (task_of(again, "after") or {}).get("status") == "COMPLETED", again
            progress = await api.progress(execution["id"])
            assert [m["achievedAt"] is not None for m in progress["milestones"] if m["name"] == "Gate"] == [
                True
            ]
            failed_again = await api.wait_status(execution["id"], timeout=30)
            assert failed_again["status"] == "FAILED", "task two is still failed"
            two = task_of(failed_again, "two")
            assert two is not None
            response = await api.http.post(f"/api/tasks/{two['id']}/retry", headers=api.headers)
            assert response.status_code == 200, response.text
            final = await api.wait_status(execution["id"], ["COMPLETED"], timeout=30)
            progress = await api.progress(execution["id"])
        assert [t["status"] for t in final["taskExecutions"]] == ["COMPLETED"] * 3
        open_blockers = [b for b in progress["blockers"] if b["resolvedAt"] is None]
        assert open_blockers == [], open_blockers
