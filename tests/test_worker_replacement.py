"""An approval decided after the worker that ran its execution was replaced: the new worker has no
cached copy of the run and replays its history first, and the decision must still reach the
waiting task. The real API (`python -m server`) and real workers (`python -m worker`) as
subprocesses, on the session's Temporal dev server and the real databases.

Why it could fail: when the workflow task that left the approval WAITING sent no command (and the
one before it sent none either, or it was the first), the SDK's core hands a worker new to the
run that task's history and the Update in one activation, and the Update's validator runs before
the workflow has applied that history (see InterpreterWorkflow.caught_up). Each scenario ends by
replaying the history the new worker wrote.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from api.codec import data_converter
from api.settings import Settings
from tests.loopback import LoopbackServer, Reply
from tests.processes import (
    ApiClient,
    Process,
    ProcessSet,
    task_of,
    wait_worker_polling,
)
from tests.test_engine_faults import gated
from workflows.constants import workflow_id
from workflows.interpreter import InterpreterWorkflow

pytestmark = pytest.mark.slow

APPROVAL_DAG = [
    {"id": "review", "name": "Human review", "type": "approval"},
    {"id": "after", "name": "after", "dependencies": ["review"]},
]


@pytest.fixture(params=["plain", "encrypted"])
def settings(request: pytest.FixtureRequest, engine_settings: Settings) -> Settings:
    # No inspection of running tasks (a timer, then a local activity): the workflow tasks that
    # only mark tasks send no command, as in production between inspections.
    settings = engine_settings.model_copy(update={"inspect_after_seconds": 300})
    if request.param == "plain":
        return settings
    key = base64.b64encode(os.urandom(32)).decode()
    return settings.model_copy(update={"payload_keys": SecretStr(f"k1:{key}")})


async def start_worker(
    settings: Settings, processes: ProcessSet, temporal_env: WorkflowEnvironment, identity: str
) -> Process:
    """A worker process for the system and default queues, once it polls for workflow tasks."""
    worker = processes.start_worker(settings, identity=identity)
    for queue in (settings.system_task_queue, settings.default_task_queue):
        await wait_worker_polling(temporal_env.client, queue, identity, worker, workflows=True)
    return worker


async def waiting_approval(api: ApiClient) -> tuple[str, str, str]:
    """An execution whose first task, an approval, is WAITING (as the API shows it): the definition's,
    the execution's and the task's id."""
    definition = await api.define("approval-after-replacement", APPROVAL_DAG)
    execution = await api.start(definition, {"order": 7})
    return definition, str(execution["id"]), await waiting_task(api, str(execution["id"]))


async def waiting_task(api: ApiClient, execution_id: str) -> str:
    body = await api.wait_task(execution_id, "review", ["WAITING"], timeout=60)
    task = task_of(body, "review")
    assert task is not None
    return str(task["id"])


async def assert_replays(
    settings: Settings, temporal_env: WorkflowEnvironment, definition: str, execution_id: str
) -> None:
    """The finished run's history (the new worker's part included) replays on today's code."""
    handle = temporal_env.client.get_workflow_handle(
        workflow_id(settings.workflow_id_prefix, definition, execution_id)
    )
    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[InterpreterWorkflow], data_converter=data_converter(settings.payload_codec_keys())
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def decide(api: ApiClient, task_id: str, verdict: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.http.post(f"/api/tasks/{task_id}/{verdict}", json=body, headers=api.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def replace_worker(
    old: Process, settings: Settings, processes: ProcessSet, temporal_env: WorkflowEnvironment
) -> Process:
    """Stop `old` (SIGTERM, as a deploy does) and start a new worker process in its place."""
    old.terminate()
    assert not old.alive
    return await start_worker(settings, processes, temporal_env, "worker-new")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
class TestApprovalAfterWorkerReplaced:
    async def test_approve_completes_the_execution(
        self, settings: Settings, api: ApiClient, processes: ProcessSet, temporal_env: WorkflowEnvironment
    ) -> None:
        old = await start_worker(settings, processes, temporal_env, "worker-old")
        definition, execution_id, task_id = await waiting_approval(api)

        new = await replace_worker(old, settings, processes, temporal_env)
        answer = await decide(api, task_id, "complete", {"output": {"approvedBy": "admin"}})

        assert answer["status"] == "COMPLETED", answer
        final = await api.wait_status(execution_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert [t["status"] for t in final["taskExecutions"]] == ["COMPLETED", "COMPLETED"]
        assert final["context"]["data"]["review-result"] == {"approvedBy": "admin"}
        new.check_alive()
        await assert_replays(settings, temporal_env, definition, execution_id)

    async def test_approve_an_approval_that_a_finished_task_released(
        self,
        settings: Settings,
        api: ApiClient,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        loopback: LoopbackServer,
    ) -> None:
        """Mid-run: two requests finish one after the other (two workflow tasks without a command),
        the second leaves the approval WAITING; then the worker is replaced."""
        gates = {"one": threading.Event(), "two": threading.Event()}
        for name, gate in gates.items():
            loopback.route(f"/{name}", handler=gated(gate, Reply(json={"done": name})))
        try:
            old = await start_worker(settings, processes, temporal_env, "worker-old")
            definition = await api.define(
                "approval-after-two-requests",
                [
                    {"id": "one", "name": "one", "type": "http", "input": {"url": loopback.url_for("/one")}},
                    {"id": "two", "name": "two", "type": "http", "input": {"url": loopback.url_for("/two")}},
                    {
                        "id": "review",
                        "name": "Human review",
                        "type": "approval",
                        "dependencies": ["one", "two"],
                    },
                    {"id": "after", "name": "after", "dependencies": ["review"]},
                ],
            )
            execution_id = str((await api.start(definition))["id"])
            await loopback.wait_for_requests_async(2, timeout=30)
            gates["one"].set()
            await api.wait_task(execution_id, "one", ["COMPLETED"], timeout=30)
            gates["two"].set()
            task_id = await waiting_task(api, execution_id)

            await replace_worker(old, settings, processes, temporal_env)
            answer = await decide(api, task_id, "complete", {"output": "go"})
        finally:
            for gate in gates.values():
                gate.set()

        assert answer["status"] == "COMPLETED", answer
        final = await api.wait_status(execution_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert [t["status"] for t in final["taskExecutions"]] == ["COMPLETED"] * 4
        assert final["context"]["data"]["review-result"] == "go"
        await assert_replays(settings, temporal_env, definition, execution_id)

    async def test_reject_fails_the_task(
        self, settings: Settings, api: ApiClient, processes: ProcessSet, temporal_env: WorkflowEnvironment
    ) -> None:
        old = await start_worker(settings, processes, temporal_env, "worker-old")
        definition, execution_id, task_id = await waiting_approval(api)

        await replace_worker(old, settings, processes, temporal_env)
        answer = await decide(api, task_id, "reject", {"reason": "not this week"})

        assert answer["status"] == "FAILED", answer
        final = await api.wait_status(execution_id, timeout=60)
        assert final["status"] == "FAILED", final
        review = task_of(final, "review")
        assert review is not None and review["status"] == "FAILED"
        assert "not this week" in (review["error"] or ""), review
        assert task_of(final, "after") is None  # never started
        await assert_replays(settings, temporal_env, definition, execution_id)

    async def test_approve_without_replacement(
        self, settings: Settings, api: ApiClient, processes: ProcessSet, temporal_env: WorkflowEnvironment
    ) -> None:
        """The control: the worker that started the run still has it cached."""
        await start_worker(settings, processes, temporal_env, "worker-only")
        definition, execution_id, task_id = await waiting_approval(api)

        answer = await decide(api, task_id, "complete", {"output": "go"})

        assert answer["status"] == "COMPLETED", answer
        final = await api.wait_status(execution_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert final["context"]["data"]["review-result"] == "go"
        await assert_replays(settings, temporal_env, definition, execution_id)


class TestRetryAfterWorkerReplaced:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    @pytest.mark.parametrize("settings", ["plain"], indirect=True)
    async def test_retry_a_task_that_failed_in_a_task_without_commands(
        self,
        settings: Settings,
        api: ApiClient,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        loopback: LoopbackServer,
    ) -> None:
        """The same for a retry (validated the same way): the failure is in the history the new
        worker gets together with the Update; an approval keeps the execution running meanwhile."""
        gates = {"one": threading.Event(), "flaky": threading.Event()}
        calls: list[object] = []

        def flaky(request: object) -> Reply:
            calls.append(request)
            if len(calls) == 1:
                gates["flaky"].wait(60)
                return Reply(status=503, json={"error": "down"})
            return Reply(json={"ok": True})

        loopback.route("/one", handler=gated(gates["one"], Reply(json={"done": "one"})))
        loopback.route("/flaky", handler=flaky)
        try:
            old = await start_worker(settings, processes, temporal_env, "worker-old")
            definition = await api.define(
                "retry-after-replacement",
                [
                    {"id": "one", "name": "one", "type": "http", "input": {"url": loopback.url_for("/one")}},
                    {
                        "id": "flaky",
                        "name": "flaky",
                        "type": "http",
                        "input": {"url": loopback.url_for("/flaky")},
                        "retryPolicy": {"maxAttempts": 1},
                    },
                    {"id": "review", "name": "Human review", "type": "approval"},
                ],
            )
            execution_id = str((await api.start(definition))["id"])
            await loopback.wait_for_requests_async(2, timeout=30)
            gates["one"].set()
            await api.wait_task(execution_id, "one", ["COMPLETED"], timeout=30)
            gates["flaky"].set()
            body = await api.wait_task(execution_id, "flaky", ["FAILED"], timeout=30)
            flaky_task = task_of(body, "flaky")
            assert flaky_task is not None

            await replace_worker(old, settings, processes, temporal_env)
            response = await api.http.post(f"/api/tasks/{flaky_task['id']}/retry", headers=api.headers)
            assert response.status_code == 200, response.text
            await api.wait_task(execution_id, "flaky", ["COMPLETED"], timeout=30)
            await decide(api, await waiting_task(api, execution_id), "complete", {"output": "go"})
        finally:
            for gate in gates.values():
                gate.set()

        final = await api.wait_status(execution_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        flaky_done = task_of(final, "flaky")
        assert flaky_done is not None and flaky_done["attempts"] == 2, flaky_done
        await assert_replays(settings, temporal_env, definition, execution_id)
