"""The interpreter: one generic workflow that runs the DAG of any workflow definition.

Every task becomes an activity (its type names the activity) scheduled as soon as its
dependencies are done; `sleep` and `approval` tasks are handled here (a durable timer, an
Update). Synchronization points are barriers with an optional deadline. Every state change
is an event with a per-execution sequence number. The events of one activation are written to
the read model by the worker's runner before the activation's commands leave for Temporal
(workflows/publishing.py); runs begun before that change publish them with a local activity per
workflow task instead, as their histories record.

Deterministic: time, randomness and I/O only through Temporal's APIs.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    # Imported by its full name: `from workflows import publishing` would load it inside the
    # sandbox, from the sandbox's own `workflows` package, instead of passing it through.
    import workflows.publishing as publishing  # noqa: PLR0402
    from activities.templating import references
    from workflows.constants import (
        INSPECT_ACTIVITY,
        INTERPRETER_WORKFLOW,
        MISSING_CODE_ERRORS,
        PUBLISH_ACTIVITY,
        UNKNOWN_FUNCTION,
        activity_id,
    )
    from workflows.dag import STARTED, DagMachine
    from workflows.inputs import (
        PUBLISH_BY_RUNNER,
        Event,
        EventBatch,
        InspectRequest,
        InspectResult,
        InterpreterInput,
        InterpreterResult,
        ResumeState,
        SyncPointSpec,
        TaskCarryOver,
        TaskInput,
        TaskInspection,
        TaskOutcome,
        TaskSpec,
        pack_carry,
    )
    from workflows.records import (
        CANCELLED,
        COMPLETED,
        FAILED,
        PENDING,
        RUNNING,
        WAITING,
        Blocker,
        Inspection,
        TaskDecision,
        TaskState,
    )

#: Task types the workflow runs itself; every other type is an activity of that name.
SLEEP, APPROVAL = "sleep", "approval"
#: Built-in types that use the context only through `${...}` references in their input: they are
#: sent just the context keys they reference, which keeps wide DAGs' histories small. Python
#: functions and custom types get the whole context.
CONTEXT_BY_REFERENCE = frozenset({"noop", "http"})
#: A worker answers NotFoundError for an activity type it does not have: never worth retrying.
UNKNOWN_TYPE_ERROR = "NotFoundError"

#: A failed task's attempts are the ones its last failure reports (before this patch only an
#: inspection or a completion counted them, so a task that failed after its retries said 1).
FAILED_ATTEMPTS_PATCH = "failed-task-attempts"

#: Publishing (runs without the patch) retries until the database answers; meanwhile the DAG waits.
PUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
PUBLISH_TIMEOUT = timedelta(seconds=10)
INSPECT_TIMEOUT = timedelta(seconds=10)
#: Longest gap between inspections of a long-running task.
INSPECT_MAX_INTERVAL = 300.0
#: A run hands over on Temporal's suggestion only once its history is at least this long, or
#: this large (Temporal suggests it early, from a few MB on).
HANDOVER_FLOOR_EVENTS = 2_000
HANDOVER_FLOOR_BYTES = 8 * 1024 * 1024
#: Bytes of task inputs one workflow task may schedule (Temporal takes at most 4 MB per
#: workflow-task completion): tasks beyond it start in the next workflow task.
SCHEDULE_BYTES_PER_ACTIVATION = 2 * 1024 * 1024
#: Largest continue-as-new input (Temporal refuses payloads over 2 MB).
MAX_HANDOVER_BYTES = 1_900_000


@workflow.defn(name=INTERPRETER_WORKFLOW)
class InterpreterWorkflow:
    """Runs one definition version's DAG. Updates: retry_task, complete_task, reject_task. Query: state.

    Cancel it with Temporal's cancellation (the API does; so can the Web UI): running tasks are
    cancelled and marked CANCELLED before the run closes as canceled.
    """

    @workflow.init
    def __init__(self, input: InterpreterInput) -> None:
        self.input = input
        specs = input.task_specs()
        self.tasks = {spec.id: TaskState(spec) for spec in specs}
        self.sync_points: dict[str, SyncPointSpec] = {p.id: p for p in input.sync_points}
        self.blockers: dict[str, Blocker] = {}
        self.context: dict[str, Any] = dict(input.context)
        self.context_version = 1
        self.references: dict[str, list[str]] = {}
        self.seq = 0
        self.flushed_seq = 0
        self.pending: list[Event] = []
        self.status = RUNNING
        self.failure: str | None = None
        self.changed = False
        self.started_at = workflow.now()
        self.timers: list[asyncio.Task[None]] = []
        self.inspections: dict[str, Inspection] = {}
        #: Events go to the worker's read model runner, not to a local activity per workflow task
        #: (runs started before the runner existed keep publishing as their histories say).
        self.through = input.publisher == PUBLISH_BY_RUNNER
        #: Task activities running (sleeps and approvals are not): what the inspection looks at.
        self.activities_running = 0
        #: The run has said its last word (finished, or handed over): nothing more is announced.
        self.closing = False
        #: Passes of the run loop so far: each applies what a workflow task brought.
        self.passes = 0
        #: A pass has run live (not replaying): the state holds the whole history. Until then an
        #: update's validator may judge a state behind it: a worker new to the run can get the last
        #: workflow tasks of the history in the same activation as the update (the SDK's core merges
        #: a workflow task without commands into the next one), and the validator runs before the
        #: workflow applies them. Such an update is judged again after the next pass (`_when_applied`).
        self.caught_up = False
        #: Synchronization point deadlines count from here: the start, or the reopening of a failed execution.
        self.deadline_base = self.started_at
        #: Task input bytes scheduled in the current activation, and when it began.
        self.scheduled_bytes = 0
        self.scheduled_at: float | None = None
        #: The DAG's rules (what may start, what a synchronization point still needs), apart from
        #: Temporal: a pure machine that this workflow tells what happened and asks what follows.
        self.dag = DagMachine(
            [(spec.id, spec.dependencies) for spec in specs],
            [(point.id, point.required_tasks) for point in input.sync_points],
        )
        self.running: dict[str, TaskState] = {}
        #: Marked as started, events not yet published, not running yet.
        self.starting: list[TaskState] = []
        #: The history grew long: nothing new starts; once running activities are done, the
        #: execution continues as a new run (continue-as-new).
        self.draining = False
        resume = input.resume
        if resume is not None:
            carried_tasks, carried_context = resume.carried()
            self.started_at = resume.started_at
            self.deadline_base = resume.deadline_base or resume.started_at
            self.context = dict(carried_context)
            self.context_version = resume.context_version
            self.seq = self.flushed_seq = resume.last_seq
            for carried in carried_tasks:
                task = self.tasks.get(carried.id)
                if task is None:
                    continue
                task.attempts = task.attempts_before = carried.attempts
                task.started_at, task.ended_at = carried.started_at, carried.ended_at
                task.resources = carried.resources
                if carried.status == COMPLETED or (
                    carried.status == FAILED and carried.id != resume.retry_task_id
                ):
                    task.status, task.error = carried.status, carried.error
                elif carried.status == WAITING and resume.continued:
                    task.status, task.carried = WAITING, True
                # Everything else (the retried task, tasks never run or cancelled) starts again.
            self.dag.restore(
                {
                    task.spec.id: STARTED if task.carried else task.status
                    for task in self.tasks.values()
                    if task.status in (COMPLETED, FAILED) or task.carried
                },
                resume.reached_sync_points,
            )
            for snapshot in resume.blockers:
                blocker = Blocker(
                    snapshot["key"],
                    snapshot["kind"],
                    snapshot["description"],
                    snapshot.get("taskId"),
                    _time(snapshot["createdAt"]),
                )
                self.blockers[blocker.key] = blocker
        self.dag.start_ready()
        #: The context's size as compact JSON, kept up to date as results are merged.
        self.context_bytes = _json_size(self.context)

    # --- the run ---------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: InterpreterInput) -> InterpreterResult:
        if not self.through:
            return await self._run_publishing_locally()
        if not publishing.available() and not workflow.unsafe.is_replaying():
            # A worker must be built by worker.py to run the interpreter: fail the workflow task
            # (Temporal retries it, on a worker that has the runner) rather than run unseen.
            raise publishing.NoPublisher(
                "this worker has no read model runner; start workers with wfo-worker"
            )
        # Not cancelled at the end: a timer left pending costs nothing when the run closes.
        self.inspector = asyncio.create_task(self._inspector())
        try:
            self._begin()
            while True:
                self._advance()
                # Scheduled in the activation that announced them: the runner writes the events
                # before the schedule commands leave, so the API never shows less than what runs.
                self._launch()
                if self._settled():
                    break
                if self._handover_due():
                    await self._continue_as_new()
                if self.dag.ready and not self.draining and self.failure is None:
                    # Some ready tasks did not fit into this workflow task: the next one starts them.
                    await workflow.sleep(timedelta(milliseconds=1))
                else:
                    await workflow.wait_condition(lambda: self.changed)
                self.changed = False
            return await self._finish()
        except asyncio.CancelledError:
            if self.status != RUNNING:
                raise  # finished already (its events are out); only the close was left
            await self._cancel_all("the execution was cancelled")
            self._emit("workflow.execution.cancelled", self._execution_snapshot(CANCELLED))
            self.status = CANCELLED
            self.closing = True
            raise

    async def _run_publishing_locally(self) -> InterpreterResult:
        """The loop of runs begun before the read model runner: a local activity publishes each
        workflow task's events before its tasks are scheduled, and the wait for a change re-arms the
        inspection timer. Kept as it was, so that those runs replay and finish unchanged."""
        try:
            self._begin()
            while True:
                self._advance()
                # Published before anything runs: while the database is down, the DAG waits.
                await self._flush()
                self._launch()
                if self._settled():
                    break
                if self._handover_due():
                    await self._continue_as_new()
                try:
                    await workflow.wait_condition(lambda: self.changed, timeout=self._next_inspection_in())
                except builtins.TimeoutError:
                    pass  # time to look at long-running tasks
                self.changed = False
                await self._inspect_if_due()
        except asyncio.CancelledError:
            await self._cancel_all("the execution was cancelled")
            self._emit("workflow.execution.cancelled", self._execution_snapshot(CANCELLED))
            self.status = CANCELLED
            await self._flush()
            raise
        return await self._finish()

    def _begin(self) -> None:
        if self.input.resume is not None and self.input.resume.continued:
            self._carry_on()
            return
        reopened = self.input.resume is not None
        milestones = [
            {"key": "initialization", "name": "Initialization", "description": "Workflow initialization"},
            *(
                {
                    "key": f"sync:{p.id}",
                    "name": p.name,
                    "description": p.description or f"Synchronization point {p.id}",
                }
                for p in self.input.sync_points
            ),
            {"key": "completion", "name": "Completion", "description": "All tasks completed"},
        ]
        self._emit(
            "workflow.execution.started",
            {
                **self._execution_snapshot(RUNNING),
                "reopened": reopened,
                "milestones": milestones,
                "totalTasks": len(self.tasks),
                "workflowId": workflow.info().workflow_id,
                "runId": workflow.info().run_id,
            },
        )
        if not reopened:
            self._milestone("initialization", "Initialization", "Workflow initialization", self.started_at)
        elif self.input.resume and self.input.resume.retry_task_id in self.tasks:
            # The failed run's blocker for this task ends here; the task waits to run again.
            retried = self.tasks[self.input.resume.retry_task_id]
            key = f"task-failed:{retried.spec.id}"
            if key in self.blockers:
                self._resolve_blocker(key)
            else:
                self._emit("blocker.resolved", {"key": key, "resolvedAt": workflow.now()})
            self._emit("task.execution.pending", self._task_event(retried))
        if reopened and self.through:
            # A reopened execution gets its synchronization points' full time again, and what the
            # reconciler said about the run it repaired is history now.
            self.deadline_base = workflow.now()
            for key in [
                k for k, b in self.blockers.items() if b.kind == "reconciled" and b.resolved_at is None
            ]:
                self._resolve_blocker(key)
        for point in self.input.sync_points:
            if point.timeout is not None and point.id not in self.dag.reached:
                self.timers.append(asyncio.create_task(self._sync_deadline(point)))

    def _advance(self) -> None:
        """Mark every task whose dependencies are done as started, in definition order."""
        self.passes += 1
        if not workflow.unsafe.is_replaying():
            self.caught_up = True
        if self.failure is not None:
            self.dag.halt()
            return  # a missed synchronization point failed the execution: nothing new starts
        if self.draining:
            return  # the next run starts them
        ready = self.dag.take_ready()
        for index, task_id in enumerate(ready):
            task = self.tasks[task_id]
            if self.through and not self._fits(task):
                self.dag.defer(ready[index:])  # the next workflow task (or run) starts them
                return
            self._start(task)

    def _fits(self, task: TaskState) -> bool:
        """Whether the task's input fits into this workflow task and the run's history: a task that
        gets the whole context carries it in its scheduled event. The first task always fits."""
        if task.spec.type in CONTEXT_BY_REFERENCE or task.spec.type in (SLEEP, APPROVAL):
            return True
        now = workflow.time()
        if self.scheduled_at != now:
            self.scheduled_at, self.scheduled_bytes = now, 0
        size = self.context_bytes + (_json_size(task.spec.input) if task.spec.input else 0)
        history = workflow.info().get_current_history_size()
        if (
            self.scheduled_bytes
            and history + self.scheduled_bytes + size >= self.input.options.continue_after_bytes
        ):
            self.draining = True  # the history would grow too large: the next run goes on
            return False
        if self.scheduled_bytes and self.scheduled_bytes + size > SCHEDULE_BYTES_PER_ACTIVATION:
            return False
        self.scheduled_bytes += size
        return True

    def _launch(self) -> None:
        """Run the tasks marked as started (their events are published by now)."""
        starting, self.starting = self.starting, []
        for task in starting:
            task.runner = asyncio.create_task(self._run_task(task))
            self.running[task.spec.id] = task
            if task.spec.type not in (SLEEP, APPROVAL):
                self.activities_running += 1

    def _reach(self, point: SyncPointSpec) -> None:
        now = workflow.now()
        self._emit("synchronization.point.reached", {"syncPointId": point.id, "name": point.name, "at": now})
        self._milestone(f"sync:{point.id}", point.name, point.description, now)

    def _settled(self) -> bool:
        """Nothing runs, nothing waits, nothing more can start."""
        return self.dag.settled()

    # --- continue-as-new -----------------------------------------------------------------

    def _handover_due(self) -> bool:
        """Whether to continue as a new run now: the history is long (or Temporal suggests it),
        and every running activity has finished (sleeps and approvals go on in the next run)."""
        if self.failure is not None:
            return False  # the run ends soon, failed: nothing to hand over
        if not self.draining:
            info = workflow.info()
            length = info.get_current_history_length()
            options = self.input.options
            if self.through:
                # Size counts as much as length: tasks that get a large context fill the history
                # long before it has many events (Temporal terminates a run at 50 MB).
                size = info.get_current_history_size()
                floor = length >= HANDOVER_FLOOR_EVENTS or size >= HANDOVER_FLOOR_BYTES
                suggested = info.is_continue_as_new_suggested() and floor
                self.draining = (
                    length >= options.continue_after_events
                    or size >= options.continue_after_bytes
                    or suggested
                )
            else:
                # Temporal's suggestion (from its history length and size limits) counts only past a
                # floor, so a run that starts big still gets work done before it hands over.
                suggested = info.is_continue_as_new_suggested() and length >= HANDOVER_FLOOR_EVENTS
                self.draining = length >= options.continue_after_events or suggested
        return (
            self.draining
            and not self.starting
            and all(t.spec.type in (SLEEP, APPROVAL) for t in self.running.values())
        )

    async def _continue_as_new(self) -> None:
        """Hand the execution over to a new run of this workflow id with everything it needs to
        go on: task states, context, the event sequence, open blockers. The API and the read
        model see one execution; Temporal sees a chain of runs."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._flush()
        carried = [
            TaskCarryOver(t.spec.id, t.status, t.attempts, t.started_at, t.ended_at, t.error, t.resources)
            for t in self.tasks.values()
            if t.status != PENDING or t.attempts
        ]
        resume = ResumeState(
            tasks=[],
            context={},
            packed=pack_carry(carried, self.context),
            context_version=self.context_version,
            last_seq=self.seq,
            started_at=self.started_at,
            reached_sync_points=sorted(self.dag.reached),
            continued=True,
            blockers=[b.snapshot() for b in self.blockers.values() if b.resolved_at is None],
            deadline_base=self.deadline_base if self.through else None,
        )
        if not self.through:
            workflow.continue_as_new(dataclasses.replace(self.input, resume=resume))
        # The carried context holds the initial one: the next run's input need not repeat it.
        handover = dataclasses.replace(self.input, context={}, resume=resume)
        size = workflow.payload_converter().to_payloads([handover])[0].ByteSize()
        if size > MAX_HANDOVER_BYTES:
            # Temporal would refuse the next run's input and the execution would go nowhere: fail
            # it now, saying why, instead.
            message = f"the execution's state ({size} bytes) is too large to carry into a new run (limit {MAX_HANDOVER_BYTES})"
            self.failure = message
            self.draining = False
            self._open_blocker("handover-too-large", "handover_failed", message, None)
            await self._cancel_all(message)
            return
        self.closing = True
        workflow.continue_as_new(handover)

    def _carry_on(self) -> None:
        """The start of a continued run: tasks that were waiting wait on; nothing is announced."""
        for point in self.input.sync_points:
            if point.timeout is not None and point.id not in self.dag.reached:
                self.timers.append(asyncio.create_task(self._sync_deadline(point)))
        for task in self.tasks.values():
            if task.carried:
                task.runner = asyncio.create_task(self._run_task(task))
                self.running[task.spec.id] = task

    async def _finish(self) -> InterpreterResult:
        completed = self.dag.completed
        if self.dag.all_completed() and self.failure is None:
            self.status = COMPLETED
            self._milestone("completion", "Completion", "All tasks completed", workflow.now())
            self._emit("workflow.execution.completed", self._execution_snapshot(COMPLETED))
        else:
            self.status = FAILED
            self.failure = self.failure or self._failure_summary()
            self._emit("workflow.execution.failed", self._execution_snapshot(FAILED))
        self.closing = True
        for timer in self.timers:
            timer.cancel()
        await self._flush()
        # Updates in flight (a retry racing the end) get their answer before the run closes.
        if self.through:
            try:
                await workflow.wait_condition(workflow.all_handlers_finished)
            except asyncio.CancelledError:
                pass  # the execution has finished and said so: a cancel arriving now changes nothing
        else:
            await workflow.wait_condition(workflow.all_handlers_finished)
        if self.status == FAILED:
            raise ApplicationError(
                self.failure or "the execution failed", type="ExecutionFailed", non_retryable=True
            )
        return InterpreterResult(COMPLETED, self.context_version, completed, len(self.tasks))

    def _failure_summary(self) -> str:
        failed = self.dag.failed_tasks()
        if failed:
            return f"task{'s' if len(failed) > 1 else ''} {', '.join(failed)} failed"
        return "tasks could not run"

    # --- tasks ---------------------------------------------------------------------------

    def _start(self, task: TaskState) -> None:
        task.status = WAITING if task.spec.type in (SLEEP, APPROVAL) else RUNNING
        task.started_at, task.ended_at, task.error, task.decision = workflow.now(), None, None, None
        task.attempts = task.attempts_before + 1
        self.dag.started(task.spec.id)
        self._emit(
            "task.execution.waiting" if task.status == WAITING else "task.execution.started",
            self._task_event(task),
        )
        if task.spec.type == APPROVAL:
            self._open_blocker(
                f"approval:{task.spec.id}",
                "approval",
                f"Task {task.spec.id} waits for approval",
                task.spec.id,
            )
        self.starting.append(task)

    async def _run_task(self, task: TaskState) -> None:
        try:
            if task.spec.type == SLEEP:
                result = await self._sleep(task)
            elif task.spec.type == APPROVAL:
                result = await self._approval(task)
            else:
                result = await self._activity(task)
            self._completed(task, result)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                self._cancelled(task)
            else:
                attempt = _failed_attempt(err)
                # Patched: the id of a later in-place retry's activity counts from these attempts.
                if attempt is not None and workflow.patched(FAILED_ATTEMPTS_PATCH):
                    task.attempts = max(task.attempts, task.attempts_before + attempt)
                self._failed(task, *_describe_failure(err, task.spec))
        except ApplicationError as err:
            self._failed(task, err.message)
        except asyncio.CancelledError:
            self._cancelled(task)
        finally:
            task.runner = None
            if self.running.pop(task.spec.id, None) is not None and task.spec.type not in (SLEEP, APPROVAL):
                self.activities_running -= 1
            self.changed = True

    async def _activity(self, task: TaskState) -> Any:
        spec, options = task.spec, self.input.options
        retry = spec.retry
        outcome: TaskOutcome = await workflow.execute_activity(
            spec.type,
            TaskInput(
                execution_id=self.input.execution_id,
                task_id=spec.id,
                task_type=spec.type,
                input=spec.input,
                context=self._context_for(spec),
                requirements=spec.requirements,
                queue=spec.queue,
                max_result_bytes=options.max_result_bytes,
            ),
            task_queue=spec.queue,
            # Readable in the Web UI, and how the inspection finds the task again.
            activity_id=activity_id(spec.id, task.attempts_before),
            result_type=TaskOutcome,
            start_to_close_timeout=timedelta(seconds=spec.timeout or options.default_task_timeout),
            heartbeat_timeout=timedelta(seconds=options.heartbeat_timeout),
            retry_policy=RetryPolicy(
                maximum_attempts=retry.maximum_attempts,
                initial_interval=timedelta(seconds=retry.initial_interval),
                backoff_coefficient=retry.backoff_coefficient,
                maximum_interval=timedelta(seconds=retry.maximum_interval)
                if retry.maximum_interval
                else None,
                non_retryable_error_types=[*retry.non_retryable_error_types, UNKNOWN_TYPE_ERROR],
            ),
            summary=f"{spec.id} ({spec.type})"
            + (f", retry {task.attempts_before}" if task.attempts_before else ""),
            # A cancelled task counts as CANCELLED once its worker has stopped it, not before.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        task.attempts = task.attempts_before + outcome.attempt
        task.resources = _resources(spec, outcome.worker, outcome.queue)
        return outcome.result

    def _context_for(self, spec: TaskSpec) -> dict[str, Any]:
        if spec.type not in CONTEXT_BY_REFERENCE:
            return self.context
        paths = self.references.get(spec.id)
        if paths is None:
            paths = self.references[spec.id] = references(spec.input) if spec.input else []
        if not paths:
            return {}
        return {k: v for k, v in self.context.items() if any(p == k or p.startswith(k + ".") for p in paths)}

    async def _sleep(self, task: TaskState) -> Any:
        seconds = (task.spec.input or {}).get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ApplicationError(
                "a sleep task needs input.seconds, a number of seconds >= 0", non_retryable=True
            )
        elapsed = (
            (workflow.now() - task.started_at).total_seconds() if task.carried and task.started_at else 0.0
        )
        await workflow.sleep(max(0.0, seconds - elapsed))
        return {"sleptSeconds": seconds}

    async def _approval(self, task: TaskState) -> Any:
        await workflow.wait_condition(lambda: task.decision is not None)
        assert task.decision is not None
        verdict, value = task.decision
        self._resolve_blocker(f"approval:{task.spec.id}")
        if verdict == "reject":
            raise ApplicationError(f"rejected: {value}" if value else "rejected", non_retryable=True)
        return value

    def _completed(self, task: TaskState, result: Any) -> None:
        key = f"{task.spec.id}-result"
        text = _json_text(result)
        if self.through and "\\u0000" in text:
            # PostgreSQL cannot store it (SQLite could): the same refusal on both, and in the task,
            # where it can be fixed and retried, rather than a read model that never catches up.
            self._failed(task, "the result contains a NUL character (\\u0000), which cannot be stored")
            return
        entry = _json_size(key) + 1 + len(text.encode()) + (1 if self.context else 0)
        if key in self.context:
            entry -= _json_size(key) + 1 + _json_size(self.context[key]) + 1
        size = self.context_bytes + entry
        if size > self.input.options.max_context_bytes:
            self._failed(
                task,
                f"the context would grow to {size} bytes with this task's result, over the limit of "
                f"{self.input.options.max_context_bytes} bytes",
            )
            return
        self.context[key] = result
        self.context_bytes = size
        self.context_version += 1
        task.status, task.ended_at = COMPLETED, workflow.now()
        self._resolve_task_blockers(task)
        self._emit(
            "task.execution.completed",
            {
                **self._task_event(task),
                "result": result,
                "contextKey": key,
                "contextVersion": self.context_version,
            },
        )
        for point_id in self.dag.node_done(task.spec.id):
            self._reach(self.sync_points[point_id])
        self._emit("progress.updated", {"completedTasks": self.dag.completed, "totalTasks": len(self.tasks)})

    def _failed(self, task: TaskState, message: str, resources: dict[str, Any] | None = None) -> None:
        message = _printable(message)
        task.status, task.ended_at, task.error = FAILED, workflow.now(), message
        self.dag.failed(task.spec.id)
        if resources is not None:
            task.resources = resources
        self._emit("task.execution.failed", self._task_event(task))
        self._resolve_task_blockers(task)
        self._open_blocker(
            f"task-failed:{task.spec.id}",
            "task_failed",
            f"Task {task.spec.id} failed: {message}",
            task.spec.id,
        )

    def _cancelled(self, task: TaskState) -> None:
        task.status, task.ended_at = CANCELLED, workflow.now()
        self.dag.cancelled(task.spec.id)
        self._emit("task.execution.cancelled", self._task_event(task))
        self._resolve_blocker(f"approval:{task.spec.id}")
        self._resolve_task_blockers(task)

    async def _cancel_all(self, reason: str) -> None:
        """Cancel every running task and wait until each has been marked."""
        for timer in self.timers:
            timer.cancel()
        starting, self.starting = self.starting, []
        for task in starting:
            self._cancelled(task)  # marked as started, never ran
        runners = [t.runner for t in self.running.values() if t.runner is not None]
        for runner in runners:
            runner.cancel(reason)
        await asyncio.gather(*runners, return_exceptions=True)

    # --- synchronization points ----------------------------------------------------------

    async def _sync_deadline(self, point: SyncPointSpec) -> None:
        assert point.timeout is not None
        remaining = point.timeout - (workflow.now() - self.deadline_base).total_seconds()
        if remaining > 0:
            try:
                await workflow.wait_condition(lambda: point.id in self.dag.reached, timeout=remaining)
            except builtins.TimeoutError:
                pass  # the deadline passed
        if point.id in self.dag.reached or self.status != RUNNING:
            return
        self.dag.point_missed(point.id)
        message = f"synchronization point {point.id} was not reached within {_seconds(point.timeout)}s"
        self.failure = message
        self._emit(
            "synchronization.point.failed",
            {"syncPointId": point.id, "name": point.name, "at": workflow.now(), "error": message},
        )
        self._open_blocker(f"sync-missed:{point.id}", "sync_point_missed", message, None)
        await self._cancel_all(message)
        self.changed = True

    # --- updates (from the API) ----------------------------------------------------------

    @workflow.update
    async def retry_task(self, task_id: str) -> dict[str, Any]:
        """Run a failed task again (and then what depends on it); attempts go on counting."""
        task = await self._when_applied(lambda: self._check_retry(task_id))
        task.status, task.error, task.ended_at = PENDING, None, None
        task.attempts_before = task.attempts
        self.dag.retried(task_id)
        self._resolve_blocker(f"task-failed:{task_id}")
        self._emit("task.execution.pending", self._task_event(task))
        self.changed = True
        # While draining, the task starts in the next run: answered as PENDING.
        await workflow.wait_condition(
            lambda: task.status != PENDING or self.status != RUNNING or self.draining
        )
        await self._published()
        return self._answer(task)

    @retry_task.validator
    def _validate_retry(self, task_id: str) -> None:
        task = self._task_or_reject(task_id)
        if not self.caught_up and task.status == RUNNING:
            return  # its failure may be in the history not applied yet: the handler looks again
        self._check_retry(task_id)

    def _check_retry(self, task_id: str) -> TaskState:
        task = self._task_or_reject(task_id)
        if task.status != FAILED:
            raise ApplicationError(f"task {task_id} is {task.status}, not FAILED", type="Conflict")
        return task

    @workflow.update
    async def task_state(self, task_id: str) -> dict[str, Any]:
        """A task's state once it is scheduled (or settled) and published: a reopened run answers the retry with it."""
        task = self.tasks[task_id]
        await workflow.wait_condition(
            lambda: task.status != PENDING or self.status != RUNNING or self.draining
        )
        await self._published()
        return self._answer(task)

    @task_state.validator
    def _validate_task_state(self, task_id: str) -> None:
        if task_id not in self.tasks:
            raise ApplicationError(f"no task {task_id}", type="NotFound")

    @workflow.update
    async def complete_task(self, decision: TaskDecision) -> dict[str, Any]:
        """Approve a waiting approval task with an output (its result)."""
        return await self._decide(decision, "complete", decision.output)

    @complete_task.validator
    def _validate_complete(self, decision: TaskDecision) -> None:
        self._validate_decision(decision)

    @workflow.update
    async def reject_task(self, decision: TaskDecision) -> dict[str, Any]:
        """Reject a waiting approval task: it fails (and can be retried)."""
        return await self._decide(decision, "reject", decision.reason)

    @reject_task.validator
    def _validate_reject(self, decision: TaskDecision) -> None:
        self._validate_decision(decision)

    async def _decide(self, decision: TaskDecision, verdict: str, value: Any) -> dict[str, Any]:
        task = await self._when_applied(lambda: self._check_decision(decision.task_id))
        task.decision = (verdict, value)
        await workflow.wait_condition(lambda: task.status != WAITING)
        await self._published()
        return self._answer(task)

    def _validate_decision(self, decision: TaskDecision) -> None:
        task = self._task_or_reject(decision.task_id)
        if (
            not self.caught_up
            and task.spec.type == APPROVAL
            and task.status == PENDING
            and task.decision is None
        ):
            return  # may be WAITING in the history not applied yet: the handler looks again
        self._check_decision(decision.task_id)

    def _check_decision(self, task_id: str) -> TaskState:
        task = self._task_or_reject(task_id)
        if task.spec.type != APPROVAL or task.status != WAITING or task.decision is not None:
            raise ApplicationError(f"task {task_id} is not waiting for approval", type="Conflict")
        return task

    async def _when_applied(self, check: Callable[[], TaskState]) -> TaskState:
        """`check`'s task: at once, or, for an update the validator let through ahead of the history
        (see `caught_up`), after the next pass of the run loop, which applies that history.

        The wait adds no command, and an update that passes `check` at once goes on exactly as
        before: the histories of running executions replay unchanged, so no patch is needed."""
        try:
            return check()
        except ApplicationError:
            passes = self.passes
        await workflow.wait_condition(lambda: self.passes > passes or self.status != RUNNING)
        return check()

    def _task_or_reject(self, task_id: str) -> TaskState:
        if self.status != RUNNING:
            raise ApplicationError(f"the execution is {self.status}", type="Closed")
        task = self.tasks.get(task_id)
        if task is None:
            raise ApplicationError(f"no task {task_id}", type="NotFound")
        return task

    def _answer(self, task: TaskState) -> dict[str, Any]:
        """An update's answer: the task's state, and the sequence number the read model will have
        reached once it shows that state (the API waits for it before answering)."""
        return {**task.snapshot(), "sequence": self.seq}

    async def _published(self) -> None:
        """Wait until everything emitted so far is in the read model."""
        target = self.seq
        await workflow.wait_condition(lambda: self.flushed_seq >= target)

    @workflow.query
    def state(self) -> dict[str, Any]:
        """The live state, for operators (the API reads the read model)."""
        return {
            **self._execution_snapshot(self.status),
            "tasks": [t.snapshot() for t in self.tasks.values()],
            "blockers": [b.snapshot() for b in self.blockers.values()],
            "reached": sorted(self.dag.reached),
            "lastSeq": self.seq,
            "publishedSeq": self.flushed_seq,
        }

    # --- inspection of long-running tasks -------------------------------------------------

    def _next_inspection_in(self) -> timedelta | None:
        """Time until a running task is due for a look (no timer at all while nothing runs)."""
        due = [i.next_at for i in self._inspections().values()]
        if not due:
            return None
        return timedelta(seconds=max(0.0, min(due) - workflow.time()))

    def _inspections(self) -> dict[str, Inspection]:
        running = [t for t in self.running.values() if t.status == RUNNING]
        first = self.input.options.inspect_after
        now = workflow.time()
        self.inspections = {
            t.spec.id: self.inspections.get(t.spec.id) or Inspection(self._first_look(t, now) + first, first)
            for t in running
        }
        return self.inspections

    def _first_look(self, task: TaskState, now: float) -> float:
        # The inspector may first see a task long after it started; the first look is due from its start.
        return task.started_at.timestamp() if self.through and task.started_at is not None else now

    async def _inspector(self) -> None:
        """Look at long-running tasks from one timer at a time, armed for the earliest due look: a
        hop of the DAG neither starts nor cancels a timer (two history events each)."""
        while True:
            await workflow.wait_condition(lambda: self.activities_running > 0)
            due = min((i.next_at for i in self._inspections().values()), default=None)
            if due is None:
                await workflow.wait_condition(lambda: self.changed)  # running tasks not marked yet
                continue
            delay = due - workflow.time()
            if delay > 0:
                await workflow.sleep(delay)
            await self._inspect_if_due()

    async def _inspect_if_due(self) -> None:
        """Ask Temporal about tasks running long: not yet picked up by a worker (no worker polls
        their queue: a blocker), retrying (attempts so far), where they run."""
        now = workflow.time()
        state = self._inspections()
        if not any(i.next_at <= now for i in state.values()):
            return
        for inspection in state.values():
            if inspection.next_at <= now:
                inspection.interval = min(inspection.interval * 2, INSPECT_MAX_INTERVAL)
                inspection.next_at = now + inspection.interval
        info = workflow.info()
        try:
            result: InspectResult = await workflow.execute_local_activity(
                INSPECT_ACTIVITY,
                InspectRequest(
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                    task_queues={tid: self.tasks[tid].spec.queue for tid in state},
                ),
                result_type=InspectResult,
                start_to_close_timeout=INSPECT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as err:
            # Only a look (Temporal busy, rate-limited, briefly away): the next one is due later.
            workflow.logger.warning("inspection of running tasks failed: %s", err.cause or err)
            return
        for seen in result.tasks:
            task = self.tasks.get(seen.task_id)
            if task is None or task.status != RUNNING:
                continue
            attempts = task.attempts_before + seen.attempt
            if attempts != task.attempts or (seen.last_worker and task.resources is None):
                task.attempts = attempts
                if seen.last_worker:
                    task.resources = _resources(task.spec, seen.last_worker, seen.queue)
                self._emit("task.execution.started", self._task_event(task))
            key = f"no-workers:{task.spec.id}"
            if not seen.started and seen.queue_has_pollers is False:
                self._open_blocker(
                    key,
                    "no_workers",
                    f"No worker polls task queue {seen.queue!r} for task {task.spec.id}",
                    task.spec.id,
                )
            elif seen.started or seen.queue_has_pollers:
                self._resolve_blocker(key)
            # Attempts that landed on workers without the task's code (another worker of the
            # queue may have it): visible while the retries go on. Inspections recorded before
            # this field existed replay with None here, so no new event appears in old runs.
            if seen.last_failure_type in MISSING_CODE_ERRORS:
                self._open_blocker(
                    f"missing-code:{task.spec.id}",
                    "missing_code",
                    _missing_code(task.spec, seen),
                    task.spec.id,
                )
            elif seen.last_failure_type is not None:
                self._resolve_blocker(f"missing-code:{task.spec.id}")
        await self._flush()

    # --- events --------------------------------------------------------------------------

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self.closing and self.through:
            return  # tasks torn down after the run's end (its last word was said) are not news
        self.seq += 1
        event = Event(seq=self.seq, type=event_type, at=workflow.now(), data=data)
        if not self.through:
            self.pending.append(event)
        elif publishing.available():
            publishing.emit(self.input.execution_id, event)
            # Written before this activation's commands and update answers leave the worker.
            self.flushed_seq = self.seq
        elif not workflow.unsafe.is_replaying():
            raise publishing.NoPublisher(
                "this worker has no read model runner; start workers with wfo-worker"
            )
        else:
            self.flushed_seq = self.seq  # replayed: written when it first ran

    async def _flush(self) -> None:
        while self.pending:
            batch = list(self.pending)
            info = workflow.info()
            await workflow.execute_local_activity(
                PUBLISH_ACTIVITY,
                EventBatch(self.input.execution_id, info.workflow_id, info.run_id, batch),
                start_to_close_timeout=PUBLISH_TIMEOUT,
                retry_policy=PUBLISH_RETRY,
            )
            del self.pending[: len(batch)]
            self.flushed_seq = batch[-1].seq

    def _task_event(self, task: TaskState) -> dict[str, Any]:
        return {**task.snapshot(), "name": task.spec.name, "type": task.spec.type}

    def _execution_snapshot(self, status: str) -> dict[str, Any]:
        ended = status in (COMPLETED, FAILED, CANCELLED)
        return {
            "status": status,
            "startTime": self.started_at,
            "endTime": workflow.now() if ended else None,
            "error": self.failure if status == FAILED else None,
            "contextVersion": self.context_version,
        }

    def _milestone(self, key: str, name: str, description: str | None, at: datetime) -> None:
        self._emit(
            "milestone.achieved", {"key": key, "name": name, "description": description, "achievedAt": at}
        )

    def _open_blocker(self, key: str, kind: str, description: str, task_id: str | None) -> None:
        current = self.blockers.get(key)
        if current is not None and current.resolved_at is None:
            return
        blocker = Blocker(key, kind, description, task_id, workflow.now())
        self.blockers[key] = blocker
        self._emit("blocker.detected", blocker.snapshot())

    def _resolve_task_blockers(self, task: TaskState) -> None:
        """An ended task waits for no worker and no code any more."""
        self._resolve_blocker(f"no-workers:{task.spec.id}")
        self._resolve_blocker(f"missing-code:{task.spec.id}")

    def _resolve_blocker(self, key: str) -> None:
        blocker = self.blockers.get(key)
        if blocker is None or blocker.resolved_at is not None:
            return
        blocker.resolved_at = workflow.now()
        self._emit("blocker.resolved", blocker.snapshot())


def _failed_attempt(err: ActivityError) -> int | None:
    """The attempt number a task's last failure reports (run_task puts it in its first detail)."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        attempt = cause.details[0].get("attempt")
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            return attempt
    return None


def _missing_code(spec: TaskSpec, seen: TaskInspection) -> str:
    """A missing-code blocker's text: what the task needs, on which queue, and what to do."""
    function = (spec.input or {}).get("function") if spec.type == "python" else None
    what = (
        f"python function {function!r}"
        if seen.last_failure_type == UNKNOWN_FUNCTION
        else f"task type {spec.type!r}"
    )
    last = f" (the last: {seen.last_worker})" if seen.last_worker else ""
    return (
        f"Task {spec.id} needs {what}, which the workers of queue {seen.queue!r} that took it do not"
        f" have{last}; it is retried until a worker with it takes it or its attempts run out"
        f" (wfo-worker --queue {seen.queue} --load MODULE)"
    )


def _resources(spec: TaskSpec, worker: str, queue: str) -> dict[str, Any]:
    return {"worker": worker, "queue": queue, "requirements": spec.requirements}


def _time(value: datetime | str) -> datetime:
    """A datetime that crossed a payload inside a dict arrives as its ISO string."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _json_size(value: Any) -> int:
    return len(_json_text(value).encode())


def _printable(text: str) -> str:
    """Error text as the read model can keep it on both databases (PostgreSQL refuses NUL)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _describe_failure(err: ActivityError, spec: TaskSpec) -> tuple[str, dict[str, Any] | None]:
    """A readable message for a task's last failure, and where it ran if the task said so."""
    cause = err.cause
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name.lower().replace('_', '-') if cause.type else 'timeout'})", None
    if isinstance(cause, ApplicationError):
        if cause.type == UNKNOWN_TYPE_ERROR:
            return f"unknown task type {spec.type!r}: no worker on queue {spec.queue!r} runs it", None
        where = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else None
        resources = (
            _resources(spec, where["worker"], where.get("queue", spec.queue))
            if where and "worker" in where
            else None
        )
        prefix = f"{cause.type}: " if cause.type and cause.type not in ("Exception",) else ""
        return prefix + cause.message, resources
    return str(cause or err), None
