"""The read model writer: applies an execution's events to its rows, in order, exactly once.

Called by the `wfo.publish_events` local activity with the events of one workflow task. One
transaction per batch; events at or below the execution's `last_seq` were applied already and
are skipped, so a retried batch changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import utcnow
from api.models.executions import (
    BlockerRow,
    ExecutionEventRow,
    ExecutionRow,
    MilestoneRow,
    TaskExecutionRow,
    event_time,
)
from api.services.events import NOTIFY_CHANNEL
from api.services.outbox import queue_deliveries
from workflows.inputs import Event, EventBatch

log = logging.getLogger(__name__)

_EXECUTION_END = {
    "workflow.execution.completed",
    "workflow.execution.failed",
    "workflow.execution.cancelled",
}


class UnknownExecution(Exception):
    """A batch for an execution the database does not have."""


async def lock_execution(session: AsyncSession, execution_id: int) -> ExecutionRow | None:
    """The execution row, write-locked for this transaction on both databases."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: a first write takes the database's write lock right away, so
        # the reads below see the state this transaction will change (and writers queue up).
        await session.exec(sa.update(ExecutionRow).where(col(ExecutionRow.id) == execution_id).values(last_seq=ExecutionRow.last_seq))
    return await session.get(ExecutionRow, execution_id, with_for_update=True, populate_existing=True)


async def apply_batch(session: AsyncSession, batch: EventBatch) -> int:
    """Apply the new events of a batch; returns how many were new."""
    execution_id = int(batch.execution_id)
    execution = await lock_execution(session, execution_id)
    if execution is None:
        await session.rollback()
        raise UnknownExecution(f"execution {batch.execution_id} is not in the database")
    fresh = [e for e in batch.events if e.seq > execution.last_seq]
    if not fresh:
        await session.rollback()
        return 0
    writer = _Writer(session, execution, batch)
    await writer.prefetch_tasks({e.data["taskId"] for e in fresh if e.data.get("taskId")})
    written: list[tuple[Event, ExecutionEventRow]] = []
    for event in fresh:
        row = ExecutionEventRow(
            execution_id=execution_id, seq=event.seq, type=event.type, created_at=event.at, data=_jsonable(event.data)
        )
        session.add(row)
        written.append((event, row))
        await writer.apply(event)
    # Webhook deliveries are written with the events they carry: one transaction, none lost.
    await queue_deliveries(session, execution, written, writer.tasks, writer.blockers)
    execution.last_seq = fresh[-1].seq
    # The run now writing: a long execution continues as new runs under one workflow id.
    execution.run_id = batch.run_id or execution.run_id
    execution.updated_at = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at commit: watchers on every API replica wake at once (SQLite: they poll).
        await session.exec(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, batch.execution_id)))
    await session.commit()
    return len(fresh)


class _Writer:
    def __init__(self, session: AsyncSession, execution: ExecutionRow, batch: EventBatch):
        self.session = session
        self.execution = execution
        self.batch = batch
        #: The rows of the tasks this batch touches (prefetch_tasks), and those it creates.
        self.tasks: dict[str, TaskExecutionRow] = {}
        self.blockers: dict[str, BlockerRow] = {}

    async def apply(self, event: Event) -> None:
        data = event.data
        kind = event.type
        if kind == "workflow.execution.started":
            await self._started(event)
        elif kind.startswith("task.execution."):
            await self._task(event)
        elif kind == "milestone.achieved":
            await self.session.exec(
                sa.update(MilestoneRow)
                .where(col(MilestoneRow.execution_id) == self.execution.id, col(MilestoneRow.key) == data["key"])
                .values(achieved_at=event_time(data["achievedAt"]))
            )
        elif kind == "blocker.detected":
            task_row = await self._task_row(data["taskId"]) if data.get("taskId") else None
            blocker = BlockerRow(
                execution_id=self.execution.id,
                key=data["key"],
                kind=data["kind"],
                task_execution_id=task_row.id if task_row else None,
                description=data["description"],
                created_at=event_time(data["createdAt"]),
            )
            self.session.add(blocker)
            self.blockers[data["key"]] = blocker
        elif kind == "blocker.resolved":
            await self.session.flush()
            await self.session.exec(
                sa.update(BlockerRow)
                .where(
                    col(BlockerRow.execution_id) == self.execution.id,
                    col(BlockerRow.key) == data["key"],
                    col(BlockerRow.resolved_at).is_(None),
                )
                .values(resolved_at=event_time(data["resolvedAt"]))
            )
        elif kind == "progress.updated":
            self.execution.completed_tasks = data["completedTasks"]
        elif kind in _EXECUTION_END:
            self.execution.status = data["status"]
            self.execution.end_time = event_time(data.get("endTime"))
            self.execution.error = data.get("error")

    async def _started(self, event: Event) -> None:
        data = event.data
        execution = self.execution
        execution.status = data["status"]
        execution.end_time, execution.error = None, None
        execution.workflow_id = data.get("workflowId", execution.workflow_id)
        execution.total_tasks = data.get("totalTasks", execution.total_tasks)
        existing = set(
            (await self.session.exec(select(MilestoneRow.key).where(MilestoneRow.execution_id == execution.id))).all()
        )
        for position, milestone in enumerate(data.get("milestones", [])):
            if milestone["key"] not in existing:
                self.session.add(
                    MilestoneRow(
                        execution_id=execution.id,
                        key=milestone["key"],
                        position=position,
                        name=milestone["name"],
                        description=milestone.get("description"),
                    )
                )

    async def _task(self, event: Event) -> None:
        data = event.data
        row = await self._task_row(data["taskId"])
        if row is None:
            row = TaskExecutionRow(
                execution_id=self.execution.id,
                task_definition_id=data["taskId"],
                name=data.get("name", data["taskId"]),
                type=data.get("type", "noop"),
                status=data["status"],
            )
            self.session.add(row)
            self.tasks[data["taskId"]] = row
        row.status = data["status"]
        row.start_time = event_time(data.get("startTime"))
        row.end_time = event_time(data.get("endTime"))
        row.attempts = data.get("attempts", row.attempts)
        row.error = data.get("error")
        row.resources = _jsonable(data.get("resources"))
        row.updated_at = event.at
        row.seq = event.seq
        if event.type == "task.execution.completed" and "contextKey" in data:
            # A new dict: SQLAlchemy notices a replaced JSON value, not an in-place change.
            self.execution.context = {**self.execution.context, data["contextKey"]: data.get("result")}
            self.execution.context_version = data["contextVersion"]
            self.execution.context_updated_at = event.at

    async def prefetch_tasks(self, task_ids: set[str]) -> None:
        """The rows of every task the batch touches, in one query (not one per task)."""
        if not task_ids:
            return
        rows = await self.session.exec(
            select(TaskExecutionRow).where(
                TaskExecutionRow.execution_id == self.execution.id, col(TaskExecutionRow.task_definition_id).in_(task_ids)
            )
        )
        for row in rows:
            self.tasks[row.task_definition_id] = row

    async def _task_row(self, task_id: str) -> TaskExecutionRow | None:
        """The task's row: prefetched, or created by an earlier event of this batch (None: neither)."""
        row = self.tasks.get(task_id)
        if row is not None and row.id is None:
            await self.session.flush()
        return row


def _jsonable(value: Any) -> Any:
    """Event data with datetimes as ISO text, for the JSON columns."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
