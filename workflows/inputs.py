"""Dataclasses that cross into Temporal (workflow and activity inputs and results).

Add fields with defaults; never remove, rename or reorder them: running executions hold these
in their histories, and the replay test fails when an old history no longer decodes.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from workflows.constants import DEFAULT_TASK_QUEUE

# --- the definition snapshot an execution runs -------------------------------------------


@dataclass
class RetrySpec:
    """A task's Temporal RetryPolicy (seconds)."""

    maximum_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    non_retryable_error_types: list[str] = field(default_factory=list)


@dataclass
class TaskSpec:
    id: str
    name: str
    type: str = "noop"
    dependencies: list[str] = field(default_factory=list)
    input: dict[str, Any] | None = None
    #: Start-to-close seconds of one attempt; None: the engine default.
    timeout: float | None = None
    retry: RetrySpec = field(default_factory=RetrySpec)
    queue: str = DEFAULT_TASK_QUEUE
    #: resourceRequirements as the definition gives them (cpu, memory, storage, gpu, custom, queue).
    requirements: dict[str, Any] | None = None


@dataclass
class SyncPointSpec:
    id: str
    name: str
    description: str | None = None
    required_tasks: list[str] = field(default_factory=list)
    #: Seconds from the execution's start; missing it fails the execution.
    timeout: float | None = None


@dataclass
class EngineOptions:
    """Engine knobs decided by the API's settings when the execution starts (workflows read no settings)."""

    default_task_timeout: float = 3600.0
    heartbeat_timeout: float = 30.0
    max_result_bytes: int = 256 * 1024
    max_context_bytes: int = 1024 * 1024
    #: Seconds a task may be scheduled before the engine looks for workers on its queue.
    inspect_after: float = 10.0
    #: History length (events) at which a run hands the execution over to a new run
    #: (continue-as-new), far below Temporal's limit of 51,200 events.
    continue_after_events: int = 10_000
    #: History size (bytes) at which a run hands over, far below Temporal's limit of 50 MB.
    continue_after_bytes: int = 24 * 1024 * 1024


# --- task activities ------------------------------------------------------------------------


@dataclass
class TaskInput:
    """What a task activity receives. Its activity type is the task type."""

    execution_id: str
    task_id: str
    task_type: str
    input: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    requirements: dict[str, Any] | None = None
    queue: str = DEFAULT_TASK_QUEUE
    max_result_bytes: int = 256 * 1024


@dataclass
class TaskOutcome:
    """What a task activity returns: the result and where it ran.

    A failing task raises an ApplicationError whose first detail is a dict with the same
    `worker`, `attempt` and `queue` keys.
    """

    result: Any
    worker: str
    attempt: int
    queue: str


# --- the interpreter workflow ---------------------------------------------------------------


@dataclass
class TaskCarryOver:
    """A task's state carried into a reopened run (retry of a failed execution)."""

    id: str
    status: str
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    resources: dict[str, Any] | None = None


@dataclass
class ResumeState:
    """What a reopened execution starts from: nothing that completed runs again."""

    tasks: list[TaskCarryOver]
    context: dict[str, Any]
    context_version: int
    #: The next event sequence number is last_seq + 1, so the event log stays one sequence.
    last_seq: int
    started_at: datetime
    reached_sync_points: list[str] = field(default_factory=list)
    #: The failed task to rerun (with everything that depends on it).
    retry_task_id: str | None = None
    #: A running execution continued as new (its history grew long), not a reopened one:
    #: WAITING tasks (sleeps, approvals) go on waiting and nothing is announced again.
    continued: bool = False
    #: Blockers still open (snapshots), for a continued run.
    blockers: list[dict[str, Any]] = field(default_factory=list)
    #: `tasks` and `context` packed (see pack_carry), instead of the two fields, for a
    #: continued run: thousands of task states would not fit in one payload otherwise.
    packed: str | None = None
    #: When synchronization point deadlines started counting (None: at `started_at`): a reopened
    #: execution counts from its reopening, and its continued runs go on from there.
    deadline_base: datetime | None = None

    def carried(self) -> tuple[list[TaskCarryOver], dict[str, Any]]:
        return unpack_carry(self.packed) if self.packed is not None else (self.tasks, self.context)


#: How an interpreter run publishes its events: through the worker's read model runner, or (runs
#: started before the runner existed, whose inputs lack the field) with a local activity.
PUBLISH_BY_RUNNER = "runner"
PUBLISH_BY_LOCAL_ACTIVITY = "local-activity"


@dataclass
class InterpreterInput:
    execution_id: str
    definition_id: str
    definition_version: str
    tasks: list[TaskSpec]
    sync_points: list[SyncPointSpec] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    options: EngineOptions = field(default_factory=EngineOptions)
    resume: ResumeState | None = None
    #: The tasks, packed (see pack_tasks), instead of `tasks` when the list is large.
    packed_tasks: str | None = None
    publisher: str = PUBLISH_BY_LOCAL_ACTIVITY

    def task_specs(self) -> list[TaskSpec]:
        return unpack_tasks(self.packed_tasks) if self.packed_tasks is not None else self.tasks


def pack_tasks(tasks: list[TaskSpec]) -> str:
    """Task specs as base64 of deflated compact JSON: a 10,000-task DAG is some 3 MB as plain
    JSON, over what one Temporal payload may carry (2 MB), and about a tenth of that packed."""
    return _pack([asdict(t) for t in tasks])


def _pack(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":"), default=_iso).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _unpack(packed: str) -> Any:
    return json.loads(zlib.decompress(base64.b64decode(packed)))


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def pack_carry(tasks: list[TaskCarryOver], context: dict[str, Any]) -> str:
    """Task states and context of a continued run, deflated like pack_tasks."""
    return _pack({"tasks": [asdict(t) for t in tasks], "context": context})


def unpack_carry(packed: str) -> tuple[list[TaskCarryOver], dict[str, Any]]:
    value = _unpack(packed)
    tasks = []
    for item in value["tasks"]:
        for key in ("started_at", "ended_at"):
            if item[key] is not None:
                item[key] = datetime.fromisoformat(item[key])
        tasks.append(TaskCarryOver(**item))
    return tasks, value["context"]


def unpack_tasks(packed: str) -> list[TaskSpec]:
    specs = []
    for item in _unpack(packed):
        retry = RetrySpec(**item.pop("retry"))
        specs.append(TaskSpec(**item, retry=retry))
    return specs


@dataclass
class InterpreterResult:
    status: str
    context_version: int
    completed_tasks: int
    total_tasks: int


# --- the read model feed --------------------------------------------------------------------


@dataclass
class Event:
    """One state change of an execution, numbered per execution."""

    seq: int
    type: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class EventBatch:
    """The events of one workflow task, written in one transaction."""

    execution_id: str
    workflow_id: str
    run_id: str
    events: list[Event]


@dataclass
class TaskInspection:
    """What Temporal knows of a scheduled task activity the workflow cannot see."""

    task_id: str
    started: bool
    attempt: int
    queue: str
    queue_has_pollers: bool | None = None
    last_failure: str | None = None
    last_worker: str | None = None
    #: The ApplicationError type of the last failed attempt (e.g. UnknownFunction), if any.
    last_failure_type: str | None = None


@dataclass
class InspectRequest:
    workflow_id: str
    run_id: str
    #: Task id -> task queue of the tasks to look at.
    task_queues: dict[str, str] = field(default_factory=dict)


@dataclass
class InspectResult:
    tasks: list[TaskInspection] = field(default_factory=list)


# --- webhook deliveries ---------------------------------------------------------------------


@dataclass
class DeliveryInput:
    """One webhook delivery, driven to success or to the end of its retry period."""

    delivery_id: str
    retry_period_seconds: float = 24 * 3600
    initial_retry_seconds: float = 5.0
    max_retry_interval_seconds: float = 3600.0
    timeout_seconds: float = 10.0


@dataclass
class DeliveryGiveUp:
    delivery_id: str
    reason: str
