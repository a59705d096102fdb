"""Subscriptions: the current state first, then every change in order, from the event log;
each ends when the execution finishes. They work on any replica (the log is shared)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

import strawberry
from graphql import GraphQLError
from strawberry import Info

from api.errors import AppError
from api.graphql.context import Context
from api.graphql.errors import code_of
from api.graphql.types import ExecutionEvent, ProgressReport, TaskExecution, WorkflowExecution

T = TypeVar("T")


async def _guarded(source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """AppErrors as GraphQL errors with their code (the operation-level extension does not see these)."""
    try:
        async for item in source:
            yield item
    except AppError as exc:
        raise GraphQLError(exc.detail, extensions={"code": code_of(exc), "status": exc.status}) from exc


async def _authorized(info: Info[Context, None]) -> None:
    try:
        await info.context.principal()
    except AppError as exc:
        raise GraphQLError(exc.detail, extensions={"code": code_of(exc), "status": exc.status}) from exc


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The execution now, then after each change, until it finishes.")
    async def workflow_execution_updated(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> AsyncGenerator[WorkflowExecution, None]:
        await _authorized(info)
        async for detail in _guarded(info.context.watcher().executions(id)):
            yield WorkflowExecution.of(detail.row, detail.tasks)

    @strawberry.subscription(
        description="Every task execution as it is now (oldest change first), then each task change in order, "
        "until the execution finishes. With afterSequence (the last `sequence` received): every task change "
        "after it instead, so a client that reconnects misses nothing."
    )
    async def task_execution_updated(
        self,
        info: Info[Context, None],
        workflow_execution_id: strawberry.ID,
        after_sequence: int | None = None,
    ) -> AsyncGenerator[TaskExecution, None]:
        await _authorized(info)
        async for row, sequence in _guarded(
            info.context.watcher().tasks(workflow_execution_id, after_sequence)
        ):
            yield TaskExecution.of(row, sequence)

    @strawberry.subscription(
        description="The progress report now, then after each change, until the execution finishes."
    )
    async def progress_report_updated(
        self, info: Info[Context, None], workflow_execution_id: strawberry.ID
    ) -> AsyncGenerator[ProgressReport, None]:
        await _authorized(info)
        async for progress in _guarded(info.context.watcher().progress(workflow_execution_id)):
            yield ProgressReport.of(progress)

    @strawberry.subscription(
        description="The execution's event log after a sequence number, until it finishes."
    )
    async def execution_events(
        self, info: Info[Context, None], workflow_execution_id: strawberry.ID, after_sequence: int = 0
    ) -> AsyncGenerator[ExecutionEvent, None]:
        await _authorized(info)
        async for change in _guarded(info.context.watcher().changes(workflow_execution_id, after_sequence)):
            for event in change.events:
                yield ExecutionEvent(
                    sequence=event.seq, type=event.type, created_at=event.created_at, data=event.data
                )
