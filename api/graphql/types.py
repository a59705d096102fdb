"""GraphQL object and input types, named as the API reference names them."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from pydantic.alias_generators import to_camel
from strawberry import Info

from api.graphql.scalars import JSON, DateTime
from api.models.definitions import DefinitionPublic, DefinitionVersionSummary
from api.models.executions import (
    BlockerRow,
    ExecutionRow,
    MilestoneRow,
    TaskExecutionRow,
    compact_json,
)
from api.models.users import UserPublic
from api.models.webhooks import DeliveryPublic, WebhookPublicV2

if TYPE_CHECKING:
    from api.services.executions import Progress


@strawberry.enum
class ExecutionStatus(Enum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.enum
class TaskStatus(Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    WAITING = "WAITING"


# --- definitions ---------------------------------------------------------------------------


@strawberry.type(description="Temporal's retry policy of a task (seconds).")
class RetryPolicy:
    max_attempts: int | None
    initial_interval: float | None
    backoff_coefficient: float | None
    maximum_interval: float | None
    non_retryable_errors: list[str] | None


@strawberry.type
class CustomResource:
    name: str
    value: JSON


@strawberry.type(description="What a task needs, and the queue of the fleet that runs it.")
class ResourceRequirements:
    cpu: float | None
    memory: int | None
    storage: int | None
    gpu: int | None
    custom: list[CustomResource] | None
    queue: str | None


@strawberry.type
class TaskDefinition:
    id: strawberry.ID
    name: str
    description: str | None
    dependencies: list[str]
    type: str
    input: JSON | None
    timeout: float | None
    retry_policy: RetryPolicy | None
    resource_requirements: ResourceRequirements | None


@strawberry.type
class SynchronizationPoint:
    id: strawberry.ID
    name: str
    description: str | None
    required_tasks: list[str]
    timeout: float | None


@strawberry.type
class WorkflowDefinition:
    id: strawberry.ID
    name: str
    description: str | None
    version: str
    created_at: DateTime
    updated_at: DateTime
    tasks: list[TaskDefinition]
    synchronization_points: list[SynchronizationPoint]

    @classmethod
    def of(cls, public: DefinitionPublic) -> WorkflowDefinition:
        return cls(
            id=strawberry.ID(public.id),
            name=public.name,
            description=public.description,
            version=public.version,
            created_at=public.created_at,
            updated_at=public.updated_at,
            tasks=[
                TaskDefinition(
                    id=strawberry.ID(t.id),
                    name=t.name,
                    description=t.description,
                    dependencies=t.dependencies,
                    type=t.type,
                    input=t.input,
                    timeout=t.timeout,
                    retry_policy=RetryPolicy(**t.retry_policy.model_dump(by_alias=False))
                    if t.retry_policy
                    else None,
                    resource_requirements=_resources(t.resource_requirements.model_dump(by_alias=False))
                    if t.resource_requirements
                    else None,
                )
                for t in public.tasks
            ],
            synchronization_points=[
                SynchronizationPoint(
                    id=strawberry.ID(p.id),
                    name=p.name,
                    description=p.description,
                    required_tasks=p.required_tasks,
                    timeout=p.timeout,
                )
                for p in public.synchronization_points
            ],
        )


def _fields(model: Any) -> dict[str, Any]:
    """A pydantic model's attributes as they are (``model_dump`` would run the field
    serializers, turning datetimes into strings the DateTime scalar cannot format)."""
    return {name: getattr(model, name) for name in type(model).model_fields}


def _resources(values: dict[str, Any]) -> ResourceRequirements:
    custom = values.pop("custom", None)
    return ResourceRequirements(
        **values,
        custom=[CustomResource(name=c["name"], value=c["value"]) for c in custom] if custom else None,
    )


@strawberry.type
class WorkflowDefinitionVersion:
    version: str
    name: str
    description: str | None
    created_at: DateTime
    task_count: int

    @classmethod
    def of(cls, summary: DefinitionVersionSummary) -> WorkflowDefinitionVersion:
        return cls(**_fields(summary))


# --- executions ----------------------------------------------------------------------------


@strawberry.type
class TaskExecution:
    id: strawberry.ID
    task_definition_id: str
    status: TaskStatus
    start_time: DateTime | None
    end_time: DateTime | None
    attempts: int
    error: str | None
    resources: JSON | None
    sequence: int = strawberry.field(
        description="The sequence number of the execution event that left the task in this state "
        "(give it as taskExecutionUpdated's afterSequence to resume after it)."
    )

    @classmethod
    def of(cls, row: TaskExecutionRow, sequence: int | None = None) -> TaskExecution:
        return cls(
            id=strawberry.ID(str(row.id)),
            task_definition_id=row.task_definition_id,
            status=TaskStatus(row.status),
            start_time=row.start_time,
            end_time=row.end_time,
            attempts=row.attempts,
            error=row.error,
            resources=row.resources,
            sequence=row.seq if sequence is None else sequence,
        )


@strawberry.type(description="The execution's shared data; `data` is JSON text, as in the REST API v1.")
class ExecutionContext:
    id: strawberry.ID
    data: str
    version: int
    created_at: DateTime
    updated_at: DateTime


@strawberry.type
class WorkflowExecution:
    row: strawberry.Private[ExecutionRow]
    preloaded_tasks: strawberry.Private[list[TaskExecutionRow] | None]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def workflow_definition_id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.definition_id))

    @strawberry.field
    def workflow_definition_version(self) -> str:
        return self.row.definition_version

    @strawberry.field
    def status(self) -> ExecutionStatus:
        return ExecutionStatus(self.row.status)

    @strawberry.field
    def start_time(self) -> DateTime:
        return self.row.start_time

    @strawberry.field
    def end_time(self) -> DateTime | None:
        return self.row.end_time

    @strawberry.field(description="Why it failed, if it did.")
    def error(self) -> str | None:
        return self.row.error

    @strawberry.field(description="The last event reflected in this state (resume subscriptions after it).")
    def sequence(self) -> int:
        return self.row.last_seq

    @strawberry.field
    def context(self) -> ExecutionContext:
        row = self.row
        return ExecutionContext(
            id=strawberry.ID(str(row.id)),
            data=compact_json(row.context),
            version=row.context_version,
            created_at=row.context_created_at,
            updated_at=row.context_updated_at,
        )

    @strawberry.field
    async def task_executions(self, info: Info) -> list[TaskExecution]:
        rows = self.preloaded_tasks
        if rows is None:
            assert self.row.id is not None
            rows = await info.context.task_loader.load(self.row.id)
        return [TaskExecution.of(r) for r in rows]

    @strawberry.field(description="The definition (current version), if it still exists.")
    async def workflow_definition(self, info: Info) -> WorkflowDefinition | None:
        found = await info.context.definition_loader.load(str(self.row.definition_id))
        return WorkflowDefinition.of(found) if found else None

    @classmethod
    def of(cls, row: ExecutionRow, tasks: list[TaskExecutionRow] | None = None) -> WorkflowExecution:
        return cls(row=row, preloaded_tasks=tasks)


@strawberry.type
class Blocker:
    id: strawberry.ID
    task_execution_id: strawberry.ID | None
    description: str
    created_at: DateTime
    resolved_at: DateTime | None

    @classmethod
    def of(cls, row: BlockerRow) -> Blocker:
        return cls(
            id=strawberry.ID(str(row.id)),
            task_execution_id=strawberry.ID(str(row.task_execution_id))
            if row.task_execution_id is not None
            else None,
            description=row.description,
            created_at=row.created_at,
            resolved_at=row.resolved_at,
        )


@strawberry.type
class Milestone:
    id: strawberry.ID
    name: str
    description: str | None
    achieved: bool
    achieved_at: DateTime | None

    @classmethod
    def of(cls, row: MilestoneRow) -> Milestone:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            description=row.description,
            achieved=row.achieved_at is not None,
            achieved_at=row.achieved_at,
        )


@strawberry.type
class ProgressReport:
    id: strawberry.ID
    workflow_execution_id: strawberry.ID
    completed_tasks: int
    total_tasks: int
    estimated_completion: DateTime | None
    blockers: list[Blocker]
    milestones: list[Milestone]

    @classmethod
    def of(cls, progress: Progress) -> ProgressReport:
        row = progress.execution
        return cls(
            id=strawberry.ID(str(row.id)),
            workflow_execution_id=strawberry.ID(str(row.id)),
            completed_tasks=row.completed_tasks,
            total_tasks=row.total_tasks,
            estimated_completion=progress.estimated_completion,
            blockers=[Blocker.of(b) for b in progress.blockers],
            milestones=[Milestone.of(m) for m in progress.milestones],
        )


@strawberry.type(description="One entry of an execution's event log.")
class ExecutionEvent:
    sequence: int
    type: str
    created_at: DateTime
    data: JSON


# --- webhooks ------------------------------------------------------------------------------


@strawberry.type(
    description="A webhook registration. The secret appears in registerWebhook's answer only; masked after."
)
class Webhook:
    id: strawberry.ID
    url: str
    events: list[str]
    secret: str | None
    active: bool
    created_at: DateTime
    deactivated_reason: str | None
    last_success_at: DateTime | None

    @classmethod
    def of(cls, public: WebhookPublicV2) -> Webhook:
        return cls(
            id=strawberry.ID(public.id),
            url=public.url,
            events=public.events,
            secret=public.secret,
            active=public.active,
            created_at=public.created_at,
            deactivated_reason=public.deactivated_reason,
            last_success_at=public.last_success_at,
        )


@strawberry.type
class WebhookDelivery:
    id: strawberry.ID
    webhook_id: strawberry.ID
    event: str
    event_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: DateTime | None
    next_attempt_at: DateTime | None
    created_at: DateTime
    delivered_at: DateTime | None

    @classmethod
    def of(cls, public: DeliveryPublic) -> WebhookDelivery:
        return cls(**{**_fields(public), "status": public.status.value})


@strawberry.type
class WebhookTestResult:
    success: bool
    status_code: int | None
    message: str


@strawberry.input
class RegisterWebhookInput:
    url: str
    events: list[str]
    secret: str | None = strawberry.UNSET
    active: bool | None = strawberry.UNSET


@strawberry.input
class UpdateWebhookInput:
    url: str
    events: list[str]
    active: bool | None = strawberry.UNSET
    secret: str | None = strawberry.UNSET


@strawberry.input
class TestWebhookInput:
    url: str
    event: str | None = strawberry.UNSET
    payload: JSON | None = strawberry.UNSET
    secret: str | None = strawberry.UNSET


# --- pages ---------------------------------------------------------------------------------


@strawberry.type
class WorkflowDefinitionPage:
    items: list[WorkflowDefinition]
    total: int
    limit: int
    offset: int


@strawberry.type
class WorkflowDefinitionVersionPage:
    items: list[WorkflowDefinitionVersion]
    total: int
    limit: int
    offset: int


@strawberry.type
class WorkflowExecutionPage:
    items: list[WorkflowExecution]
    total: int
    limit: int
    offset: int


@strawberry.type
class TaskExecutionPage:
    items: list[TaskExecution]
    total: int
    limit: int
    offset: int


@strawberry.type
class WebhookPage:
    items: list[Webhook]
    total: int
    limit: int
    offset: int


@strawberry.type
class WebhookDeliveryPage:
    items: list[WebhookDelivery]
    total: int
    limit: int
    offset: int


@strawberry.type
class User:
    id: strawberry.ID
    username: str
    role: str
    active: bool
    created_at: DateTime
    updated_at: DateTime

    @classmethod
    def of(cls, public: UserPublic) -> User:
        return cls(**{**_fields(public), "role": public.role.value})


# --- inputs --------------------------------------------------------------------------------


@strawberry.input(
    description="Temporal's retry policy; maxRetries, backoffMultiplier and maxBackoff are accepted aliases."
)
class RetryPolicyInput:
    max_attempts: int | None = strawberry.UNSET
    initial_interval: float | None = strawberry.UNSET
    backoff_coefficient: float | None = strawberry.UNSET
    maximum_interval: float | None = strawberry.UNSET
    non_retryable_errors: list[str] | None = strawberry.UNSET
    max_retries: int | None = strawberry.UNSET
    backoff_multiplier: float | None = strawberry.UNSET
    max_backoff: float | None = strawberry.UNSET


@strawberry.input
class CustomResourceInput:
    name: str
    value: JSON


@strawberry.input
class ResourceRequirementsInput:
    cpu: float | None = strawberry.UNSET
    memory: int | None = strawberry.UNSET
    storage: int | None = strawberry.UNSET
    gpu: int | None = strawberry.UNSET
    custom: list[CustomResourceInput] | None = strawberry.UNSET
    queue: str | None = strawberry.UNSET


@strawberry.input
class TaskDefinitionInput:
    name: str
    id: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    dependencies: list[str] | None = strawberry.UNSET
    type: str | None = strawberry.UNSET
    input: JSON | None = strawberry.UNSET
    timeout: float | None = strawberry.UNSET
    retry_policy: RetryPolicyInput | None = strawberry.UNSET
    resource_requirements: ResourceRequirementsInput | None = strawberry.UNSET


@strawberry.input
class SynchronizationPointInput:
    name: str
    required_tasks: list[str]
    id: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    timeout: float | None = strawberry.UNSET


@strawberry.input
class CreateWorkflowDefinitionInput:
    name: str
    description: str | None = strawberry.UNSET
    tasks: list[TaskDefinitionInput] | None = strawberry.UNSET
    synchronization_points: list[SynchronizationPointInput] | None = strawberry.UNSET


UpdateWorkflowDefinitionInput = Annotated[
    CreateWorkflowDefinitionInput, strawberry.argument(description="The whole new definition.")
]


@strawberry.input
class StartWorkflowExecutionInput:
    workflow_definition_id: strawberry.ID
    initial_context: JSON | None = strawberry.field(
        default=strawberry.UNSET,
        description="A JSON object, or JSON text of one (as the API reference shows).",
    )
    idempotency_key: str | None = strawberry.field(
        default=strawberry.UNSET, description="Retrying with the same key returns the first execution."
    )


def payload(value: Any) -> Any:
    """An input object as the plain JSON the REST API would have received (unset fields left out)."""
    if isinstance(value, list):
        return [payload(v) for v in value]
    fields = getattr(value, "__strawberry_definition__", None)
    if fields is None:
        return value
    result = {}
    for field in fields.fields:
        item = getattr(value, field.python_name)
        if item is strawberry.UNSET or item is None:
            continue
        result[to_camel(field.python_name)] = payload(item)
    return result
