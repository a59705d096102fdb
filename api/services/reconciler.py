"""Reconciliation: the read model made true again where Temporal ended a run without its last publish.

The workflow's publishing keeps the read model fresh; the reconciler keeps it true. For every
execution the read model shows RUNNING it asks Temporal about the workflow's latest run, and
repairs only what is certain: a run that closed (or that Temporal does not have) at least the
grace period ago while the read model still shows it running. A repair is a batch of events
appended after the last one applied, written by the read model's own writer in one transaction
under the execution's row lock, so subscribers and webhooks see it like any other event, and
nothing the workflow published is lost or reordered.

`assess` and `plan_repair` are the rules: pure functions from the read model's view and
Temporal's view to a verdict and to events. `Reconciler` is the shell that reads both views
and applies the events; `ensure_schedule` keeps the Temporal Schedule that runs it durably.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHistoryEventFilterType,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.db import utcnow
from api.models.executions import (
    BlockerRow,
    ExecutionRow,
    ExecutionStatus,
    MilestoneRow,
    TaskExecutionRow,
    TaskStatus,
)
from api.models.reconciler import LAST_PASS_ID, ReconcilerPassRow
from api.services.executions import ExecutionDetail, ExecutionService, temporal_errors
from api.services.readmodel import apply_batch, lock_execution
from api.settings import Settings
from workflows.constants import RECONCILER_WORKFLOW, reconciler_schedule_id
from workflows.inputs import Event, EventBatch
from workflows.reconciler import ReconcileInput

log = logging.getLogger(__name__)

#: A describe per execution; the close event and the state query only for a repair.
RPC_TIMEOUT = timedelta(seconds=10)
#: A closed run's query is answered by a worker replaying its history: bounded, and optional.
QUERY_TIMEOUT = timedelta(seconds=5)
#: Executions a pass loads at a time, and how many describes it has in flight.
BATCH_SIZE = 200
CONCURRENCY = 8
#: The blocker a repair opens; its description says what Temporal reported.
RECONCILED_KIND = "reconciled"

_TEMPORAL_DOWN = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}


# --- the rules: views in, verdicts and events out (no I/O, no clock but `now`) --------------------


class RunStatus(StrEnum):
    """Temporal's status of a workflow's latest run; NOT_FOUND: Temporal has no run of it."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    TIMED_OUT = "TIMED_OUT"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"
    NOT_FOUND = "NOT_FOUND"


CLOSED_RUNS = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TERMINATED, RunStatus.TIMED_OUT}
)
UNFINISHED_TASKS = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.WAITING})
FINISHED_TASKS = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class RunView:
    """What Temporal says of an execution's workflow: its latest run."""

    status: RunStatus
    run_id: str | None = None
    close_time: datetime | None = None
    #: The close event's termination reason or failure message, when it has one.
    reason: str | None = None
    #: The failure's application error type (the interpreter fails a run with ExecutionFailed).
    failure_type: str | None = None
    #: Who terminated the run.
    identity: str | None = None
    #: The closed run's `state` query (InterpreterWorkflow.state), when a worker answered it.
    state: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TaskView:
    task_id: str
    name: str
    type: str
    status: str
    start_time: datetime | None = None
    attempts: int = 0
    error: str | None = None
    resources: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BlockerView:
    key: str
    kind: str
    description: str
    task_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """The read model's view of an execution, as far as the rules need it."""

    execution_id: str
    workflow_id: str
    status: str
    start_time: datetime
    updated_at: datetime
    last_seq: int
    run_id: str | None = None
    context_version: int = 1
    completed_tasks: int = 0
    total_tasks: int = 0
    tasks: tuple[TaskView, ...] = ()
    #: Blockers not resolved yet.
    open_blockers: tuple[BlockerView, ...] = ()
    #: The completion milestone exists and is not achieved yet.
    completion_pending: bool = False


class Verdict(StrEnum):
    FINISHED = "finished"  # the read model shows it finished: nothing to compare
    LIVE = "live"  # its run goes on (or is handing over): the workflow keeps publishing
    PENDING = "pending"  # it diverges, but not for the grace period yet: a later pass looks again
    REPAIR = "repair"


def assess(execution: ExecutionView, run: RunView, now: datetime, grace_seconds: float) -> Verdict:
    """Whether the read model certainly differs from Temporal, and for long enough to repair."""
    if execution.status != ExecutionStatus.RUNNING:
        return Verdict.FINISHED
    if run.status not in CLOSED_RUNS and run.status is not RunStatus.NOT_FOUND:
        return Verdict.LIVE
    # A start may still be on its way to Temporal, a run's last publish on its way to the
    # database: only a divergence older than the grace period is certain.
    since = run.close_time if run.status in CLOSED_RUNS and run.close_time else execution.updated_at
    return Verdict.REPAIR if (now - since).total_seconds() >= grace_seconds else Verdict.PENDING


def plan_repair(execution: ExecutionView, run: RunView, now: datetime) -> list[Event]:
    """The events that bring the read model to Temporal's truth, numbered after the last one applied.

    Every task the read model shows unfinished gets its end state (the closed run's own, when its
    state query answered; else what the run's end implies), a `reconciled` blocker says what
    Temporal reported, and the execution ends as Temporal ended it.
    """
    if run.status not in CLOSED_RUNS and run.status is not RunStatus.NOT_FOUND:
        raise ValueError(f"nothing to repair while the run is {run.status}")
    numbers = itertools.count(execution.last_seq + 1)
    events: list[Event] = []

    def emit(kind: str, data: dict[str, Any]) -> None:
        events.append(Event(seq=next(numbers), type=kind, at=now, data={**data, "reconciled": True}))

    ended = run.close_time or now
    status, error = execution_outcome(run)
    queried = _queried_tasks(run.state)
    open_blockers = {b.key: b for b in execution.open_blockers}
    newly_completed = 0
    ended_tasks: list[str] = []
    for task in execution.tasks:
        if task.status not in UNFINISHED_TASKS:
            continue
        data = _task_end(task, queried.get(task.task_id), run, ended)
        final = str(data["status"])
        emit(f"task.execution.{final.lower()}", data)
        ended_tasks.append(f"{task.task_id} {final}")
        # What the workflow resolves when a task ends, it would have resolved here too.
        for key in (f"approval:{task.task_id}", f"no-workers:{task.task_id}"):
            blocker = open_blockers.pop(key, None)
            if blocker is not None:
                emit("blocker.resolved", {**_blocker_snapshot(blocker), "resolvedAt": data["endTime"]})
        failed_key = f"task-failed:{task.task_id}"
        if final == TaskStatus.FAILED and failed_key not in open_blockers:
            # The blocker a failed task has; retrying the task (a reopen) resolves it.
            emit(
                "blocker.detected",
                {
                    "key": failed_key,
                    "kind": "task_failed",
                    "description": f"Task {task.task_id} failed: {data['error']}",
                    "taskId": task.task_id,
                    "createdAt": data["endTime"],
                    "resolvedAt": None,
                },
            )
        newly_completed += final == TaskStatus.COMPLETED
    completed = (
        execution.total_tasks
        if status == ExecutionStatus.COMPLETED
        else execution.completed_tasks + newly_completed
    )
    if completed != execution.completed_tasks:
        emit("progress.updated", {"completedTasks": completed, "totalTasks": execution.total_tasks})
    if status == ExecutionStatus.COMPLETED and execution.completion_pending:
        emit(
            "milestone.achieved",
            {
                "key": "completion",
                "name": "Completion",
                "description": "All tasks completed",
                "achievedAt": _iso(ended),
            },
        )
    emit(
        "blocker.detected",
        {
            "key": f"{RECONCILED_KIND}:{run.run_id or 'not-found'}",
            "kind": RECONCILED_KIND,
            "description": _reconciled_description(execution, run, status, ended_tasks),
            "taskId": None,
            "createdAt": _iso(now),
            "resolvedAt": None,
        },
    )
    emit(
        f"workflow.execution.{status.lower()}",
        {
            "status": status.value,
            "startTime": _iso(execution.start_time),
            "endTime": _iso(ended),
            "error": error,
            "contextVersion": execution.context_version,
        },
    )
    return events


def execution_outcome(run: RunView) -> tuple[ExecutionStatus, str | None]:
    """How the execution ended, as the API shows it, for a run that ended (or was never there)."""
    if run.status is RunStatus.COMPLETED:
        return ExecutionStatus.COMPLETED, None
    if run.status is RunStatus.CANCELED:
        return ExecutionStatus.CANCELLED, None
    if run.status is RunStatus.FAILED:
        if run.failure_type == "ExecutionFailed" and run.reason:
            return ExecutionStatus.FAILED, run.reason  # the interpreter's own summary ("task b failed")
        return (
            ExecutionStatus.FAILED,
            f"the workflow run failed in Temporal: {run.reason or 'no failure message'}",
        )
    if run.status is RunStatus.TERMINATED:
        by = f" by {run.identity}" if run.identity else ""
        return (
            ExecutionStatus.FAILED,
            f"the workflow run was terminated in Temporal{by}: {run.reason or 'no reason given'}",
        )
    if run.status is RunStatus.TIMED_OUT:
        return ExecutionStatus.FAILED, "the workflow run timed out in Temporal (its execution timeout passed)"
    return (
        ExecutionStatus.FAILED,
        "Temporal has no run of this execution: its start never reached Temporal, or retention removed the run",
    )


def _task_end(
    task: TaskView, queried: dict[str, Any] | None, run: RunView, ended: datetime
) -> dict[str, Any]:
    """The end state of a task the read model shows unfinished, as task event data."""
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "startTime": _iso(task.start_time),
        "endTime": _iso(ended),
        "attempts": task.attempts,
        "error": None,
        "resources": task.resources,
        "name": task.name,
        "type": task.type,
    }
    if queried is not None and queried.get("status") in FINISHED_TASKS:
        # The closed run knew how the task ended; only its publish was lost.
        return {
            **data,
            "status": queried["status"],
            "startTime": queried.get("startTime") or data["startTime"],
            "endTime": queried.get("endTime") or data["endTime"],
            "attempts": queried.get("attempts", task.attempts),
            "error": queried.get("error"),
            "resources": queried.get("resources", task.resources),
        }
    if run.status is RunStatus.COMPLETED:
        return {**data, "status": TaskStatus.COMPLETED.value}  # a run completes only once every task has
    if run.status is RunStatus.CANCELED or task.status == TaskStatus.PENDING:
        # Never ran in this run: CANCELLED, so that a reopen runs it again.
        return {**data, "status": TaskStatus.CANCELLED.value}
    _, error = execution_outcome(run)
    return {
        **data,
        "status": TaskStatus.FAILED.value,
        "error": f"{error} (the task was {task.status}); retry it to run it again",
    }


def _queried_tasks(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    tasks = state.get("tasks") if isinstance(state, dict) else None
    if not isinstance(tasks, list):
        return {}
    return {t["taskId"]: t for t in tasks if isinstance(t, dict) and isinstance(t.get("taskId"), str)}


def _reconciled_description(
    execution: ExecutionView, run: RunView, status: ExecutionStatus, ended_tasks: list[str]
) -> str:
    if run.status is RunStatus.NOT_FOUND:
        seen = f"Temporal has no workflow {execution.workflow_id} (not found)"
    else:
        at = f" at {_iso(run.close_time)}" if run.close_time else ""
        seen = f"Temporal reports workflow {execution.workflow_id} run {run.run_id} {run.status}{at}"
        if run.status is RunStatus.TERMINATED:
            seen += f" (terminated{' by ' + run.identity if run.identity else ''}: {run.reason or 'no reason given'})"
        elif run.reason:
            seen += f" ({run.reason})"
    tasks = f"; tasks ended: {', '.join(ended_tasks)}" if ended_tasks else ""
    return f"{seen} while the read model showed the execution RUNNING; the reconciler repaired it: {status}{tasks}."


def _blocker_snapshot(blocker: BlockerView) -> dict[str, Any]:
    return {
        "key": blocker.key,
        "kind": blocker.kind,
        "description": blocker.description,
        "taskId": blocker.task_id,
        "createdAt": _iso(blocker.created_at),
    }


def _iso(value: datetime | str | None) -> str | None:
    """Times in event data as the workflow's events carry them: ISO text."""
    return value.isoformat() if isinstance(value, datetime) else value


# --- the shell: the views from the database and Temporal, the repair through the writer ----------


class Outcome(StrEnum):
    FINISHED = "finished"
    LIVE = "live"
    PENDING = "pending"
    REPAIRED = "repaired"
    #: The read model moved on between the look and the repair (the workflow published, a retry
    #: reopened it): nothing was written, the next look decides again.
    MOVED = "moved"
    #: Temporal gave no usable answer.
    UNCHECKED = "unchecked"


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What reconciling one execution found and did."""

    outcome: Outcome
    run: RunView | None = None
    #: Events the repair appended.
    appended: int = 0


@dataclass(frozen=True, slots=True)
class Reconciled:
    """An on-demand reconciliation and the execution after it."""

    reconciliation: Reconciliation
    detail: ExecutionDetail


@dataclass
class PassReport:
    examined: int = 0
    repaired: int = 0
    #: Diverging from Temporal and not repaired yet: within the grace period, or the repair failed.
    backlog: int = 0
    unchecked: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, reconciliation: Reconciliation) -> None:
        outcome = reconciliation.outcome
        self.examined += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.repaired += outcome is Outcome.REPAIRED
        self.backlog += outcome is Outcome.PENDING
        self.unchecked += outcome is Outcome.UNCHECKED


class Reconciler:
    """Compares executions the read model shows unfinished with Temporal and repairs what certainly differs."""

    def __init__(self, session: AsyncSession, settings: Settings, temporal: Client) -> None:
        self.session = session
        self.settings = settings
        self.temporal = temporal
        self.grace = settings.reconcile_grace_seconds

    async def reconcile(self, execution_id: str) -> Reconciled:
        """One execution, now: what was found and repaired, and the execution as it is after that."""
        executions = ExecutionService(self.session, self.settings, self.temporal)
        row = (await executions.get(execution_id)).row
        target = _view_of(row)
        await self.session.rollback()  # no transaction held while Temporal answers
        if target.status != ExecutionStatus.RUNNING:
            return Reconciled(Reconciliation(Outcome.FINISHED), await executions.get(execution_id))
        async with temporal_errors("ask Temporal about the execution"):
            run = await self._observe(target.workflow_id)
            reconciliation = await self._settle(target, run)
        self.session.expire_all()
        return Reconciled(reconciliation, await executions.get(execution_id))

    async def run_pass(self, heartbeat: Callable[[], None] | None = None) -> PassReport:
        """Every execution the read model shows unfinished, compared and repaired; the outcome is
        kept for /readyz."""
        started = utcnow()
        # Executions busy publishing cost no Temporal call: one written to within the grace period
        # cannot be repaired yet anyway, and a later pass (an interval on) looks at it once quiet.
        quiet_since = started - timedelta(seconds=min(self.grace, self.settings.reconcile_interval_seconds))
        report = PassReport()
        limit = asyncio.Semaphore(CONCURRENCY)
        after = 0
        while True:
            targets = await self._unfinished(after, quiet_since)
            await self.session.rollback()
            if not targets:
                break
            after = int(targets[-1].execution_id)

            async def observe(target: ExecutionView) -> RunView | None:
                async with limit:
                    try:
                        return await self._observe(target.workflow_id)
                    except RPCError as exc:
                        if exc.status in _TEMPORAL_DOWN:
                            raise
                        log.warning(
                            "execution %s: Temporal did not describe %s: %s",
                            target.execution_id,
                            target.workflow_id,
                            exc,
                        )
                        return None

            answers = await asyncio.gather(*(observe(t) for t in targets), return_exceptions=True)
            failure = next((a for a in answers if isinstance(a, BaseException)), None)
            if failure is not None:
                raise failure  # Temporal is unreachable: the pass fails (and is retried), its outcome unrecorded
            runs = [a for a in answers if not isinstance(a, BaseException)]
            for target, run in zip(targets, runs, strict=True):
                if run is None:
                    report.count(Reconciliation(Outcome.UNCHECKED))
                    continue
                try:
                    report.count(await self._settle(target, run))
                except (SQLAlchemyError, RPCError) as exc:
                    # The next execution may fare better; this one stays in the backlog.
                    log.error(
                        "execution %s: the repair failed: %s: %s",
                        target.execution_id,
                        type(exc).__name__,
                        exc,
                    )
                    await self.session.rollback()
                    report.count(Reconciliation(Outcome.PENDING, run))
                if heartbeat is not None:
                    heartbeat()
        await self._record(started, report)
        if report.repaired or report.backlog or report.unchecked:
            log.info(
                "reconciliation pass: %d examined, %d repaired, %d in the backlog, %d unchecked",
                report.examined,
                report.repaired,
                report.backlog,
                report.unchecked,
            )
        return report

    async def _settle(self, target: ExecutionView, run: RunView) -> Reconciliation:
        verdict = assess(target, run, utcnow(), self.grace)
        if verdict is not Verdict.REPAIR:
            return Reconciliation(Outcome(verdict.value), run)
        if run.status in CLOSED_RUNS:
            run = await self._closing(target.workflow_id, run)
        appended = await self._repair(target, run)
        if appended is None:
            return Reconciliation(Outcome.MOVED, run)
        return Reconciliation(Outcome.REPAIRED, run, appended)

    async def _repair(self, target: ExecutionView, run: RunView) -> int | None:
        """Append the repair in one transaction, if the read model is still what the look was based on."""
        session = self.session
        row = await lock_execution(session, int(target.execution_id))
        if (
            row is None
            or row.status != ExecutionStatus.RUNNING
            or row.last_seq != target.last_seq
            or row.run_id != target.run_id
        ):
            await session.rollback()
            return None
        view = await self._full_view(row)
        events = plan_repair(view, run, utcnow())
        # The writer applies them in this transaction (the row lock held) and commits; the rows
        # loaded here are expired after it, so only the view is used from now on.
        applied = await apply_batch(
            session, EventBatch(view.execution_id, view.workflow_id, run.run_id or "", events)
        )
        log.warning(
            "execution %s: Temporal reports %s %s while the read model showed it RUNNING; appended %d repair events",
            view.execution_id,
            view.workflow_id,
            run.status,
            applied,
        )
        return applied

    # --- the read model -------------------------------------------------------------------

    async def _unfinished(self, after: int, quiet_since: datetime) -> list[ExecutionView]:
        rows = await self.session.exec(
            select(ExecutionRow)
            .where(
                col(ExecutionRow.status) == ExecutionStatus.RUNNING.value,
                col(ExecutionRow.id) > after,
                col(ExecutionRow.updated_at) <= quiet_since,
            )
            .order_by(col(ExecutionRow.id))
            .limit(BATCH_SIZE)
        )
        return [_view_of(row) for row in rows]

    async def _full_view(self, row: ExecutionRow) -> ExecutionView:
        """The execution with its tasks, open blockers and completion milestone (under the row lock)."""
        tasks = await self.session.exec(
            select(TaskExecutionRow)
            .where(TaskExecutionRow.execution_id == row.id)
            .order_by(col(TaskExecutionRow.id))
        )
        blockers = await self.session.exec(
            select(BlockerRow)
            .where(BlockerRow.execution_id == row.id, col(BlockerRow.resolved_at).is_(None))
            .order_by(col(BlockerRow.id))
        )
        task_rows, blocker_rows = list(tasks), list(blockers)
        task_ids = {t.id: t.task_definition_id for t in task_rows}
        completion = (
            await self.session.exec(
                select(MilestoneRow).where(
                    MilestoneRow.execution_id == row.id, MilestoneRow.key == "completion"
                )
            )
        ).first()
        return dataclasses.replace(
            _view_of(row),
            tasks=tuple(
                TaskView(
                    t.task_definition_id,
                    t.name,
                    t.type,
                    t.status,
                    t.start_time,
                    t.attempts,
                    t.error,
                    t.resources,
                )
                for t in task_rows
            ),
            open_blockers=tuple(
                BlockerView(b.key, b.kind, b.description, task_ids.get(b.task_execution_id), b.created_at)
                for b in blocker_rows
            ),
            completion_pending=completion is not None and completion.achieved_at is None,
        )

    async def _record(self, started: datetime, report: PassReport) -> None:
        values: dict[str, Any] = {
            "started_at": started,
            "finished_at": utcnow(),
            "examined": report.examined,
            "repaired": report.repaired,
            "backlog": report.backlog,
            "unchecked": report.unchecked,
        }
        for _ in range(2):  # two passes recording at once: the second one updates
            try:
                await self.session.merge(ReconcilerPassRow(id=LAST_PASS_ID, **values))
                await self.session.commit()
                return
            except IntegrityError:
                await self.session.rollback()

    # --- Temporal -------------------------------------------------------------------------

    async def _observe(self, workflow_id: str) -> RunView:
        """The latest run of the workflow id (a continued or reopened execution has several)."""
        handle = self.temporal.get_workflow_handle(workflow_id)
        try:
            description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return RunView(RunStatus.NOT_FOUND)
            raise
        status = RunStatus(description.status.name) if description.status is not None else RunStatus.RUNNING
        return RunView(status, description.run_id, description.close_time)

    async def _closing(self, workflow_id: str, run: RunView) -> RunView:
        """The closed run's reason (its close event) and exact task states (its state query), where Temporal has them."""
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run.run_id)
        reason = failure_type = identity = None
        try:
            if run.status in (RunStatus.FAILED, RunStatus.TERMINATED):  # the others' close events say no more
                async for event in handle.fetch_history_events(
                    event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=RPC_TIMEOUT
                ):
                    reason, failure_type, identity = _close_details(event)
        except RPCError as exc:
            log.info("%s: no close event (%s); the status alone says how it ended", workflow_id, exc)
        state: dict[str, Any] | None = None
        try:
            answer = await handle.query("state", rpc_timeout=QUERY_TIMEOUT)
            state = answer if isinstance(answer, dict) else None
        except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
            log.info(
                "%s: no worker answered the state query (%s); repairing from the describe alone",
                workflow_id,
                exc,
            )
        return dataclasses.replace(
            run, reason=reason, failure_type=failure_type, identity=identity, state=state
        )


def _view_of(row: ExecutionRow) -> ExecutionView:
    return ExecutionView(
        execution_id=str(row.id),
        workflow_id=row.workflow_id,
        status=row.status,
        start_time=row.start_time,
        updated_at=row.updated_at,
        last_seq=row.last_seq,
        run_id=row.run_id,
        context_version=row.context_version,
        completed_tasks=row.completed_tasks,
        total_tasks=row.total_tasks,
    )


def _close_details(event: HistoryEvent) -> tuple[str | None, str | None, str | None]:
    """(reason or failure message, failure type, who) of a run's close event."""
    if event.HasField("workflow_execution_terminated_event_attributes"):
        terminated = event.workflow_execution_terminated_event_attributes
        return terminated.reason or None, None, terminated.identity or None
    if event.HasField("workflow_execution_failed_event_attributes"):
        failure = event.workflow_execution_failed_event_attributes.failure
        kind = failure.application_failure_info.type if failure.HasField("application_failure_info") else ""
        return failure.message or None, kind or None, None
    return None, None, None


async def last_pass(session: AsyncSession) -> ReconcilerPassRow | None:
    """The outcome of the latest pass (one primary-key read: /readyz asks on every probe)."""
    return await session.get(ReconcilerPassRow, LAST_PASS_ID)


# --- the schedule -----------------------------------------------------------------------------


async def ensure_schedule(client: Client, settings: Settings) -> None:
    """Create the reconciler's Temporal Schedule, or bring it up to date; an operator's pause stays."""
    schedule_id = reconciler_schedule_id(settings.workflow_id_prefix)
    wanted = Schedule(
        action=ScheduleActionStartWorkflow(
            RECONCILER_WORKFLOW, ReconcileInput(), id=schedule_id, task_queue=settings.system_task_queue
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))]
        ),
        # One pass at a time: a tick while a pass still runs is skipped, not queued.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            note="Reconciles the read model with Temporal; system workers keep this schedule up to date."
        ),
    )
    try:
        await client.create_schedule(schedule_id, wanted, rpc_timeout=RPC_TIMEOUT)
        log.info(
            "created the reconciler's schedule %s (every %ss)",
            schedule_id,
            settings.reconcile_interval_seconds,
        )
        return
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=current.description.schedule.state))

    await client.get_schedule_handle(schedule_id).update(update, rpc_timeout=RPC_TIMEOUT)
    log.info(
        "updated the reconciler's schedule %s (every %ss)", schedule_id, settings.reconcile_interval_seconds
    )
