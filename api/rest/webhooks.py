"""Webhooks: registrations, the delivery log, redelivery and a test call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import ApiVersion, Operator, PaginationDep, Viewer, WebhookServiceDep
from api.errors import Conflict, DeliveryNotFound, Forbidden, InvalidInput, TooManyRequests, WebhookNotFound
from api.models.base import Page
from api.models.webhooks import (
    WEBHOOK_EVENTS,
    DeliveryPublic,
    DeliveryStatus,
    WebhookCreate,
    WebhookPublic,
    WebhookPublicV2,
    WebhookTest,
    WebhookTestResult,
    WebhookUpdate,
)
from api.problems import problem_responses
from api.services.webhooks import present, present_delivery

EVENTS_TEXT = ", ".join(f"`{e}`" for e in WEBHOOK_EVENTS)

router = APIRouter(
    prefix="/webhooks",
    tags=["webhooks"],
    responses=problem_responses(Forbidden),
)


@router.get("", responses=problem_responses(InvalidInput))
async def list_webhooks(
    user: Viewer, webhooks: WebhookServiceDep, page: PaginationDep, version: ApiVersion
) -> list[WebhookPublicV2 | WebhookPublic] | Page[WebhookPublicV2 | WebhookPublic]:
    """Your webhooks (admins: all). Secrets are masked."""
    rows, total = await webhooks.list(user, page.limit, page.offset)
    return page.present(version, [present(r, version) for r in rows], total)


@router.post(
    "",
    status_code=201,
    responses=problem_responses(InvalidInput),
    description=f"Register a webhook. Events: {EVENTS_TEXT}, or `*` for all. The secret (generated when "
    "absent) is in this response only. Deliveries are signed per the Standard Webhooks specification.",
)
async def register_webhook(
    data: WebhookCreate, user: Operator, webhooks: WebhookServiceDep, version: ApiVersion
) -> WebhookPublicV2 | WebhookPublic:
    """Register a webhook."""
    return present(await webhooks.create(user, data), version, reveal_secret=True)


@router.post("/test", responses=problem_responses(InvalidInput, TooManyRequests))
async def test_webhook(data: WebhookTest, user: Operator, webhooks: WebhookServiceDep) -> WebhookTestResult:
    """Send one signed test request now (no retries, no redirects); says how the receiver answered."""
    return await webhooks.test(user, data)


@router.get("/{webhook_id}", responses=problem_responses(WebhookNotFound))
async def get_webhook(
    webhook_id: str, user: Viewer, webhooks: WebhookServiceDep, version: ApiVersion
) -> WebhookPublicV2 | WebhookPublic:
    """One of your webhooks (secret masked)."""
    return present(await webhooks.get(user, webhook_id), version)


@router.put("/{webhook_id}", responses=problem_responses(WebhookNotFound, InvalidInput))
async def update_webhook(
    webhook_id: str, data: WebhookUpdate, user: Operator, webhooks: WebhookServiceDep, version: ApiVersion
) -> WebhookPublicV2 | WebhookPublic:
    """Change URL, events or active flag (and the secret, if given)."""
    return present(await webhooks.update(user, webhook_id, data), version)


@router.delete("/{webhook_id}", status_code=204, responses=problem_responses(WebhookNotFound))
async def delete_webhook(webhook_id: str, user: Operator, webhooks: WebhookServiceDep) -> Response:
    """Delete a webhook: nothing more is sent to it."""
    await webhooks.delete(user, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", responses=problem_responses(WebhookNotFound, InvalidInput))
async def list_deliveries(
    webhook_id: str,
    user: Viewer,
    webhooks: WebhookServiceDep,
    page: PaginationDep,
    version: ApiVersion,
    status: Annotated[DeliveryStatus | None, Query(description="Only deliveries in this status.")] = None,
) -> list[DeliveryPublic] | Page[DeliveryPublic]:
    """The webhook's deliveries, newest first: event, status, attempts, last answer, next attempt."""
    rows, total = await webhooks.deliveries(user, webhook_id, page.limit, page.offset, status)
    return page.present(version, [present_delivery(r) for r in rows], total)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    responses=problem_responses(WebhookNotFound, DeliveryNotFound, InvalidInput, Conflict),
)
async def redeliver(
    webhook_id: str, delivery_id: str, user: Operator, webhooks: WebhookServiceDep
) -> DeliveryPublic:
    """Send a delivery again: same body, same webhook-id, a new round of attempts."""
    return present_delivery(await webhooks.redeliver(user, webhook_id, delivery_id))
