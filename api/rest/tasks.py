"""Task executions: retry a failed one, decide an approval."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ExecutionServiceDep, Operator
from api.errors import ExecutionConflict, Forbidden, InvalidInput, ServiceUnavailable, TaskExecutionNotFound
from api.models.executions import TaskCompletion, TaskExecutionPublic, TaskRejection, present_task
from api.problems import problem_responses

router = APIRouter(
    prefix="/tasks",
    tags=["task executions"],
    responses=problem_responses(Forbidden, TaskExecutionNotFound, ExecutionConflict, ServiceUnavailable),
)


@router.post("/{task_execution_id}/retry")
async def retry_task(
    task_execution_id: str, user: Operator, executions: ExecutionServiceDep
) -> TaskExecutionPublic:
    """Run a FAILED task again, then what depends on it; a failed execution reopens. 409 unless FAILED."""
    return present_task(await executions.retry_task(user, task_execution_id))


@router.post("/{task_execution_id}/complete", responses=problem_responses(InvalidInput))
async def complete_task(
    task_execution_id: str,
    user: Operator,
    executions: ExecutionServiceDep,
    data: TaskCompletion | None = None,
) -> TaskExecutionPublic:
    """Approve a WAITING approval task; `output` becomes its result in the context."""
    output = data.output if data is not None else None
    return present_task(await executions.decide(user, task_execution_id, approve=True, value=output))


@router.post("/{task_execution_id}/reject", responses=problem_responses(InvalidInput))
async def reject_task(
    task_execution_id: str, user: Operator, executions: ExecutionServiceDep, data: TaskRejection | None = None
) -> TaskExecutionPublic:
    """Reject a WAITING approval task: it fails (and may be retried)."""
    reason = data.reason if data is not None else None
    return present_task(await executions.decide(user, task_execution_id, approve=False, value=reason))
