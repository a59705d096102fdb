"""When will an execution finish? The remaining critical path, timed by what is known.

Each remaining task is timed by the mean duration of the same task in earlier completed
executions of the definition; failing that, by the mean of the tasks this run has finished.
With neither, there is nothing to go on and the estimate is None.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import utcnow
from api.models.executions import ExecutionRow, ExecutionStatus, TaskExecutionRow, TaskStatus

#: How many earlier completed executions inform the estimate.
HISTORY_EXECUTIONS = 20


async def task_history(session: AsyncSession, execution: ExecutionRow) -> dict[str, float]:
    """Mean seconds per task id over the definition's latest completed executions (this one excluded)."""
    recent = (
        select(ExecutionRow.id)
        .where(
            ExecutionRow.definition_id == execution.definition_id,
            ExecutionRow.status == ExecutionStatus.COMPLETED.value,
            col(ExecutionRow.id) != execution.id,
        )
        .order_by(col(ExecutionRow.id).desc())
        .limit(HISTORY_EXECUTIONS)
    )
    rows = await session.exec(
        select(
            TaskExecutionRow.task_definition_id, TaskExecutionRow.start_time, TaskExecutionRow.end_time
        ).where(
            col(TaskExecutionRow.execution_id).in_(recent.scalar_subquery()),
            TaskExecutionRow.status == TaskStatus.COMPLETED.value,
        )
    )
    samples: dict[str, list[float]] = defaultdict(list)
    for task_id, started, ended in rows:
        if started is not None and ended is not None:
            samples[task_id].append((ended - started).total_seconds())
    return {task_id: sum(values) / len(values) for task_id, values in samples.items()}


def remaining_critical_path(
    document: dict[str, Any],
    tasks: dict[str, TaskExecutionRow],
    history: dict[str, float],
    now: datetime,
) -> float | None:
    """Seconds until the last remaining task ends, or None with nothing to time a task by."""
    finished = [
        (t.end_time - t.start_time).total_seconds()
        for t in tasks.values()
        if t.status == TaskStatus.COMPLETED and t.start_time and t.end_time
    ]
    fallback = sum(finished) / len(finished) if finished else None
    specs = {t["id"]: t for t in document["tasks"]}
    required = {p["id"]: p["requiredTasks"] for p in document["synchronizationPoints"]}

    def duration(task_id: str) -> float | None:
        expected = history.get(task_id, fallback)
        if expected is None:
            return None
        row = tasks.get(task_id)
        if row is not None and row.status in (TaskStatus.RUNNING, TaskStatus.WAITING) and row.start_time:
            return max(expected - (now - row.start_time).total_seconds(), 0.0)
        return expected

    # finish[n]: seconds from now until node n is done; iterative, dependencies first.
    finish: dict[str, float] = {}
    for task_id in specs:
        if tasks.get(task_id) is not None and tasks[task_id].status == TaskStatus.COMPLETED:
            finish[task_id] = 0.0
    stack = [n for n in specs if n not in finish]
    while stack:
        node = stack[-1]
        if node in finish:
            stack.pop()
            continue
        deps = specs[node]["dependencies"] if node in specs else required.get(node, [])
        missing = [d for d in deps if d not in finish]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        start = max((finish[d] for d in deps), default=0.0)
        if node in specs:
            own = duration(node)
            if own is None:
                return None
            finish[node] = start + own
        else:
            finish[node] = start
    return max((finish[t] for t in specs), default=0.0)


async def estimate_completion(
    session: AsyncSession, execution: ExecutionRow, document: dict[str, Any]
) -> datetime | None:
    status = ExecutionStatus(execution.status)
    if status is ExecutionStatus.COMPLETED:
        return execution.end_time
    if status is not ExecutionStatus.RUNNING:
        return None
    rows = await session.exec(select(TaskExecutionRow).where(TaskExecutionRow.execution_id == execution.id))
    tasks = {row.task_definition_id: row for row in rows}
    now = utcnow()
    seconds = remaining_critical_path(document, tasks, await task_history(session, execution), now)
    return None if seconds is None else now + timedelta(seconds=seconds)
