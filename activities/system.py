"""System activities (queue wfo-system): the only activities that touch the database.

Both run as local activities of the interpreter, in the worker process that runs the
workflow, so they cost no task-queue round trip.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.api.enums.v1 import DescribeTaskQueueMode, PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from api.db import SessionFactory
from api.services.delivery import Deliverer, DeliveryError
from api.services.readmodel import UnknownExecution, apply_batch
from api.settings import Settings
from workflows.constants import (
    DELIVER_ACTIVITY,
    GIVE_UP_ACTIVITY,
    INSPECT_ACTIVITY,
    PUBLISH_ACTIVITY,
    task_of_activity,
)
from workflows.inputs import (
    DeliveryGiveUp,
    DeliveryInput,
    EventBatch,
    InspectRequest,
    InspectResult,
    TaskInspection,
)

#: How long one call of an inspection waits for Temporal.
INSPECT_RPC_TIMEOUT = timedelta(seconds=3)


class SystemActivities:
    """Built once in worker.py with a session factory, a Temporal client and the settings."""

    def __init__(self, sessions: SessionFactory, client: Client, settings: Settings) -> None:
        self.sessions = sessions
        self.client = client
        self.deliverer = Deliverer(sessions, settings)

    @activity.defn(name=PUBLISH_ACTIVITY)
    async def publish_events(self, batch: EventBatch) -> int:
        """Write one batch of an execution's events into the read model (idempotent)."""
        async with self.sessions() as session:
            try:
                applied = await apply_batch(session, batch)
            except UnknownExecution as exc:
                # Retrying cannot help: nothing will create the row. The workflow task fails
                # visibly in Temporal instead of looping in silence.
                raise ApplicationError(str(exc), type="UnknownExecution", non_retryable=True) from exc
        if applied:
            activity.logger.debug("execution %s: applied %d events", batch.execution_id, applied)
        return applied

    @activity.defn(name=INSPECT_ACTIVITY)
    async def inspect_tasks(self, request: InspectRequest) -> InspectResult:
        """What Temporal knows of the given running tasks: started or not, attempt, worker, pollers."""
        handle = self.client.get_workflow_handle(request.workflow_id, run_id=request.run_id)
        # Only a look: a Temporal that does not answer soon is not waited for (the workflow
        # looks again later).
        description = await handle.describe(rpc_timeout=INSPECT_RPC_TIMEOUT)
        found: list[TaskInspection] = []
        for pending in description.raw_description.pending_activities:
            task_id = task_of_activity(pending.activity_id)
            queue = request.task_queues.get(task_id)
            if queue is None:
                continue
            found.append(
                TaskInspection(
                    task_id=task_id,
                    started=pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
                    attempt=pending.attempt,
                    queue=queue,
                    last_failure=pending.last_failure.message if pending.HasField("last_failure") else None,
                    last_worker=pending.last_worker_identity or None,
                    last_failure_type=pending.last_failure.application_failure_info.type
                    if pending.last_failure.HasField("application_failure_info")
                    else None,
                )
            )
        waiting_queues = {t.queue for t in found if not t.started}
        polled = {queue: await self._has_pollers(queue) for queue in waiting_queues}
        for task in found:
            if not task.started:
                task.queue_has_pollers = polled[task.queue]
        return InspectResult(tasks=found)

    async def _has_pollers(self, queue: str) -> bool:
        """Whether any worker polls the queue for activities. The legacy description answers at
        once but sees only the root partition; the enhanced one sees every partition."""
        legacy = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            ),
            timeout=INSPECT_RPC_TIMEOUT,
        )
        if legacy.pollers:
            return True
        enhanced = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=queue),
                api_mode=DescribeTaskQueueMode.DESCRIBE_TASK_QUEUE_MODE_ENHANCED,
                task_queue_types=[TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
                report_pollers=True,
            ),
            timeout=INSPECT_RPC_TIMEOUT,
        )
        return any(
            info.pollers
            for version in enhanced.versions_info.values()
            for info in version.types_info.values()
        )

    @activity.defn(name=DELIVER_ACTIVITY)
    async def deliver_webhook(self, input: DeliveryInput) -> None:
        """One attempt of a webhook delivery; raises to be retried (or not, when retrying cannot help)."""
        try:
            await self.deliverer.attempt(input)
        except DeliveryError as exc:
            delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
            raise ApplicationError(
                exc.message, type=exc.kind, non_retryable=exc.final, next_retry_delay=delay
            ) from None

    @activity.defn(name=GIVE_UP_ACTIVITY)
    async def give_up_delivery(self, input: DeliveryGiveUp) -> None:
        await self.deliverer.give_up(input.delivery_id, input.reason)

    def activities(self) -> list[object]:
        return [self.publish_events, self.inspect_tasks]

    def delivery_activities(self) -> list[object]:
        return [self.deliver_webhook, self.give_up_delivery]
