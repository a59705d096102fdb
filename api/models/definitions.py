"""Workflow definitions: tables (every version kept) and the API's request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

import sqlalchemy as sa
from pydantic import Field, StringConstraints, ValidationError, ValidatorFunctionWrapHandler, model_validator
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


# --- requests ------------------------------------------------------------------------------


class RetryPolicyIn(RequestModel):
    """Temporal's RetryPolicy. `maxRetries`, `backoffMultiplier` and `maxBackoff` are the names of the
    spec's original GraphQL schema, accepted as aliases."""

    max_attempts: int | None = Field(None, ge=1, le=1000, description="Attempts in all, the first included.")
    initial_interval: Interval | None = Field(None, description="Seconds before the first retry.")
    backoff_coefficient: float | None = Field(None, ge=1, le=100)
    maximum_interval: Interval | None = Field(None, description="Cap on the seconds between retries.")
    non_retryable_errors: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        None, max_length=50, description="Error types that are never retried."
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
    queue: QueueName | None = Field(None, description="Task queue of the worker fleet that runs this task.")


class TaskIn(RequestModel):
    id: NodeId | None = Field(None, description="Defaults to task-N, N being the task's position from 1.")
    name: Name
    description: Description | None = None
    dependencies: list[NodeId] = Field(default_factory=list, description="Ids of tasks or synchronization points.")
    type: TaskType = Field("noop", description="noop, sleep, http, approval, python, or a type a worker registered.")
    input: dict[str, Any] | None = Field(None, description="JSON object handed to the task.")
    timeout: TimeoutSeconds | None = Field(None, description="Seconds for one attempt (start-to-close).")
    retry_policy: RetryPolicyIn | None = None
    resource_requirements: ResourceRequirementsIn | None = None


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
        """Shape problems and graph problems (cycles, unknown ids, ...) are reported together."""
        try:
            model = handler(data)
        except ValidationError as exc:
            shape, graph = exc.errors(), check_graph(*_raw_nodes(data))
        else:
            shape, graph = [], check_graph(*model.nodes())
        if not shape and not graph:
            return model
        lines: list[InitErrorDetails] = [
            {"type": PydanticCustomError(e["type"], "{message}", {"message": e["msg"]}), "loc": e["loc"], "input": None}
            for e in shape
        ]
        lines += [_graph_error(problem) for problem in graph]
        raise ValidationError.from_exception_data(cls.__name__, lines)

    def nodes(self) -> tuple[list[Node], list[Node]]:
        tasks = [
            Node(t.id or default_id("tasks", i), "tasks", i, tuple(t.dependencies)) for i, t in enumerate(self.tasks)
        ]
        points = [
            Node(p.id or default_id("synchronizationPoints", i), "synchronizationPoints", i, tuple(p.required_tasks))
            for i, p in enumerate(self.synchronization_points)
        ]
        return tasks, points


def _graph_error(problem: Problem) -> InitErrorDetails:
    where, message = problem
    return {"type": PydanticCustomError("graph", "{message}", {"message": message}), "loc": where, "input": None}


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
