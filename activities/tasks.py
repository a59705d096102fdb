"""Task-type activities (queue wfo-tasks or a task's own queue). No database access here."""

from __future__ import annotations

from temporalio import activity

from workflows.inputs import TaskInput


@activity.defn(name="noop")
async def noop(task: TaskInput) -> str:
    """Completes at once."""
    activity.logger.debug("noop task %s of execution %s", task.task_id, task.execution_id)
    return "success"


TASK_ACTIVITIES = [noop]
