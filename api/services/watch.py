"""Watching executions: the current state first, then every change in order, from the event log.

Subscriptions (GraphQL) are built on these generators. Each read uses a short session of its
own: a subscription may last hours and must not hold a database connection meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlmodel import col, select
from temporalio.client import Client

from api.db import SessionFactory
from api.errors import ExecutionNotFound
from api.models.executions import ExecutionEventRow, ExecutionRow, TaskExecutionRow, event_time
from api.services.events import EventFeed
from api.services.executions import ExecutionDetail, ExecutionService, Progress
from api.services.users import parse_id
from api.settings import Settings

#: Event types after which an execution has finished (until a retry reopens it).
TERMINAL_EVENTS = frozenset({"workflow.execution.completed", "workflow.execution.failed", "workflow.execution.cancelled"})
#: Longest a watcher sleeps without looking at the log (a lost wake-up costs at most this).
RECHECK_SECONDS = 2.0
BATCH = 500


@dataclass(frozen=True, slots=True)
class Change:
    """Events read in one go, and whether the execution finished with them."""

    events: list[ExecutionEventRow]
    finished: bool


class ExecutionWatcher:
    def __init__(self, sessions: SessionFactory, feed: EventFeed, settings: Settings, temporal: Client):
        self.sessions = sessions
        self.feed = feed
        self.settings = settings
        self.temporal = temporal

    async def _execution(self, execution_id: str) -> ExecutionRow:
        key = parse_id(execution_id)
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, key) if key is not None else None
        if row is None:
            raise ExecutionNotFound(execution_id)
        return row

    async def changes(self, execution_id: str, after_seq: int) -> AsyncIterator[Change]:
        """Events after `after_seq`, in order, in batches; ends with the batch that finishes the execution."""
        row = await self._execution(execution_id)
        assert row.id is not None
        cursor = after_seq
        while True:
            events = await self.feed.shared.get(("events", row.id, cursor), lambda: self._events_after(row.id, cursor))
            if not events:
                await self.feed.wait_beyond(row.id, cursor, RECHECK_SECONDS)
                continue
            cursor = events[-1].seq
            finished = any(e.type in TERMINAL_EVENTS for e in events)
            yield Change(events, finished)
            if finished:
                return

    async def _events_after(self, execution_id: int | None, cursor: int) -> list[ExecutionEventRow]:
        async with self.sessions() as session:
            return list(
                await session.exec(
                    select(ExecutionEventRow)
                    .where(ExecutionEventRow.execution_id == execution_id, col(ExecutionEventRow.seq) > cursor)
                    .order_by(col(ExecutionEventRow.seq))
                    .limit(BATCH)
                )
            )

    async def executions(self, execution_id: str) -> AsyncIterator[ExecutionDetail]:
        """The execution now, then again after every change; ends once it has finished."""
        detail = await self._detail(execution_id)
        yield detail
        if _finished(detail.row):
            return
        async for change in self.changes(execution_id, detail.row.last_seq):
            detail = await self.feed.shared.get(
                ("execution", execution_id, change.events[-1].seq), lambda: self._detail(execution_id)
            )
            yield detail

    async def tasks(self, execution_id: str, after_seq: int | None = None) -> AsyncIterator[tuple[TaskExecutionRow, int]]:
        """Every task execution now (unless resuming after a sequence number), then each task
        change as it happened, in order, each with the sequence number it is current as of;
        ends once the execution has finished."""
        if after_seq is None:
            detail = await self._detail(execution_id)
            for task in detail.tasks:
                yield task, detail.row.last_seq
            if _finished(detail.row):
                return
            after_seq = detail.row.last_seq
        ids: dict[str, int] = {}
        async for change in self.changes(execution_id, after_seq):
            for event in change.events:
                if event.type.startswith("task.execution."):
                    yield await self._task_state(event, ids), event.seq

    async def progress(self, execution_id: str) -> AsyncIterator[Progress]:
        """The progress report now, then after every change; ends once the execution has finished."""
        report = await self._progress(execution_id)
        yield report
        if _finished(report.execution):
            return
        async for change in self.changes(execution_id, report.execution.last_seq):
            yield await self.feed.shared.get(
                ("progress", execution_id, change.events[-1].seq), lambda: self._progress(execution_id)
            )

    async def _detail(self, execution_id: str) -> ExecutionDetail:
        async with self.sessions() as session:
            return await ExecutionService(session, self.settings, self.temporal).get(execution_id)

    async def _progress(self, execution_id: str) -> Progress:
        async with self.sessions() as session:
            return await ExecutionService(session, self.settings, self.temporal).progress(execution_id)

    async def _task_state(self, event: ExecutionEventRow, ids: dict[str, int]) -> TaskExecutionRow:
        """The task execution as this event left it (the row may have moved on since)."""
        data = event.data
        task_id = data["taskId"]
        if task_id not in ids:
            async with self.sessions() as session:
                found = (
                    await session.exec(
                        select(TaskExecutionRow.id).where(
                            TaskExecutionRow.execution_id == event.execution_id,
                            TaskExecutionRow.task_definition_id == task_id,
                        )
                    )
                ).first()
            assert found is not None, "the writer creates the row with its first event"
            ids[task_id] = found
        return TaskExecutionRow(
            id=ids[task_id],
            execution_id=event.execution_id,
            task_definition_id=task_id,
            name=data.get("name", task_id),
            type=data.get("type", "noop"),
            status=data["status"],
            start_time=event_time(data.get("startTime")),
            end_time=event_time(data.get("endTime")),
            attempts=data.get("attempts", 0),
            error=data.get("error"),
            resources=data.get("resources"),
            updated_at=event.created_at,
        )


def _finished(row: ExecutionRow) -> bool:
    return row.status != "RUNNING"

