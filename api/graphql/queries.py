"""Queries: one line over the services each."""

from __future__ import annotations

import strawberry
from strawberry import Info

from api.graphql.context import Context
from api.graphql.types import (
    ExecutionStatus,
    ProgressReport,
    TaskExecution,
    TaskExecutionPage,
    TaskStatus,
    User,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookPage,
    WorkflowDefinition,
    WorkflowDefinitionPage,
    WorkflowDefinitionVersionPage,
    WorkflowExecution,
    WorkflowExecutionPage,
)
from api.models.executions import ExecutionStatus as ExecutionStatusValue
from api.models.executions import TaskStatus as TaskStatusValue
from api.services.pagination import Pagination
from api.services.webhooks import present, present_delivery


def page(info: Info[Context, None], limit: int, offset: int) -> Pagination:
    """The REST API's pagination rules (and messages) for GraphQL arguments."""
    return Pagination.checked(info.context.settings, limit, offset)


@strawberry.type
class Query:
    @strawberry.field(description="The caller.")
    async def me(self, info: Info[Context, None]) -> User:
        user = await info.context.principal()
        async with info.context.services() as services:
            return User.of(await services.users.get(str(user.id)))

    @strawberry.field
    async def workflow_definition(self, info: Info[Context, None], id: strawberry.ID) -> WorkflowDefinition:
        await info.context.principal()
        async with info.context.services() as services:
            return WorkflowDefinition.of(await services.definitions.get(id))

    @strawberry.field(description="Workflow definitions at their current versions, oldest first.")
    async def workflow_definitions(
        self, info: Info[Context, None], limit: int = 10, offset: int = 0
    ) -> WorkflowDefinitionPage:
        await info.context.principal()
        p = page(info, limit, offset)
        async with info.context.services() as services:
            items, total = await services.definitions.list(p.limit, p.offset)
        return WorkflowDefinitionPage(
            items=[WorkflowDefinition.of(d) for d in items], total=total, limit=p.limit, offset=p.offset
        )

    @strawberry.field(description="Every stored version of a definition, oldest first.")
    async def workflow_definition_versions(
        self, info: Info[Context, None], id: strawberry.ID, limit: int = 10, offset: int = 0
    ) -> WorkflowDefinitionVersionPage:
        from api.graphql.types import WorkflowDefinitionVersion

        await info.context.principal()
        p = page(info, limit, offset)
        async with info.context.services() as services:
            items, total = await services.definitions.versions(id, p.limit, p.offset)
        return WorkflowDefinitionVersionPage(
            items=[WorkflowDefinitionVersion.of(v) for v in items],
            total=total,
            limit=p.limit,
            offset=p.offset,
        )

    @strawberry.field(description="A definition as it was at one version.")
    async def workflow_definition_version(
        self, info: Info[Context, None], id: strawberry.ID, version: str
    ) -> WorkflowDefinition:
        await info.context.principal()
        async with info.context.services() as services:
            return WorkflowDefinition.of(await services.definitions.version(id, version))

    @strawberry.field
    async def workflow_execution(self, info: Info[Context, None], id: strawberry.ID) -> WorkflowExecution:
        await info.context.principal()
        async with info.context.services() as services:
            detail = await services.executions.get(id)
        return WorkflowExecution.of(detail.row, detail.tasks)

    @strawberry.field(description="Executions, newest first.")
    async def workflow_executions(
        self,
        info: Info[Context, None],
        limit: int = 10,
        offset: int = 0,
        status: ExecutionStatus | None = None,
        workflow_definition_id: strawberry.ID | None = None,
    ) -> WorkflowExecutionPage:
        await info.context.principal()
        p = page(info, limit, offset)
        wanted = ExecutionStatusValue(status.value) if status else None
        async with info.context.services() as services:
            items, total = await services.executions.list(
                p.limit, p.offset, wanted, workflow_definition_id, with_tasks=False
            )
        # Task executions, if asked for, come through one DataLoader query for the whole page.
        return WorkflowExecutionPage(
            items=[WorkflowExecution.of(d.row) for d in items], total=total, limit=p.limit, offset=p.offset
        )

    @strawberry.field(description="An execution's task executions, in the order they were first scheduled.")
    async def task_executions(
        self,
        info: Info[Context, None],
        workflow_execution_id: strawberry.ID,
        status: TaskStatus | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> TaskExecutionPage:
        await info.context.principal()
        p = page(info, limit, offset)
        wanted = TaskStatusValue(status.value) if status else None
        async with info.context.services() as services:
            rows, total = await services.executions.tasks(workflow_execution_id, p.limit, p.offset, wanted)
        return TaskExecutionPage(
            items=[TaskExecution.of(r) for r in rows], total=total, limit=p.limit, offset=p.offset
        )

    @strawberry.field(description="Your webhooks (admins: all); secrets masked.")
    async def webhooks(self, info: Info[Context, None], limit: int = 10, offset: int = 0) -> WebhookPage:
        user = await info.context.principal()
        p = page(info, limit, offset)
        async with info.context.services() as services:
            rows, total = await services.webhooks.list(user, p.limit, p.offset)
        return WebhookPage(
            items=[Webhook.of(present(r, 2)) for r in rows], total=total, limit=p.limit, offset=p.offset
        )

    @strawberry.field
    async def webhook(self, info: Info[Context, None], id: strawberry.ID) -> Webhook:
        user = await info.context.principal()
        async with info.context.services() as services:
            return Webhook.of(present(await services.webhooks.get(user, id), 2))

    @strawberry.field(description="A webhook's deliveries, newest first.")
    async def webhook_deliveries(
        self, info: Info[Context, None], webhook_id: strawberry.ID, limit: int = 10, offset: int = 0
    ) -> WebhookDeliveryPage:
        user = await info.context.principal()
        p = page(info, limit, offset)
        async with info.context.services() as services:
            rows, total = await services.webhooks.deliveries(user, webhook_id, p.limit, p.offset)
        return WebhookDeliveryPage(
            items=[WebhookDelivery.of(present_delivery(r)) for r in rows],
            total=total,
            limit=p.limit,
            offset=p.offset,
        )

    @strawberry.field
    async def progress_report(
        self, info: Info[Context, None], workflow_execution_id: strawberry.ID
    ) -> ProgressReport:
        await info.context.principal()
        async with info.context.services() as services:
            return ProgressReport.of(await services.executions.progress(workflow_execution_id))
