"""Watching executions: the current state first, then every change in order, from the event log.

Subscriptions (GraphQL) are built on these generators. Each read uses a short session of its
own: a subscription may last hours and must not hold a database connection meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

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
TERMINAL_EVENTS = frozenset(
    {"workflow.execution.completed", "workflow.execution.failed", "workflow.execution.cancelled"}
)
#: Longest a watcher sleeps without looking at the log (a lost wake-up costs at most this).
RECHECK_SECONDS = 2.0
BATCH = 500

S = TypeVar("S")


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
            events = await self.feed.shared.get(
                ("events", row.id, cursor), partial(self._events_after, row.id, cursor)
            )
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
                    .where(
                        ExecutionEventRow.execution_id == execution_id, col(ExecutionEventRow.seq) > cursor
                    )
                    .order_by(col(ExecutionEventRow.seq))
                    .limit(BATCH)
                )
            )

    async def executions(self, execution_id: str) -> AsyncIterator[ExecutionDetail]:
        """The execution now, then again after every change; ends once it has finished."""
        async for detail in self._follow(execution_id, "execution", self._detail, lambda d: d.row):
            yield detail

    async def progress(self, execution_id: str) -> AsyncIterator[Progress]:
        """The progress report now, then after every change; ends once the execution has finished."""
        async for report in self._follow(execution_id, "progress", self._progress, lambda p: p.execution):
            yield report

    async def _follow(
        self,
        execution_id: str,
        kind: str,
        load: Callable[[str], Awaitable[S]],
        row_of: Callable[[S], ExecutionRow],
    ) -> AsyncIterator[S]:
        """A state now, then each newer one (the execution row's `last_seq` says how new), once
        each, until the execution has finished. A watcher that fell behind skips straight to the
        latest state instead of re-reading one per missed change. The state is loaded again only
        once `last_seq` moved: an idle execution costs its watchers one small query per period."""
        state = await load(execution_id)
        yield state
        while not _finished(row_of(state)):
            row = row_of(state)
            assert row.id is not None
            key, seen = row.id, row.last_seq
            await self.feed.wait_beyond(key, seen, RECHECK_SECONDS)
            latest = await self.feed.shared.get(
                ("last_seq", key, seen), partial(self._last_seq, key), keep=seen.__lt__
            )
            if latest <= seen:
                continue

            def moved(state: Any, seen: int = seen) -> bool:
                return row_of(state).last_seq > seen

            fresh = await self.feed.shared.get(
                (kind, execution_id, seen), lambda: load(execution_id), keep=moved
            )
            if row_of(fresh).last_seq > seen:
                state = fresh
                yield state

    async def _last_seq(self, execution_id: int) -> int:
        async with self.sessions() as session:
            found = (
                await session.exec(select(ExecutionRow.last_seq).where(ExecutionRow.id == execution_id))
            ).first()
        if found is None:
            raise ExecutionNotFound(str(execution_id))
        return found

    async def tasks(
        self, execution_id: str, after_seq: int | None = None
    ) -> AsyncIterator[tuple[TaskExecutionRow, int]]:
        """Every task execution as it is now, oldest change first, each with the sequence number
        of the event that left it so; then each task change as it happens, in order; ends once
        the execution has finished. With `after_seq`: every task change after it instead of the
        picture now, so a client that resumes after the last number it received misses nothing."""
        cursor = after_seq
        if cursor is None:
            # The execution first: if it had finished, every task read below is final.
            row = await self._execution(execution_id)
            async with self.sessions() as session:
                # One statement, so one consistent picture as of some batch of events (batches
                # commit whole and in order): following the log after its newest task misses nothing.
                tasks = list(
                    await session.exec(
                        select(TaskExecutionRow)
                        .where(TaskExecutionRow.execution_id == row.id)
                        .order_by(col(TaskExecutionRow.seq), col(TaskExecutionRow.id))
                    )
                )
            for task in tasks:
                yield task, task.seq
            if _finished(row):
                return
            cursor = max((t.seq for t in tasks), default=0)
        ids: dict[str, int] = {}
        async for change in self.changes(execution_id, cursor):
            for event in change.events:
                if event.type.startswith("task.execution."):
                    yield await self._task_state(event, ids), event.seq

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
