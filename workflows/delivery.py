"""A webhook delivery: one activity retried with exponential backoff for the retry period.

The activity records every attempt in the delivery log and raises to be retried (after the
receiver's Retry-After, when it sent one). When the period is over, or an answer makes retrying
pointless (410 Gone, the webhook deactivated), the delivery is marked FAILED.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.constants import (
        DELIVER_ACTIVITY,
        DELIVERY_WORKFLOW,
        FINAL_DELIVERY_ERRORS,
        GIVE_UP_ACTIVITY,
    )
    from workflows.inputs import DeliveryGiveUp, DeliveryInput


@workflow.defn(name=DELIVERY_WORKFLOW)
class WebhookDeliveryWorkflow:
    """Delivers one event to one webhook (or gives up, with the reason in the delivery log)."""

    @workflow.run
    async def run(self, input: DeliveryInput) -> str:
        try:
            await workflow.execute_activity(
                DELIVER_ACTIVITY,
                input,
                start_to_close_timeout=timedelta(seconds=input.timeout_seconds + 15),
                schedule_to_close_timeout=timedelta(seconds=input.retry_period_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=input.initial_retry_seconds),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=input.max_retry_interval_seconds),
                    non_retryable_error_types=list(FINAL_DELIVERY_ERRORS),
                ),
                summary=f"delivery {input.delivery_id}",
            )
            return "DELIVERED"
        except ActivityError as err:
            reason = str(
                err.cause.message if err.cause is not None and hasattr(err.cause, "message") else err
            )
            await workflow.execute_activity(
                GIVE_UP_ACTIVITY,
                DeliveryGiveUp(input.delivery_id, reason or "the retry period is over"),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            return "FAILED"
