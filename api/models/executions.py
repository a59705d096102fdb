"""Executions: the read model tables (kept current from the workflow's events) and API shapes."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field, StringConstraints
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Column_

from api.db import JSONDocument, UTCDateTime, utcnow
from api.models.base import ApiModel, RequestModel, Timestamp

#: Longest idempotency key a start takes (the REST header and the GraphQL field alike).
MAX_IDEMPOTENCY_KEY = 255


class ExecutionStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self is not ExecutionStatus.RUNNING


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    WAITING = "WAITING"


# --- tables --------------------------------------------------------------------------------


class ExecutionRow(SQLModel, table=True):
    __tablename__ = "executions"
    __table_args__ = (sa.UniqueConstraint("created_by", "idempotency_key", name="uq_execution_idempotency"),)

    id: int | None = Column_(default=None, primary_key=True)
    definition_id: int = Column_(
        sa_column=Column(sa.Integer, sa.ForeignKey("workflow_definitions.id"), nullable=False, index=True)
    )
    definition_version: str = Column_(sa_column=Column(sa.String(32), nullable=False))
    status: str = Column_(sa_column=Column(sa.String(16), nullable=False, index=True))
    start_time: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    end_time: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    error: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    workflow_id: str = Column_(sa_column=Column(sa.String(255), nullable=False))
    run_id: str | None = Column_(default=None, sa_column=Column(sa.String(64), nullable=True))
    created_by: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True))
    idempotency_key: str | None = Column_(
        default=None, sa_column=Column(sa.String(MAX_IDEMPOTENCY_KEY), nullable=True)
    )
    #: Digest of the request a key was first used with: the same key with another request is refused.
    request_digest: str | None = Column_(default=None, sa_column=Column(sa.String(64), nullable=True))
    context: dict[str, Any] = Column_(sa_column=Column(JSONDocument, nullable=False))
    context_version: int = Column_(default=1, sa_column=Column(sa.Integer, nullable=False))
    context_created_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    context_updated_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    total_tasks: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    completed_tasks: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    #: Sequence number of the last event applied: a replayed batch changes nothing.
    last_seq: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    updated_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class TaskExecutionRow(SQLModel, table=True):
    __tablename__ = "task_executions"
    __table_args__ = (sa.UniqueConstraint("execution_id", "task_definition_id", name="uq_task_execution"),)

    id: int | None = Column_(default=None, primary_key=True)
    execution_id: int = Column_(sa_column=Column(sa.Integer, sa.ForeignKey("executions.id"), nullable=False))
    task_definition_id: str = Column_(sa_column=Column(sa.String(128), nullable=False))
    name: str = Column_(sa_column=Column(sa.String(200), nullable=False))
    type: str = Column_(sa_column=Column(sa.String(100), nullable=False))
    status: str = Column_(sa_column=Column(sa.String(16), nullable=False))
    start_time: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    end_time: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    attempts: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    error: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    resources: dict[str, Any] | None = Column_(default=None, sa_column=Column(JSONDocument, nullable=True))
    updated_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    #: The sequence number of the event that left the task in this state.
    seq: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False, server_default="0"))


class ExecutionEventRow(SQLModel, table=True):
    """The event log: one row per state change, numbered per execution; `id` orders all of them."""

    __tablename__ = "execution_events"
    __table_args__ = (sa.UniqueConstraint("execution_id", "seq", name="uq_execution_event_seq"),)

    id: int | None = Column_(default=None, primary_key=True)
    execution_id: int = Column_(sa_column=Column(sa.Integer, sa.ForeignKey("executions.id"), nullable=False))
    seq: int = Column_(sa_column=Column(sa.Integer, nullable=False))
    type: str = Column_(sa_column=Column(sa.String(64), nullable=False))
    created_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    data: dict[str, Any] = Column_(sa_column=Column(JSONDocument, nullable=False))


class MilestoneRow(SQLModel, table=True):
    __tablename__ = "milestones"
    __table_args__ = (sa.UniqueConstraint("execution_id", "key", name="uq_milestone_key"),)

    id: int | None = Column_(default=None, primary_key=True)
    execution_id: int = Column_(sa_column=Column(sa.Integer, sa.ForeignKey("executions.id"), nullable=False))
    key: str = Column_(sa_column=Column(sa.String(160), nullable=False))
    position: int = Column_(sa_column=Column(sa.Integer, nullable=False))
    name: str = Column_(sa_column=Column(sa.String(200), nullable=False))
    description: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    achieved_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))


class BlockerRow(SQLModel, table=True):
    __tablename__ = "blockers"

    id: int | None = Column_(default=None, primary_key=True)
    execution_id: int = Column_(
        sa_column=Column(sa.Integer, sa.ForeignKey("executions.id"), nullable=False, index=True)
    )
    key: str = Column_(sa_column=Column(sa.String(200), nullable=False))
    kind: str = Column_(sa_column=Column(sa.String(32), nullable=False))
    task_execution_id: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True))
    description: str = Column_(sa_column=Column(sa.Text, nullable=False))
    created_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    resolved_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))


# --- requests ------------------------------------------------------------------------------


class ExecutionCreate(RequestModel):
    workflow_definition_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    initial_context: dict[str, Any] | None = Field(None, description="The execution's starting context.")


class TaskCompletion(RequestModel):
    output: Any = Field(None, description="The approval task's result, merged into the context.")


class TaskRejection(RequestModel):
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


# --- responses -----------------------------------------------------------------------------


class TaskExecutionPublic(ApiModel):
    id: str
    task_definition_id: str
    status: TaskStatus
    start_time: Timestamp | None
    end_time: Timestamp | None
    attempts: int
    error: str | None
    resources: dict[str, Any] | None


class ContextPublic(ApiModel):
    id: str
    data: str = Field(description="v1: the context as a JSON string, as the API reference shows.")
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class ContextPublicV2(ContextPublic):
    data: dict[str, Any] = Field(description="The context as a JSON object.")  # type: ignore[assignment]


class ExecutionPublic(ApiModel):
    id: str
    workflow_definition_id: str
    status: ExecutionStatus
    start_time: Timestamp
    end_time: Timestamp | None
    task_executions: list[TaskExecutionPublic]
    context: ContextPublic


class ExecutionPublicV2(ExecutionPublic):
    """v2 adds the definition version, the failure reason and the context as an object."""

    workflow_definition_version: str
    error: str | None
    context: ContextPublicV2


class BlockerPublic(ApiModel):
    id: str
    task_execution_id: str | None
    description: str
    created_at: Timestamp
    resolved_at: Timestamp | None


class MilestonePublic(ApiModel):
    id: str
    name: str
    description: str | None
    achieved: bool
    achieved_at: Timestamp | None


class ProgressPublic(ApiModel):
    id: str
    workflow_execution_id: str
    completed_tasks: int
    total_tasks: int
    estimated_completion: Timestamp | None
    blockers: list[BlockerPublic]
    milestones: list[MilestonePublic]


def event_time(value: datetime | str | None) -> datetime | None:
    """Times inside event data arrive as ISO text (Temporal's JSON), at the top level as datetimes."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def compact_json(value: Any) -> str:
    """The context as the API reference shows it: compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- presenting rows --------------------------------------------------------------------------


def present_task(row: TaskExecutionRow) -> TaskExecutionPublic:
    return TaskExecutionPublic(
        id=str(row.id),
        task_definition_id=row.task_definition_id,
        status=TaskStatus(row.status),
        start_time=row.start_time,
        end_time=row.end_time,
        attempts=row.attempts,
        error=row.error,
        resources=row.resources,
    )


def present_execution(row: ExecutionRow, tasks: list[TaskExecutionRow], version: int) -> ExecutionPublic:
    """v1: the API reference's shape (context.data as JSON text); v2: more fields, data as an object."""
    common: dict[str, Any] = {
        "id": str(row.id),
        "workflow_definition_id": str(row.definition_id),
        "status": ExecutionStatus(row.status),
        "start_time": row.start_time,
        "end_time": row.end_time,
        "task_executions": [present_task(t) for t in tasks],
    }
    context: dict[str, Any] = {
        "id": str(row.id),
        "version": row.context_version,
        "created_at": row.context_created_at,
        "updated_at": row.context_updated_at,
    }
    if version >= 2:
        return ExecutionPublicV2(
            **common,
            workflow_definition_version=row.definition_version,
            error=row.error,
            context=ContextPublicV2(**context, data=row.context),
        )
    return ExecutionPublic(**common, context=ContextPublic(**context, data=compact_json(row.context)))


def present_progress(
    row: ExecutionRow, estimate: datetime | None, blockers: list[BlockerRow], milestones: list[MilestoneRow]
) -> ProgressPublic:
    return ProgressPublic(
        id=str(row.id),
        workflow_execution_id=str(row.id),
        completed_tasks=row.completed_tasks,
        total_tasks=row.total_tasks,
        estimated_completion=estimate,
        blockers=[
            BlockerPublic(
                id=str(b.id),
                task_execution_id=str(b.task_execution_id) if b.task_execution_id is not None else None,
                description=b.description,
                created_at=b.created_at,
                resolved_at=b.resolved_at,
            )
            for b in blockers
        ],
        milestones=[
            MilestonePublic(
                id=str(m.id),
                name=m.name,
                description=m.description,
                achieved=m.achieved_at is not None,
                achieved_at=m.achieved_at,
            )
            for m in milestones
        ],
    )
