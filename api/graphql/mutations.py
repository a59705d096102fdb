"""Mutations: one line over the services each; inputs are validated exactly as REST bodies are."""

from __future__ import annotations

import json
from typing import Annotated, Any

import strawberry
from pydantic import StringConstraints
from strawberry import Info

from api.errors import InvalidInput
from api.graphql.context import Context
from api.graphql.scalars import JSON
from api.graphql.types import (
    CreateWorkflowDefinitionInput,
    RegisterWebhookInput,
    StartWorkflowExecutionInput,
    TaskExecution,
    TestWebhookInput,
    UpdateWebhookInput,
    UpdateWorkflowDefinitionInput,
    Webhook,
    WebhookDelivery,
    WebhookTestResult,
    WorkflowDefinition,
    WorkflowExecution,
    payload,
)
from api.models.base import RequestModel
from api.models.definitions import DefinitionIn
from api.models.executions import MAX_IDEMPOTENCY_KEY, ExecutionCreate, TaskRejection
from api.models.users import Role
from api.models.webhooks import WebhookCreate, WebhookTest, WebhookUpdate
from api.problems import parse_body
from api.services.webhooks import present, present_delivery


def _context_object(value: Any) -> Any:
    """initialContext as the API reference sends it (JSON text) or as an object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise InvalidInput(
                "The request has 1 problem.",
                [{"pointer": "#/initialContext", "detail": f"Not valid JSON: {exc}"}],
            ) from exc
    return value


class IdempotencyKeyIn(RequestModel):
    """GraphQL's `idempotencyKey` input field, bounded as REST's Idempotency-Key header is."""

    idempotency_key: Annotated[str, StringConstraints(max_length=MAX_IDEMPOTENCY_KEY)] | None = None


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create a workflow definition at version 1.0.0.")
    async def create_workflow_definition(
        self, info: Info[Context, None], input: CreateWorkflowDefinitionInput
    ) -> WorkflowDefinition:
        user = await info.context.principal(Role.OPERATOR)
        data = parse_body(DefinitionIn, payload(input))
        async with info.context.services() as services:
            return WorkflowDefinition.of(await services.definitions.create(user, data))

    @strawberry.mutation(description="Replace a definition, storing a new version (1.0.0 -> 1.0.1).")
    async def update_workflow_definition(
        self, info: Info[Context, None], id: strawberry.ID, input: UpdateWorkflowDefinitionInput
    ) -> WorkflowDefinition:
        user = await info.context.principal(Role.OPERATOR)
        data = parse_body(DefinitionIn, payload(input))
        async with info.context.services() as services:
            return WorkflowDefinition.of(await services.definitions.update(user, id, data))

    @strawberry.mutation(description="Delete a definition; executions already started are not affected.")
    async def delete_workflow_definition(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            await services.definitions.delete(user, id)
        return True

    @strawberry.mutation(description="Start an execution of a definition's current version.")
    async def start_workflow_execution(
        self, info: Info[Context, None], input: StartWorkflowExecutionInput
    ) -> WorkflowExecution:
        user = await info.context.principal(Role.OPERATOR)
        raw = payload(input)
        key = parse_body(
            IdempotencyKeyIn, {"idempotencyKey": raw.pop("idempotencyKey", None)}
        ).idempotency_key
        if "initialContext" in raw:
            raw["initialContext"] = _context_object(raw["initialContext"])
        data = parse_body(ExecutionCreate, raw)
        async with info.context.services() as services:
            detail = await services.executions.start(user, data, key)
        return WorkflowExecution.of(detail.row, detail.tasks)

    @strawberry.mutation(description="Cancel a running execution; answers with its cancelled state.")
    async def cancel_workflow_execution(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> WorkflowExecution:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            detail = await services.executions.cancel(user, id)
        return WorkflowExecution.of(detail.row, detail.tasks)

    @strawberry.mutation(
        description="Compare an execution with Temporal now and repair it where Temporal ended its run."
    )
    async def reconcile_workflow_execution(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> WorkflowExecution:
        await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            detail = (await services.reconciler.reconcile(id)).detail
        return WorkflowExecution.of(detail.row, detail.tasks)

    @strawberry.mutation(description="Run a FAILED task again (a failed execution reopens).")
    async def retry_task_execution(self, info: Info[Context, None], id: strawberry.ID) -> TaskExecution:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            return TaskExecution.of(await services.executions.retry_task(user, id))

    @strawberry.mutation(description="Approve a WAITING approval task; the output becomes its result.")
    async def complete_task(
        self, info: Info[Context, None], id: strawberry.ID, output: JSON | None = None
    ) -> TaskExecution:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            return TaskExecution.of(await services.executions.decide(user, id, approve=True, value=output))

    @strawberry.mutation(description="Reject a WAITING approval task: it fails (and may be retried).")
    async def reject_task(
        self, info: Info[Context, None], id: strawberry.ID, reason: str | None = None
    ) -> TaskExecution:
        user = await info.context.principal(Role.OPERATOR)
        reason = parse_body(TaskRejection, {"reason": reason}).reason
        async with info.context.services() as services:
            return TaskExecution.of(await services.executions.decide(user, id, approve=False, value=reason))

    @strawberry.mutation(
        description="Register a webhook; the answer carries its secret (generated when absent), once."
    )
    async def register_webhook(self, info: Info[Context, None], input: RegisterWebhookInput) -> Webhook:
        user = await info.context.principal(Role.OPERATOR)
        data = parse_body(WebhookCreate, payload(input))
        async with info.context.services() as services:
            return Webhook.of(present(await services.webhooks.create(user, data), 2, reveal_secret=True))

    @strawberry.mutation(description="Change a webhook's URL, events or active flag (and secret, if given).")
    async def update_webhook(
        self, info: Info[Context, None], id: strawberry.ID, input: UpdateWebhookInput
    ) -> Webhook:
        user = await info.context.principal(Role.OPERATOR)
        data = parse_body(WebhookUpdate, payload(input))
        async with info.context.services() as services:
            return Webhook.of(present(await services.webhooks.update(user, id, data), 2))

    @strawberry.mutation(description="Delete a webhook.")
    async def delete_webhook(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            await services.webhooks.delete(user, id)
        return True

    @strawberry.mutation(description="Send a delivery again: same body, same webhook-id.")
    async def redeliver_webhook_delivery(
        self, info: Info[Context, None], webhook_id: strawberry.ID, delivery_id: strawberry.ID
    ) -> WebhookDelivery:
        user = await info.context.principal(Role.OPERATOR)
        async with info.context.services() as services:
            return WebhookDelivery.of(
                present_delivery(await services.webhooks.redeliver(user, webhook_id, delivery_id))
            )

    @strawberry.mutation(description="Send one signed test request now; says how the receiver answered.")
    async def test_webhook(self, info: Info[Context, None], input: TestWebhookInput) -> WebhookTestResult:
        user = await info.context.principal(Role.OPERATOR)
        data = parse_body(WebhookTest, payload(input))
        async with info.context.services() as services:
            result = await services.webhooks.test(user, data)
        return WebhookTestResult(
            success=result.success, status_code=result.status_code, message=result.message
        )
