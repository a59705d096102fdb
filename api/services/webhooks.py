"""Webhooks: registrations (seen and changed by their creator and admins), the delivery log,
redelivery, and the synchronous test call."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities import signing
from activities.netguard import (
    BlockedDestination,
    Policy,
    UnresolvableHost,
    check_url,
    guarded_request,
    resolve,
)
from api.db import utcnow
from api.errors import Conflict, DeliveryNotFound, InvalidInput, WebhookNotFound
from api.models.users import Role
from api.models.webhooks import (
    MASK,
    DeliveryPublic,
    DeliveryStatus,
    WebhookCreate,
    WebhookDeliveryRow,
    WebhookPublic,
    WebhookPublicV2,
    WebhookRow,
    WebhookTest,
    WebhookTestResult,
    WebhookUpdate,
)
from api.services.counters import Counters
from api.services.outbox import new_message_id
from api.services.users import Principal, parse_id
from api.settings import Settings

log = logging.getLogger(__name__)

USER_AGENT = "workflow-orchestration-webhooks/1"


def present(row: WebhookRow, version: int, *, reveal_secret: bool = False) -> WebhookPublic:
    """The secret is shown once, when the webhook is created; afterwards only that there is one."""
    secret = row.secret if reveal_secret else (MASK if row.secret else None)
    common: dict[str, Any] = {
        "id": str(row.id),
        "url": row.url,
        "events": row.events,
        "secret": secret,
        "active": row.active,
        "created_at": row.created_at,
    }
    if version >= 2:
        return WebhookPublicV2(
            **common,
            deactivated_reason=row.deactivated_reason,
            last_success_at=row.last_success_at,
            updated_at=row.updated_at,
        )
    return WebhookPublic(**common)


def present_delivery(row: WebhookDeliveryRow) -> DeliveryPublic:
    return DeliveryPublic(
        id=str(row.id),
        webhook_id=str(row.webhook_id),
        event=row.event_type,
        event_id=row.message_id,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


class WebhookService:
    def __init__(self, session: AsyncSession, settings: Settings):
        self.session = session
        self.settings = settings

    @property
    def policy(self) -> Policy:
        return Policy(allow_private=self.settings.allow_private_networks)

    async def list(self, user: Principal, limit: int, offset: int) -> tuple[list[WebhookRow], int]:
        """The caller's webhooks (an admin's: everyone's)."""
        conditions: builtins.list[sa.ColumnElement[bool]] = [col(WebhookRow.deleted_at).is_(None)]
        if user.role is not Role.ADMIN:
            conditions.append(col(WebhookRow.created_by) == user.id)
        total = (
            await self.session.exec(select(func.count()).select_from(WebhookRow).where(*conditions))
        ).one()
        rows = await self.session.exec(
            select(WebhookRow).where(*conditions).order_by(col(WebhookRow.id)).limit(limit).offset(offset)
        )
        return list(rows), total

    async def get(self, user: Principal, webhook_id: str) -> WebhookRow:
        """A webhook the caller may see; others' are 404, as if they did not exist."""
        key = parse_id(webhook_id)
        row = await self.session.get(WebhookRow, key) if key is not None else None
        if (
            row is None
            or row.deleted_at is not None
            or (user.role is not Role.ADMIN and row.created_by != user.id)
        ):
            raise WebhookNotFound(webhook_id)
        return row

    async def create(self, user: Principal, data: WebhookCreate) -> WebhookRow:
        await self._check_destination(data.url)
        now = utcnow()
        row = WebhookRow(
            url=data.url,
            events=data.events,
            secret=data.secret.get_secret_value() if data.secret else signing.generate_secret(),
            active=data.active,
            created_by=user.id,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.commit()
        log.info("webhook %s created by %s for %s", row.id, user.username, ", ".join(row.events))
        return row

    async def update(self, user: Principal, webhook_id: str, data: WebhookUpdate) -> WebhookRow:
        row = await self.get(user, webhook_id)
        await self._check_destination(data.url)
        row.url, row.events = data.url, data.events
        if data.active and not row.active:
            row.deactivated_reason, row.failing_since = None, None
        elif not data.active and row.active:
            row.deactivated_reason = f"deactivated by {user.username}"
        row.active = data.active
        if data.secret is not None:
            row.secret = data.secret.get_secret_value()
        row.updated_at = utcnow()
        await self.session.commit()
        return row

    async def delete(self, user: Principal, webhook_id: str) -> None:
        """Soft delete: it stops at once (pending retries give up); its delivery log stays."""
        row = await self.get(user, webhook_id)
        row.deleted_at = row.updated_at = utcnow()
        row.active = False
        row.deactivated_reason = "deleted"
        await self.session.commit()

    async def deliveries(
        self, user: Principal, webhook_id: str, limit: int, offset: int, status: DeliveryStatus | None = None
    ) -> tuple[builtins.list[WebhookDeliveryRow], int]:
        """The webhook's delivery log, newest first."""
        webhook = await self.get(user, webhook_id)
        conditions = [col(WebhookDeliveryRow.webhook_id) == webhook.id]
        if status is not None:
            conditions.append(col(WebhookDeliveryRow.status) == status.value)
        total = (
            await self.session.exec(select(func.count()).select_from(WebhookDeliveryRow).where(*conditions))
        ).one()
        rows = await self.session.exec(
            select(WebhookDeliveryRow)
            .where(*conditions)
            .order_by(col(WebhookDeliveryRow.id).desc())
            .limit(limit)
            .offset(offset)
        )
        return list(rows), total

    async def redeliver(self, user: Principal, webhook_id: str, delivery_id: str) -> WebhookDeliveryRow:
        """Send a delivery again (same body, same webhook-id): a fresh round of attempts."""
        webhook = await self.get(user, webhook_id)
        key = parse_id(delivery_id)
        row = await self.session.get(WebhookDeliveryRow, key) if key is not None else None
        if row is None or row.webhook_id != webhook.id:
            raise DeliveryNotFound(delivery_id)
        if row.status == DeliveryStatus.PENDING:
            raise Conflict(
                f"Delivery {delivery_id} is still being delivered (attempt {row.attempts + 1} is next)."
            )
        if not webhook.active:
            raise InvalidInput(
                "The webhook is not active; activate it before redelivering.",
                [
                    {
                        "pointer": "#",
                        "detail": f"webhook {webhook_id} is inactive: {webhook.deactivated_reason or 'deactivated'}",
                    }
                ],
            )
        row.status, row.dispatched, row.next_attempt_at = DeliveryStatus.PENDING.value, False, utcnow()
        row.redeliveries += 1
        await self.session.commit()
        return row

    async def test(self, user: Principal, data: WebhookTest) -> WebhookTestResult:
        """One signed POST, no retries, no redirects, bounded in time; the receiver's body is never
        read. Rate limited per user."""
        counters = Counters(self.session, 60)
        key = f"webhook-test:{user.id}"
        await counters.check(
            key, self.settings.webhook_test_per_minute, "Too many webhook tests; try again in a minute."
        )
        await counters.hit(key)
        message_id = new_message_id()
        body = json.dumps(
            {
                "id": message_id,
                "type": data.event,
                "createdAt": utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": data.payload,
            },
            separators=(",", ":"),
        ).encode()
        secret = data.secret.get_secret_value() if data.secret else None
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signing.headers(secret, message_id, int(time.time()), body),
        }
        timeout = self.settings.webhook_timeout_seconds
        try:
            response = await send_once(data.url, self.policy, body, headers, timeout)
        except UnresolvableHost as exc:
            # One request, not retried: reported as a failure to connect (not a refusal).
            return WebhookTestResult(success=False, status_code=None, message=f"Could not connect: {exc}")
        except BlockedDestination as exc:
            return WebhookTestResult(success=False, status_code=None, message=f"Refused: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            return WebhookTestResult(
                success=False, status_code=None, message=f"The receiver did not answer within {timeout:g} s"
            )
        except httpx.HTTPError as exc:
            return WebhookTestResult(
                success=False, status_code=None, message=f"Could not connect: {describe_network_error(exc)}"
            )
        if 200 <= response.status_code < 300:
            return WebhookTestResult(
                success=True, status_code=response.status_code, message="Webhook delivered successfully"
            )
        if 300 <= response.status_code < 400:
            message = (
                f"The receiver answered {response.status_code} (a redirect); webhooks do not follow redirects"
            )
        else:
            message = f"The receiver answered {response.status_code} {response.reason_phrase}".rstrip()
        return WebhookTestResult(success=False, status_code=response.status_code, message=message)

    async def _check_destination(self, url: str) -> None:
        """Refuse what is known to be off limits now; a name that does not resolve yet is let
        through (deliveries check again, and fail saying why, until it does)."""
        try:
            _, host, port = check_url(url)
            await resolve(host, port, self.policy)
        except UnresolvableHost:
            return
        except BlockedDestination as exc:
            raise InvalidInput(
                "The webhook URL is not allowed.", [{"pointer": "#/url", "detail": str(exc)}]
            ) from exc


async def send_once(
    url: str, policy: Policy, body: bytes, headers: dict[str, str], timeout: float
) -> httpx.Response:
    """POST `body` and return the answer's status line and headers; the body is never read.

    `timeout` bounds the whole exchange (httpx's is per step: a receiver that sends a byte a
    second would hold the request forever). The receiver's body is closed unread, so one that
    streams without end, or a gzip bomb, costs nothing. TimeoutError past the deadline.
    """
    async with asyncio.timeout(timeout):
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False) as client:
            response = await guarded_request(
                client, "POST", url, policy=policy, content=body, headers=headers, stream=True
            )
            await response.aclose()
    return response


def describe_network_error(exc: httpx.HTTPError) -> str:
    """A short reason (connection refused, reset, ...) without internals."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
