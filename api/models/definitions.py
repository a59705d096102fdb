"""Workflow definitions: tables (every version kept) and the API's request/response shapes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

import sqlalchemy as sa
from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Column_

from api.dag import Node, Problem, check_graph, default_id
from api.db import JSONDocument, UTCDateTime, utcnow
from api.models.base import ApiModel, RequestModel, Seconds, Timestamp

# --- tables --------------------------------------------------------------------------------


class DefinitionRow(SQLModel, table=True):
    """The current version of a definition (the versions table holds every one, this one included)."""

    __tablename__ = "workflow_definitions"

    id: int | None = Column_(default=None, primary_key=True)
    name: str = Column_(sa_column=Column(sa.String(200), nullable=False))
    description: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    version: str = Column_(sa_column=Column(sa.String(32), nullable=False))
    revision: int = Column_(sa_column=Column(sa.Integer, nullable=False))
    document: dict[str, Any] = Column_(sa_column=Column(JSONDocument, nullable=False))
    created_by: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True))
    created_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    deleted_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))


class DefinitionVersionRow(SQLModel, table=True):
    __tablename__ = "workflow_definition_versions"
    __table_args__ = (sa.UniqueConstraint("definition_id", "version", name="uq_definition_version"),)

    definition_id: int = Column_(
        sa_column=Column(sa.Integer, sa.ForeignKey("workflow_definitions.id"), primary_key=True)
    )
    revision: int = Column_(sa_column=Column(sa.Integer, primary_key=True))
    version: str = Column_(sa_column=Column(sa.String(32), nullable=False))
    name: str = Column_(sa_column=Column(sa.String(200), nullable=False))
    description: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    document: dict[str, Any] = Column_(sa_column=Column(JSONDocument, nullable=False))
    created_by: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True))
    created_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


# --- field types ---------------------------------------------------------------------------

NodeId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"),
    Field(description="Letters, digits and `_ . : -`, at most 128 characters."),
]
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")]
TaskType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
#: Up to a year; Temporal takes any duration, but longer is almost certainly a unit mistake.
TimeoutSeconds = Annotated[float, Field(gt=0, le=365 * 24 * 3600)]
Interval = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]

#: Task types of the system's own activities (`wfo.publish_events`, ...): a task must not run them.
RESERVED_TYPE_PREFIX = "wfo."
#: Problems listed in one answer; the others are counted (one bad definition must not make a
#: response of hundreds of MB).
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class DefinitionLimits:
    """The limits that come from settings, checked before anything else is validated."""

    max_tasks: int = 10_000
    #: Queues of the interpreter and the system activities (the defaults until configured).
    reserved_queues: frozenset[str] = frozenset({"wfo-system", "wfo-webhooks"})


_limits = DefinitionLimits()


def configure_limits(*, max_tasks: int, reserved_queues: frozenset[str]) -> None:
    """Set this API process's limits (create_app, from WFO_MAX_TASKS and the system queue names).

    Request bodies are validated before any dependency could hand settings to the model, so the
    limits that must be checked first live here, like the worker's network policy.
    """
    global _limits
    _limits = DefinitionLimits(max_tasks=max_tasks, reserved_queues=reserved_queues)


def definition_limits() -> DefinitionLimits:
    return _limits


# --- requests ------------------------------------------------------------------------------


class RetryPolicyIn(RequestModel):
    """Temporal's RetryPolicy. `maxRetries`, `backoffMultiplier` and `maxBackoff` are the names of the
    spec's original GraphQL schema, accepted as aliases."""

    max_attempts: int | None = Field(None, ge=1, le=1000, description="Attempts in all, the first included.")
    initial_interval: Interval | None = Field(None, description="Seconds before the first retry.")
    backoff_coefficient: float | None = Field(None, ge=1, le=100)
    maximum_interval: Interval | None = Field(None, description="Cap on the seconds between retries.")
    non_retryable_errors: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = (
        Field(None, max_length=50, description="Error types that are never retried.")
    )
    max_retries: int | None = Field(None, ge=0, le=999, description="Alias: maxAttempts - 1.")
    backoff_multiplier: float | None = Field(None, ge=1, le=100, description="Alias of backoffCoefficient.")
    max_backoff: Interval | None = Field(None, description="Alias of maximumInterval.")

    @model_validator(mode="after")
    def _fold_aliases(self) -> Self:
        def fold(canonical: str, alias: str, value_of_alias: Any) -> None:
            current = getattr(self, canonical)
            if value_of_alias is None:
                return
            if current is not None and current != value_of_alias:
                name = type(self).model_fields[canonical].alias
                raise ValueError(f"{name} and {alias} disagree; give one of them")
            setattr(self, canonical, value_of_alias)

        fold("max_attempts", "maxRetries", None if self.max_retries is None else self.max_retries + 1)
        fold("backoff_coefficient", "backoffMultiplier", self.backoff_multiplier)
        fold("maximum_interval", "maxBackoff", self.max_backoff)
        self.max_retries = self.backoff_multiplier = self.max_backoff = None
        if (
            self.initial_interval is not None
            and self.maximum_interval is not None
            and self.maximum_interval < self.initial_interval
        ):
            raise ValueError("maximumInterval must not be shorter than initialInterval")
        return self


class CustomResource(RequestModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    value: Annotated[str, StringConstraints(max_length=1000)] | int | float | bool


class ResourceRequirementsIn(RequestModel):
    cpu: float | None = Field(None, gt=0, le=1024, description="CPU cores.")
    memory: int | None = Field(None, ge=0, le=16 * 1024 * 1024, description="Memory in MB.")
    storage: int | None = Field(None, ge=0, le=1024 * 1024 * 1024, description="Storage in MB.")
    gpu: int | None = Field(None, ge=0, le=64, description="GPUs.")
    custom: list[CustomResource] | None = Field(None, max_length=50)
    queue: QueueName | None = Field(
        None, description="Task queue of the worker fleet that runs this task (not one of the system queues)."
    )

    @field_validator("queue")
    @classmethod
    def _not_a_system_queue(cls, queue: str | None) -> str | None:
        # A task on the system queue would be taken by the system worker, which runs the
        # interpreter and activities that write to the database.
        if queue is not None and queue in _limits.reserved_queues:
            raise ValueError(f"{queue!r} is a system queue; tasks cannot run there")
        return queue


class TaskIn(RequestModel):
    id: NodeId | None = Field(None, description="Defaults to task-N, N being the task's position from 1.")
    name: Name
    description: Description | None = None
    dependencies: list[NodeId] = Field(
        default_factory=list, description="Ids of tasks or synchronization points."
    )
    type: TaskType = Field(
        "noop",
        description="noop, sleep, http, approval, python, or a type a worker registered (not `wfo.*`: reserved).",
    )
    input: dict[str, Any] | None = Field(None, description="JSON object handed to the task.")
    timeout: TimeoutSeconds | None = Field(None, description="Seconds for one attempt (start-to-close).")
    retry_policy: RetryPolicyIn | None = None
    resource_requirements: ResourceRequirementsIn | None = None

    @field_validator("type")
    @classmethod
    def _not_a_system_type(cls, value: str) -> str:
        # Activity types are global on a queue: `wfo.reconcile_executions` must stay the system's.
        if value.lower().startswith(RESERVED_TYPE_PREFIX):
            raise ValueError(f"Task types starting with {RESERVED_TYPE_PREFIX!r} are reserved for the system")
        return value


class SynchronizationPointIn(RequestModel):
    id: NodeId | None = Field(None, description="Defaults to sync-N, N being the point's position from 1.")
    name: Name
    description: Description | None = None
    required_tasks: list[NodeId] = Field(min_length=1, description="Tasks that must all complete.")
    timeout: TimeoutSeconds | None = Field(None, description="Seconds from the execution's start.")


class DefinitionIn(RequestModel):
    """A definition as written by a client (create and update). Read-only fields are ignored."""

    read_only_fields: ClassVar[frozenset[str]] = frozenset({"id", "version", "createdAt", "updatedAt"})

    name: Name
    description: Description | None = None
    tasks: list[TaskIn] = Field(default_factory=list)
    synchronization_points: list[SynchronizationPointIn] = Field(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _check_graph(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Sizes first (alone: nothing else is looked at in an oversized definition), then shape
        problems and graph problems (cycles, unknown ids, ...) together, at most
        MAX_LISTED_PROBLEMS of them listed."""
        sizes = _size_problems(data, _limits)
        if sizes:
            raise ValidationError.from_exception_data(cls.__name__, _listed([_graph_error(p) for p in sizes]))
        try:
            model = handler(data)
        except ValidationError as exc:
            shape, graph = exc.errors(), check_graph(*_raw_nodes(data))
        else:
            shape, graph = [], check_graph(*model.nodes())
        if not shape and not graph:
            return model
        lines: list[InitErrorDetails] = [
            {
                "type": PydanticCustomError(e["type"], "{message}", {"message": e["msg"]}),
                "loc": e["loc"],
                "input": None,
            }
            for e in shape[: MAX_LISTED_PROBLEMS + 1]
        ]
        lines += [_graph_error(problem) for problem in graph[: MAX_LISTED_PROBLEMS + 1]]
        raise ValidationError.from_exception_data(cls.__name__, _listed(lines, len(shape) + len(graph)))

    def nodes(self) -> tuple[list[Node], list[Node]]:
        tasks = [
            Node(t.id or default_id("tasks", i), "tasks", i, tuple(t.dependencies))
            for i, t in enumerate(self.tasks)
        ]
        points = [
            Node(
                p.id or default_id("synchronizationPoints", i),
                "synchronizationPoints",
                i,
                tuple(p.required_tasks),
            )
            for i, p in enumerate(self.synchronization_points)
        ]
        return tasks, points


def _graph_error(problem: Problem) -> InitErrorDetails:
    where, message = problem
    return {
        "type": PydanticCustomError("graph", "{message}", {"message": message}),
        "loc": where,
        "input": None,
    }


def _listed(lines: list[InitErrorDetails], total: int | None = None) -> list[InitErrorDetails]:
    """At most MAX_LISTED_PROBLEMS lines, and one that counts the others (its `omitted` is read by
    the problem renderer, so the answer's detail still says how many problems there are)."""
    total = len(lines) if total is None else total
    if total <= MAX_LISTED_PROBLEMS:
        return lines
    omitted = total - MAX_LISTED_PROBLEMS
    summary = PydanticCustomError(
        "too_many_problems",
        "{message}",
        {
            "message": f"{omitted} more problems are not listed (only the first {MAX_LISTED_PROBLEMS} are)",
            "omitted": omitted,
        },
    )
    return [*lines[:MAX_LISTED_PROBLEMS], {"type": summary, "loc": (), "input": None}]


def _size_problems(data: Any, limits: DefinitionLimits) -> list[Problem]:
    """Lists longer than any valid definition has, read from the raw input before it is validated.

    A task cannot depend on more distinct nodes than the definition has, nor a synchronization
    point require more tasks than there are: longer lists repeat or invent ids, and each of their
    entries would otherwise be validated and reported on its own.
    """
    if not isinstance(data, dict):
        return []
    tasks, points = data.get("tasks"), data.get("synchronizationPoints")
    tasks = tasks if isinstance(tasks, list) else []
    points = points if isinstance(points, list) else []
    problems: list[Problem] = []
    if len(tasks) > limits.max_tasks:
        problems.append((("tasks",), f"{len(tasks)} tasks exceed the maximum of {limits.max_tasks}"))
    if len(points) > limits.max_tasks:
        problems.append(
            (
                ("synchronizationPoints",),
                f"{len(points)} synchronization points exceed the maximum of {limits.max_tasks}",
            )
        )
    if problems:
        return problems
    nodes = len(tasks) + len(points)
    for index, task in enumerate(tasks):
        edges = task.get("dependencies") if isinstance(task, dict) else None
        if isinstance(edges, list) and len(edges) > nodes:
            problems.append(
                (
                    ("tasks", index, "dependencies"),
                    f"{len(edges)} dependencies, more than the {nodes} tasks and synchronization points a task can depend on",
                )
            )
    for index, point in enumerate(points):
        edges = point.get("requiredTasks") if isinstance(point, dict) else None
        if isinstance(edges, list) and len(edges) > len(tasks):
            problems.append(
                (
                    ("synchronizationPoints", index, "requiredTasks"),
                    f"{len(edges)} required tasks, more than the {len(tasks)} tasks of the definition",
                )
            )
    return problems


def _raw_nodes(data: Any) -> tuple[list[Node], list[Node]]:
    """The graph as far as it can be read from input that failed validation, to report its problems too."""

    def read(kind: str, edges_field: str) -> list[Node]:
        items = data.get(kind) if isinstance(data, dict) else None
        nodes = []
        for index, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            given = item.get("id")
            edges = item.get(edges_field)
            nodes.append(
                Node(
                    given if isinstance(given, str) else default_id(kind, index),
                    kind,
                    index,
                    tuple(e for e in edges if isinstance(e, str)) if isinstance(edges, list) else (),
                )
            )
        return nodes

    return read("tasks", "dependencies"), read("synchronizationPoints", "requiredTasks")


# --- responses -----------------------------------------------------------------------------


class RetryPolicyPublic(ApiModel):
    max_attempts: int | None = None
    initial_interval: Seconds | None = None
    backoff_coefficient: float | None = None
    maximum_interval: Seconds | None = None
    non_retryable_errors: list[str] | None = None


class ResourceRequirementsPublic(ApiModel):
    cpu: float | None = None
    memory: int | None = None
    storage: int | None = None
    gpu: int | None = None
    custom: list[dict[str, Any]] | None = None
    queue: str | None = None


class TaskPublic(ApiModel):
    id: str
    name: str
    description: str | None
    resource_requirements: ResourceRequirementsPublic | None
    dependencies: list[str]
    timeout: Seconds | None
    retry_policy: RetryPolicyPublic | None
    type: str
    input: dict[str, Any] | None


class SynchronizationPointPublic(ApiModel):
    id: str
    name: str
    description: str | None
    required_tasks: list[str]
    timeout: Seconds | None


class DefinitionPublic(ApiModel):
    id: str
    name: str
    description: str | None
    version: str
    created_at: Timestamp
    updated_at: Timestamp
    tasks: list[TaskPublic]
    synchronization_points: list[SynchronizationPointPublic]


class DefinitionVersionSummary(ApiModel):
    version: str
    name: str
    description: str | None
    created_at: Timestamp = Field(description="When this version was stored.")
    task_count: int
