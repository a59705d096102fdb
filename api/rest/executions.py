"""Workflow executions: start, list, read, cancel, their tasks and progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import ApiVersion, ExecutionServiceDep, Operator, PaginationDep, ReconcilerDep, Viewer
from api.errors import (
    DefinitionNotFound,
    ExecutionConflict,
    ExecutionNotFound,
    Forbidden,
    InvalidInput,
    ServiceUnavailable,
)
from api.models.base import Page
from api.models.executions import (
    MAX_IDEMPOTENCY_KEY,
    ExecutionCreate,
    ExecutionPublic,
    ExecutionPublicV2,
    ExecutionStatus,
    ProgressPublic,
    TaskExecutionPublic,
    TaskStatus,
    present_execution,
    present_progress,
    present_task,
)
from api.problems import problem_responses
from api.services.pagination import Pagination

#: The on-demand reconciliation's finding (api.services.reconciler.Outcome).
RECONCILIATION_HEADER = "Reconciliation-Outcome"

router = APIRouter(prefix="/executions", tags=["workflow executions"], responses=problem_responses(Forbidden))

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY,
        description="Retrying a start with the same key returns the first execution instead of a second one.",
    ),
]


@router.post(
    "",
    status_code=201,
    responses=problem_responses(DefinitionNotFound, InvalidInput, ServiceUnavailable),
)
async def start_execution(
    data: ExecutionCreate,
    user: Operator,
    executions: ExecutionServiceDep,
    version: ApiVersion,
    idempotency_key: IdempotencyKey = None,
) -> ExecutionPublicV2 | ExecutionPublic:
    """Start an execution of a definition's current version."""
    detail = await executions.start(user, data, idempotency_key)
    return present_execution(detail.row, detail.tasks, version)


@router.get(
    "",
    responses={
        200: {
            "headers": {
                "Link": {
                    "description": 'The next page, as <URL>; rel="next", while executions remain. A page that would '
                    "embed too many task executions ends early: continue at offset + the number of items (v2: the "
                    "envelope's limit is then the page's size).",
                    "schema": {"type": "string"},
                }
            }
        },
        **problem_responses(InvalidInput),
    },
)
async def list_executions(
    request: Request,
    response: Response,
    user: Viewer,
    executions: ExecutionServiceDep,
    page: PaginationDep,
    version: ApiVersion,
    status: Annotated[ExecutionStatus | None, Query(description="Only executions in this status.")] = None,
    workflow_definition_id: Annotated[
        str | None,
        Query(alias="workflowDefinitionId", max_length=40, description="Only executions of this definition."),
    ] = None,
) -> list[ExecutionPublicV2 | ExecutionPublic] | Page[ExecutionPublicV2 | ExecutionPublic]:
    """Executions with their task executions, newest first (v1: an array; v2: a page envelope)."""
    items, total = await executions.list(page.limit, page.offset, status, workflow_definition_id)
    following = page.offset + len(items)
    if following < total:
        # A relative reference (behind a proxy this process does not know the public host), on the
        # path the client asked for (/api/v2/... stays v2).
        query = request.url.include_query_params(offset=following, limit=page.limit).query
        response.headers["Link"] = (
            f'<{request.scope.get("wfo.original_path", request.url.path)}?{query}>; rel="next"'
        )
        if len(items) < page.limit:
            page = Pagination(limit=len(items), offset=page.offset)
    return page.present(version, [present_execution(d.row, d.tasks, version) for d in items], total)


@router.get("/{execution_id}", responses=problem_responses(ExecutionNotFound))
async def get_execution(
    execution_id: str, user: Viewer, executions: ExecutionServiceDep, version: ApiVersion
) -> ExecutionPublicV2 | ExecutionPublic:
    """One execution with its task executions and context."""
    detail = await executions.get(execution_id)
    return present_execution(detail.row, detail.tasks, version)


@router.post(
    "/{execution_id}/cancel",
    responses=problem_responses(ExecutionNotFound, ExecutionConflict, ServiceUnavailable),
)
async def cancel_execution(
    execution_id: str, user: Operator, executions: ExecutionServiceDep, version: ApiVersion
) -> ExecutionPublicV2 | ExecutionPublic:
    """Cancel a running execution; answers with its cancelled state (409 once it has finished)."""
    detail = await executions.cancel(user, execution_id)
    return present_execution(detail.row, detail.tasks, version)


@router.post(
    "/{execution_id}/reconcile",
    responses={
        200: {
            "headers": {
                RECONCILIATION_HEADER: {
                    "description": "What it found: repaired, live (the run goes on), pending (diverging, within the "
                    "grace period), finished, moved (the execution changed meanwhile) or unchecked.",
                    "schema": {"type": "string"},
                }
            }
        },
        **problem_responses(ExecutionNotFound, ServiceUnavailable),
    },
)
async def reconcile_execution(
    execution_id: str, user: Operator, reconciler: ReconcilerDep, version: ApiVersion, response: Response
) -> ExecutionPublicV2 | ExecutionPublic:
    """Compare the execution with Temporal now and repair it where Temporal ended its run; answers with the execution."""
    reconciled = await reconciler.reconcile(execution_id)
    response.headers[RECONCILIATION_HEADER] = reconciled.reconciliation.outcome.value
    return present_execution(reconciled.detail.row, reconciled.detail.tasks, version)


@router.get("/{execution_id}/tasks", responses=problem_responses(ExecutionNotFound, InvalidInput))
async def list_task_executions(
    execution_id: str,
    user: Viewer,
    executions: ExecutionServiceDep,
    page: PaginationDep,
    version: ApiVersion,
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this status.")] = None,
) -> list[TaskExecutionPublic] | Page[TaskExecutionPublic]:
    """The execution's task executions, in the order they were first scheduled."""
    rows, total = await executions.tasks(execution_id, page.limit, page.offset, status)
    return page.present(version, [present_task(r) for r in rows], total)


@router.get("/{execution_id}/progress", responses=problem_responses(ExecutionNotFound))
async def get_progress(execution_id: str, user: Viewer, executions: ExecutionServiceDep) -> ProgressPublic:
    """Completed and total tasks, estimated completion, blockers and milestones."""
    progress = await executions.progress(execution_id)
    return present_progress(
        progress.execution, progress.estimated_completion, progress.blockers, progress.milestones
    )
