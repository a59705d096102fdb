"""Sending webhook deliveries (one attempt at a time, for the delivery workflow) and handing
new deliveries to Temporal (the dispatcher, run by system workers)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlmodel import col, select, update
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities import signing
from activities.netguard import BlockedDestination, Policy, UnresolvableHost
from api.db import SessionFactory, serialize_writes, utcnow
from api.models.users import UserRow
from api.models.webhooks import DeliveryStatus, WebhookDeliveryRow, WebhookRow
from api.services.outbox import owner_refusal
from api.services.webhooks import USER_AGENT, describe_network_error, send_once
from api.settings import Settings
from workflows.constants import DELIVERY_WORKFLOW
from workflows.inputs import DeliveryInput

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """An attempt that did not succeed. `final`: retrying cannot help."""

    def __init__(self, message: str, kind: str, *, final: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.final = final
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Attempt:
    status_code: int | None
    error: str | None
    retry_after: float | None = None
    refused: bool = False


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdecimal():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{int(seconds)} seconds"


class Deliverer:
    def __init__(self, sessions: SessionFactory, settings: Settings):
        self.sessions = sessions
        self.settings = settings

    async def attempt(self, input: DeliveryInput) -> None:
        """One attempt of a delivery, recorded in its log; DeliveryError if it did not succeed."""
        delivery_id = int(input.delivery_id)
        async with self.sessions() as session:
            delivery = await session.get(WebhookDeliveryRow, delivery_id)
            if delivery is None:
                raise DeliveryError(f"delivery {delivery_id} does not exist", "WebhookInactive", final=True)
            if delivery.status == DeliveryStatus.DELIVERED:
                return  # an earlier attempt succeeded (its activity result was lost): nothing to do
            webhook = await session.get(WebhookRow, delivery.webhook_id)
            if webhook is None or webhook.deleted_at is not None or not webhook.active:
                reason = (
                    "the webhook was deleted"
                    if webhook is None or webhook.deleted_at
                    else (f"the webhook is inactive: {webhook.deactivated_reason or 'deactivated'}")
                )
                raise DeliveryError(reason, "WebhookInactive", final=True)
            # Queued while the owner could receive it; not sent once they were disabled or demoted.
            owner = await session.get(UserRow, webhook.created_by) if webhook.created_by is not None else None
            refusal = owner_refusal(owner)
            if refusal is not None:
                raise DeliveryError(f"not sent: {refusal}", "WebhookInactive", final=True)
            url, secret, payload, message_id = (
                webhook.url,
                webhook.secret,
                delivery.payload,
                delivery.message_id,
            )

        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        outcome = await self._send(url, secret, message_id, body, input.timeout_seconds)
        await self._record(delivery_id, outcome, input)

    async def _send(
        self, url: str, secret: str | None, message_id: str, body: bytes, timeout: float
    ) -> _Attempt:
        # A fresh timestamp and signature on every attempt; the same webhook-id.
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signing.headers(secret, message_id, int(time.time()), body),
        }
        policy = Policy(allow_private=self.settings.allow_private_networks)
        try:
            response = await send_once(url, policy, body, headers, timeout)
        except UnresolvableHost as exc:
            # May resolve later: retried like any network error (and checked again each time).
            return _Attempt(None, str(exc))
        except BlockedDestination as exc:
            return _Attempt(None, f"refused: {exc}", refused=True)
        except (TimeoutError, httpx.TimeoutException):
            return _Attempt(None, f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return _Attempt(None, describe_network_error(exc))
        if 200 <= response.status_code < 300:
            return _Attempt(response.status_code, None)
        if 300 <= response.status_code < 400:
            return _Attempt(
                response.status_code, f"answered {response.status_code}: webhooks do not follow redirects"
            )
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
        # The receiver's body is never kept: only its status.
        return _Attempt(
            response.status_code,
            f"answered {response.status_code} {response.reason_phrase}".rstrip(),
            retry_after,
        )

    async def _record(self, delivery_id: int, outcome: _Attempt, input: DeliveryInput) -> None:
        now = utcnow()
        async with self.sessions() as session:
            await serialize_writes(session)
            delivery = await session.get(WebhookDeliveryRow, delivery_id, with_for_update=True)
            webhook = (
                await session.get(WebhookRow, delivery.webhook_id, with_for_update=True) if delivery else None
            )
            assert delivery is not None and webhook is not None
            if delivery.status != DeliveryStatus.PENDING:
                # Settled meanwhile (given up, or delivered by an earlier attempt whose answer was
                # lost): a late attempt's outcome changes nothing in its log.
                await session.rollback()
                return
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.last_status_code = outcome.status_code
            delivery.last_error = outcome.error
            if outcome.error is None:
                delivery.status, delivery.delivered_at, delivery.next_attempt_at = (
                    DeliveryStatus.DELIVERED.value,
                    now,
                    None,
                )
                webhook.last_success_at, webhook.failing_since = now, None
                await session.commit()
                return
            error: DeliveryError
            if outcome.status_code == 410:
                webhook.active, webhook.deactivated_reason = (
                    False,
                    f"the receiver answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC",
                )
                error = DeliveryError(
                    f"{outcome.error}: the webhook is deactivated", "WebhookGone", final=True
                )
            elif outcome.refused:
                error = DeliveryError(outcome.error, "DestinationRefused", final=True)
            else:
                webhook.failing_since = webhook.failing_since or now
                failing_for = (now - webhook.failing_since).total_seconds()
                if failing_for >= self.settings.webhook_disable_after_seconds:
                    webhook.active = False
                    webhook.deactivated_reason = (
                        f"no successful delivery for {_duration(failing_for)} (last: {outcome.error})"
                    )
                    error = DeliveryError(
                        f"{outcome.error}; the webhook is deactivated", "WebhookInactive", final=True
                    )
                else:
                    delay = outcome.retry_after
                    if delay is not None:
                        delay = min(delay, input.max_retry_interval_seconds)
                    else:
                        delay = min(
                            input.initial_retry_seconds * 2 ** (delivery.attempts - 1),
                            input.max_retry_interval_seconds,
                        )
                    delivery.next_attempt_at = now + timedelta(seconds=delay)
                    error = DeliveryError(
                        outcome.error, "DeliveryFailed", retry_after=outcome.retry_after and delay
                    )
            if error.final:
                delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED.value, None
            await session.commit()
        raise error

    async def give_up(self, delivery_id: str, reason: str) -> None:
        """The retry period ended, or retrying cannot help: the delivery is FAILED for good."""
        async with self.sessions() as session:
            await serialize_writes(session)
            delivery = await session.get(WebhookDeliveryRow, int(delivery_id), with_for_update=True)
            if delivery is None or delivery.status == DeliveryStatus.DELIVERED:
                return
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED.value, None
            if delivery.last_error is None or reason not in delivery.last_error:
                delivery.last_error = (
                    f"gave up after {delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}: {reason}"
                    + (f" (last: {delivery.last_error})" if delivery.last_error else "")
                )
            await session.commit()


class Dispatcher:
    """Starts a delivery workflow for each new (or redelivered) delivery. Several workers may run
    one each: the workflow id is the delivery's, so a delivery never starts twice."""

    def __init__(self, sessions: SessionFactory, client: Client, settings: Settings):
        self.sessions = sessions
        self.client = client
        self.settings = settings

    async def run_forever(self) -> None:
        while True:
            try:
                started = await self.dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or Temporal may be away for a moment  # noqa: BLE001
                log.warning("webhook dispatch failed: %s", exc)
                started = 0
                await asyncio.sleep(1)
            if started == 0:
                await asyncio.sleep(self.settings.webhook_dispatch_seconds)

    async def dispatch_once(self, limit: int = 200) -> int:
        async with self.sessions() as session:
            rows = list(
                await session.exec(
                    select(WebhookDeliveryRow.id, WebhookDeliveryRow.redeliveries)
                    .where(
                        col(WebhookDeliveryRow.dispatched).is_(False),
                        WebhookDeliveryRow.status == DeliveryStatus.PENDING.value,
                    )
                    .order_by(col(WebhookDeliveryRow.id))
                    .limit(limit)
                )
            )
        settings = self.settings
        for delivery_id, redeliveries in rows:
            try:
                await self.client.start_workflow(
                    DELIVERY_WORKFLOW,
                    DeliveryInput(
                        delivery_id=str(delivery_id),
                        retry_period_seconds=settings.webhook_retry_period_seconds,
                        initial_retry_seconds=settings.webhook_initial_retry_seconds,
                        max_retry_interval_seconds=settings.webhook_max_retry_interval_seconds,
                        timeout_seconds=settings.webhook_timeout_seconds,
                    ),
                    id=f"{settings.workflow_id_prefix}-webhook-delivery-{delivery_id}-{redeliveries}",
                    task_queue=settings.webhook_task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    static_summary=f"Webhook delivery {delivery_id}",
                )
            except WorkflowAlreadyStartedError:
                pass  # another worker was first
        if rows:
            async with self.sessions() as session:
                for delivery_id, redeliveries in rows:
                    # Not if it was redelivered meanwhile: that round still needs starting.
                    await session.exec(
                        update(WebhookDeliveryRow)
                        .where(
                            col(WebhookDeliveryRow.id) == delivery_id,
                            col(WebhookDeliveryRow.redeliveries) == redeliveries,
                        )
                        .values(dispatched=True)
                    )
                await session.commit()
        return len(rows)
