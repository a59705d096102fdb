"""Long executions: the interpreter continues as new runs when its history grows long, and the
API still sees one whole execution. Large DAGs travel packed. Real dev server, worker, database."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

import api.services.executions as executions_service
from api.db import create_engine
from tests.test_executions import define, finished, start, task, wait_for
from workflows.constants import workflow_id
from workflows.inputs import (
    ResumeState,
    RetrySpec,
    TaskCarryOver,
    TaskSpec,
    pack_carry,
    pack_tasks,
    unpack_carry,
    unpack_tasks,
)

WIDTH, LAYERS = 25, 10


@pytest.fixture
def settings(engine_settings):
    # Temporal's own limit is 51,200 events; a small threshold makes a few hundred tasks hand over.
    return engine_settings.model_copy(update={"continue_after_events": 500})


def layered_tasks() -> list[dict]:
    tasks: list[dict] = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            deps = [f"l{layer - 1}n{(i + k) % WIDTH}" for k in (0, 7)] if layer else []
            tasks.append({"id": f"l{layer}n{i}", "name": f"l{layer}n{i}", "dependencies": deps})
    last = [f"l{LAYERS - 1}n{i}" for i in range(WIDTH)]
    return [
        {"id": "gate", "name": "gate", "type": "approval"},
        {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 8}},
        *tasks,
        {"id": "after", "name": "after", "dependencies": ["gate", "nap", *last]},
    ]


async def runs_of(temporal_env: WorkflowEnvironment, wid: str) -> list:
    runs = [w async for w in temporal_env.client.list_workflows(f'WorkflowId = "{wid}"')]
    return sorted(runs, key=lambda r: r.start_time)


async def event_log(settings, execution_id: str) -> list[tuple[int, str, dict]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT seq, type, data FROM execution_events WHERE execution_id = :id ORDER BY seq"),
                {"id": int(execution_id)},
            )
            return [
                (seq, kind, data if isinstance(data, dict) else __import__("json").loads(data))
                for seq, kind, data in rows
            ]
    finally:
        await engine.dispose()


class TestContinueAsNew:
    async def test_a_long_execution_hands_over_and_stays_whole(
        self, client, operator, worker, temporal_env, settings, monkeypatch
    ):
        # Packed task specs too (normally only above 256 KB), through every run.
        monkeypatch.setattr(executions_service, "PACK_TASKS_ABOVE_BYTES", 0)
        tasks = layered_tasks()
        sync = [
            {
                "id": "half",
                "name": "Half way",
                "requiredTasks": [f"l4n{i}" for i in range(WIDTH)],
                "timeout": 300,
            }
        ]
        definition_id = await define(client, operator, tasks, sync)
        execution = await start(client, operator, definition_id)
        wid = workflow_id(settings.workflow_id_prefix, definition_id, str(execution["id"]))

        # Every layer done while the gate waits: by then the history has been handed over.
        waiting = await wait_for(
            client,
            operator,
            execution["id"],
            lambda b: sum(t["status"] == "COMPLETED" for t in b["taskExecutions"]) >= WIDTH * LAYERS + 1,
            timeout=120,
        )
        assert task(waiting, "gate")["status"] == "WAITING"
        assert len(await runs_of(temporal_env, wid)) >= 2, "the history was handed over while the gate waited"
        assert (
            await temporal_env.client.get_workflow_handle(wid).describe()
        ).raw_description.workflow_execution_info.history_length < 500 + 200

        # The decision reaches the current run (the API addresses the workflow id, not a run).
        response = await client.post(
            f"/api/tasks/{task(waiting, 'gate')['id']}/complete", json={"output": "go"}, headers=operator
        )
        assert response.status_code == 200, response.text
        final = await finished(client, operator, execution["id"], timeout=60)

        assert final["status"] == "COMPLETED", final.get("error")
        assert len(final["taskExecutions"]) == len(tasks)
        assert all(t["status"] == "COMPLETED" and t["attempts"] == 1 for t in final["taskExecutions"])
        data = final["context"]["data"]
        assert data["gate-result"] == "go" and data["nap-result"] == {"sleptSeconds": 8}
        assert all(data[f"{t['id']}-result"] == "success" for t in tasks if t["id"] not in ("gate", "nap"))
        nap = task(final, "nap")
        slept = dt.datetime.fromisoformat(nap["endTime"]) - dt.datetime.fromisoformat(nap["startTime"])
        assert slept >= dt.timedelta(seconds=8), "a carried sleep waits out its remaining time only"

        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        assert progress["completedTasks"] == progress["totalTasks"] == len(tasks)
        assert all(m["achievedAt"] for m in progress["milestones"]), progress["milestones"]
        assert progress["blockers"] and all(b["resolvedAt"] for b in progress["blockers"])

        # One event log across the runs: contiguous, started and finished once, each task once.
        log = await event_log(settings, execution["id"])
        assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
        kinds = [kind for _, kind, _ in log]
        assert (
            kinds.count("workflow.execution.started") == 1
            and kinds.count("workflow.execution.completed") == 1
        )
        assert kinds.count("task.execution.completed") == len(tasks)
        assert kinds.count("task.execution.started") == len(tasks) - 2
        assert kinds.count("task.execution.waiting") == 2
        assert kinds.count("synchronization.point.reached") == 1

        runs = await runs_of(temporal_env, wid)
        assert len(runs) >= 2
        assert [r.status for r in runs[:-1]] == [WorkflowExecutionStatus.CONTINUED_AS_NEW] * (len(runs) - 1)
        assert runs[-1].status == WorkflowExecutionStatus.COMPLETED
        for run in runs:
            history = await temporal_env.client.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
            assert len(history.events) < 500 + 200, "each run hands over soon after the threshold"


def test_packed_tasks_round_trip():
    specs = [
        TaskSpec("a", "A"),
        TaskSpec(
            "b",
            "B",
            "http",
            ["a"],
            {"url": "https://example.com"},
            3.5,
            RetrySpec(5, 0.5, 1.5, 20.0, ["Boom"]),
            "q",
            {"cpu": 2},
        ),
    ]
    assert unpack_tasks(pack_tasks(specs)) == specs


def test_a_big_definition_packs_to_a_fraction():
    specs = [
        TaskSpec(f"task-{i}", f"Task {i}", dependencies=[f"task-{i - 1}"] if i else []) for i in range(10_000)
    ]
    assert len(pack_tasks(specs)) < 1_000_000


def test_carried_state_round_trips_packed():
    now = dt.datetime.now(dt.UTC)
    tasks = [
        TaskCarryOver(
            "a", "COMPLETED", 2, now, now, None, {"worker": "w", "queue": "q", "requirements": None}
        ),
        TaskCarryOver("b", "WAITING", 1, now),
        TaskCarryOver("c", "FAILED", 3, now, now, "boom"),
    ]
    context = {"a-result": {"n": 1}, "seed": [1, 2]}
    assert unpack_carry(pack_carry(tasks, context)) == (tasks, context)
    packed = ResumeState(
        tasks=[], context={}, context_version=3, last_seq=9, started_at=now, packed=pack_carry(tasks, context)
    )
    assert packed.carried() == (tasks, context)
