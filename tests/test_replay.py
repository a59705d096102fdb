"""Replay recorded interpreter histories (tests/histories/*.json) against today's workflow code, so a
change that would break running executions fails CI. The histories come from real runs of each
path (tests/record_histories.py says how to record them again, and when that is the right fix).

Two generations: runs whose events the worker's read model runner writes (tests/histories/), and
runs started before it, which publish with a local activity per workflow task and must go on
replaying until none is left (tests/histories/local-activity/).

The replayer runs the workflow as the worker does (default sandbox); the last tests prove that
it would notice: modified copies of the interpreter must fail with a nondeterminism error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.constants import INTERPRETER_WORKFLOW, PUBLISH_ACTIVITY
from workflows.inputs import InterpreterInput, InterpreterResult
from workflows.interpreter import InterpreterWorkflow

HISTORIES = Path(__file__).parent / "histories"
#: Recorded before the read model runner: every workflow task publishes with a local activity.
LOCAL_ACTIVITY = "local-activity"
ERAS = ["", LOCAL_ACTIVITY]

#: Every recorded run and how it ended: a missing file fails, so does a truncated one.
EXPECTED = {
    "chain": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "fan_out_fan_in": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "sync_point": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "retry_in_place": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "reopen_failed_run": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    "reopen_second_run": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "cancel": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    "approval": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "sync_point_missed": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    "continue_as_new_first_run": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    "continue_as_new_last_run": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
}


def load(name: str, era: str = "") -> WorkflowHistory:
    """A recorded history, under the workflow id it ran with."""
    text = (HISTORIES / era / f"{name}.json").read_text()
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started.get("workflowId", name), text)


def event_types(history: WorkflowHistory) -> list[Any]:
    return [event.event_type for event in history.events]


def local_activities(history: WorkflowHistory) -> list[str]:
    """The activity type of every local activity marker in the history."""
    types = []
    for event in history.events:
        if event.HasField("marker_recorded_event_attributes"):
            data = event.marker_recorded_event_attributes.details["data"].payloads[0].data
            types.append(json.loads(data)["activity_type"])
    return types


class TestRecordedHistories:
    @pytest.mark.parametrize("era", ERAS)
    def test_every_scenario_is_recorded(self, era: str) -> None:
        assert sorted(p.stem for p in (HISTORIES / era).glob("*.json")) == sorted(EXPECTED)

    @pytest.mark.parametrize("era", ERAS)
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_history_is_a_whole_run(self, name: str, era: str) -> None:
        history = load(name, era)
        types = event_types(history)
        assert types[0] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        assert types[-1] == EXPECTED[name]
        assert (
            history.events[0].workflow_execution_started_event_attributes.workflow_type.name
            == INTERPRETER_WORKFLOW
        )

    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_runner_runs_publish_without_local_activities(self, name: str) -> None:
        """The new generation has no publishing marker (the runner writes the read model) and at most
        one inspection timer a run, however many hops; the old one a marker per workflow task."""
        assert PUBLISH_ACTIVITY not in local_activities(load(name))
        assert PUBLISH_ACTIVITY in local_activities(load(name, LOCAL_ACTIVITY))
        if name in ("chain", "fan_out_fan_in", "approval", "reopen_second_run"):
            assert event_types(load(name)).count(EventType.EVENT_TYPE_TIMER_STARTED) <= 1

    def test_paths_are_covered(self) -> None:
        """The histories hold what they are meant to: updates, a reopened run, cancellation, timers."""
        updates = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        assert event_types(load("retry_in_place")).count(updates) == 2  # retry_task, complete_task
        assert updates in event_types(load("approval"))
        second = load("reopen_second_run").events[0].workflow_execution_started_event_attributes
        first = load("reopen_failed_run").events[0].workflow_execution_started_event_attributes
        # A new run of the same workflow id.
        assert second.original_execution_run_id != first.original_execution_run_id
        assert load("reopen_second_run").workflow_id == load("reopen_failed_run").workflow_id
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in event_types(load("cancel"))
        assert EventType.EVENT_TYPE_TIMER_FIRED in event_types(load("sync_point"))
        assert EventType.EVENT_TYPE_TIMER_FIRED in event_types(load("sync_point_missed"))
        # A continued run: started by the first one's continue-as-new, carrying the waiting approval.
        last = load("continue_as_new_last_run").events[0].workflow_execution_started_event_attributes
        assert last.continued_execution_run_id
        assert updates in event_types(load("continue_as_new_last_run"))
        assert EventType.EVENT_TYPE_TIMER_STARTED in event_types(load("continue_as_new_first_run"))


class TestReplay:
    @pytest.mark.parametrize("era", ERAS)
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    async def test_history_replays(self, name: str, era: str) -> None:
        result = await Replayer(workflows=[InterpreterWorkflow]).replay_workflow(load(name, era))
        assert result.replay_failure is None


# --- the replay test is not vacuous: incompatible copies of the interpreter fail ---------------


@workflow.defn(name=INTERPRETER_WORKFLOW)
class ReversedStartOrder(InterpreterWorkflow):
    """Starts ready tasks in reverse definition order: other activities at the same command positions."""

    def _advance(self) -> None:
        order = self.dag.order
        self.dag.order = {task_id: -position for task_id, position in order.items()}
        try:
            super()._advance()
        finally:
            self.dag.order = order

    @workflow.run
    async def run(self, input: InterpreterInput) -> InterpreterResult:
        return await super().run(input)


@workflow.defn(name=INTERPRETER_WORKFLOW)
class TimerFirst(InterpreterWorkflow):
    """Sleeps a second before anything else: a timer where the history has the first publish."""

    @workflow.run
    async def run(self, input: InterpreterInput) -> InterpreterResult:
        await workflow.sleep(1)
        return await super().run(input)


class TestReplayNoticesIncompatibleChanges:
    @pytest.mark.parametrize("era", ERAS)
    @pytest.mark.parametrize(
        ("changed", "name"),
        [(ReversedStartOrder, "fan_out_fan_in"), (TimerFirst, "chain"), (TimerFirst, "approval")],
        ids=["reversed-start-order/fan_out_fan_in", "timer-first/chain", "timer-first/approval"],
    )
    async def test_modified_workflow_fails_replay(self, changed: type, name: str, era: str) -> None:
        with pytest.raises(workflow.NondeterminismError):
            await Replayer(workflows=[changed]).replay_workflow(load(name, era))

    async def test_order_change_is_harmless_where_nothing_runs_in_parallel(self) -> None:
        """The same reversed order replays a chain: the check is about what a history contains."""
        await Replayer(workflows=[ReversedStartOrder]).replay_workflow(load("chain"))
