"""Webhooks: registrations, their deliveries, and the API's shapes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import sqlalchemy as sa
from pydantic import AfterValidator, Field, SecretStr, StringConstraints, field_validator
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Column_

from activities.netguard import BlockedDestination, check_url
from api.db import JSONDocument, UTCDateTime, utcnow
from api.models.base import ApiModel, RequestModel, Timestamp

#: Every event a webhook can subscribe to; `*` subscribes to all of them.
WEBHOOK_EVENTS: tuple[str, ...] = (
    "workflow.execution.started",
    "workflow.execution.completed",
    "workflow.execution.failed",
    "workflow.execution.cancelled",
    "task.execution.started",
    "task.execution.completed",
    "task.execution.failed",
    "task.execution.cancelled",
    "task.execution.waiting",
    "synchronization.point.reached",
    "synchronization.point.failed",
    "milestone.achieved",
    "blocker.detected",
    "blocker.resolved",
    "progress.updated",
)
ALL_EVENTS = "*"
MIN_SECRET_LENGTH = 12
MASK = "********"


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"  # created, or waiting for its next attempt
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # gave up: retry period over, 410 Gone, or the webhook was deactivated


# --- tables --------------------------------------------------------------------------------


class WebhookRow(SQLModel, table=True):
    __tablename__ = "webhooks"

    id: int | None = Column_(default=None, primary_key=True)
    url: str = Column_(sa_column=Column(sa.Text, nullable=False))
    events: list[str] = Column_(sa_column=Column(JSONDocument, nullable=False))
    #: Needed in clear to sign deliveries; only ever shown in the creation response.
    secret: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    active: bool = Column_(default=True, sa_column=Column(sa.Boolean, nullable=False))
    deactivated_reason: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    created_by: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True, index=True))
    created_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    last_success_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    #: Start of the current run of failures (reset by a success): long enough deactivates it.
    failing_since: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    deleted_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))


class WebhookDeliveryRow(SQLModel, table=True):
    """One event for one webhook. Every attempt sends the same body under the same message id."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_delivery_event"),
        sa.Index("ix_deliveries_dispatch", "dispatched", "id"),
    )

    id: int | None = Column_(default=None, primary_key=True)
    webhook_id: int = Column_(
        sa_column=Column(sa.Integer, sa.ForeignKey("webhooks.id"), nullable=False, index=True)
    )
    event_id: int = Column_(
        sa_column=Column(sa.Integer, sa.ForeignKey("execution_events.id"), nullable=False)
    )
    event_type: str = Column_(sa_column=Column(sa.String(64), nullable=False))
    message_id: str = Column_(sa_column=Column(sa.String(64), nullable=False))
    payload: dict[str, Any] = Column_(sa_column=Column(JSONDocument, nullable=False))
    status: str = Column_(
        default=DeliveryStatus.PENDING.value, sa_column=Column(sa.String(16), nullable=False)
    )
    attempts: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    last_status_code: int | None = Column_(default=None, sa_column=Column(sa.Integer, nullable=True))
    last_error: str | None = Column_(default=None, sa_column=Column(sa.Text, nullable=True))
    last_attempt_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    next_attempt_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))
    #: Handed to Temporal (a delivery workflow runs it); false until the dispatcher starts it.
    dispatched: bool = Column_(default=False, sa_column=Column(sa.Boolean, nullable=False))
    #: How many times it was sent again by hand (each is a new Temporal workflow).
    redeliveries: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    created_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    delivered_at: datetime | None = Column_(default=None, sa_column=Column(UTCDateTime, nullable=True))


# --- requests ------------------------------------------------------------------------------


def _http_url(url: str) -> str:
    """The URL's form (scheme, host); where it points is checked against the network policy later."""
    try:
        check_url(url)
    except BlockedDestination as exc:
        raise ValueError(str(exc)) from exc
    return url


UrlText = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
WebhookUrl = Annotated[UrlText, AfterValidator(_http_url)]
EventName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e != ALL_EVENTS and e not in WEBHOOK_EVENTS]
    if unknown:
        raise ValueError(
            f"unknown event {unknown[0]!r}; use {ALL_EVENTS!r} or one of: {', '.join(WEBHOOK_EVENTS)}"
        )
    return list(dict.fromkeys(events))


class WebhookCreate(RequestModel):
    url: WebhookUrl = Field(description="http or https URL of the receiver.")
    events: list[EventName] = Field(
        min_length=1, max_length=len(WEBHOOK_EVENTS) + 1, description="Event names, or '*' for all."
    )
    secret: SecretStr | None = Field(
        None,
        min_length=MIN_SECRET_LENGTH,
        max_length=256,
        description=f"Signing secret, at least {MIN_SECRET_LENGTH} characters; generated when absent.",
    )
    active: bool = True

    _events = field_validator("events")(_check_events)


class WebhookUpdate(RequestModel):
    """Replace a webhook's URL, events and active flag; the secret changes only if given."""

    read_only_fields: ClassVar[frozenset[str]] = frozenset({"id", "createdAt", "deactivatedReason"})

    url: WebhookUrl
    events: list[EventName] = Field(min_length=1, max_length=len(WEBHOOK_EVENTS) + 1)
    active: bool = True
    secret: SecretStr | None = Field(None, min_length=MIN_SECRET_LENGTH, max_length=256)

    _events = field_validator("events")(_check_events)

    @field_validator("secret", mode="before")
    @classmethod
    def _masked_secret_is_no_change(cls, value: Any) -> Any:
        # A client that PUTs back what it got from a GET sends the mask: that changes nothing.
        return None if value == MASK else value


class WebhookTest(RequestModel):
    # Any string: what is wrong with it is the test's answer ({success: false, message}).
    url: UrlText
    event: EventName = "workflow.execution.completed"
    payload: dict[str, Any] = Field(default_factory=dict, description="The event's `data`.")
    secret: SecretStr | None = Field(
        None, max_length=256, description="Signs the test request; unsigned without."
    )

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        _check_events([value])
        if value == ALL_EVENTS:
            raise ValueError("name one event")
        return value


# --- responses -----------------------------------------------------------------------------


class WebhookPublic(ApiModel):
    id: str
    url: str
    events: list[str]
    secret: str | None = Field(description="In the creation response only; masked afterwards.")
    active: bool
    created_at: Timestamp


class WebhookPublicV2(WebhookPublic):
    deactivated_reason: str | None
    last_success_at: Timestamp | None
    updated_at: Timestamp


class WebhookTestResult(ApiModel):
    success: bool
    status_code: int | None
    message: str


class DeliveryPublic(ApiModel):
    id: str
    webhook_id: str
    event: str
    event_id: str = Field(
        description="The webhook-id header of every attempt (receivers de-duplicate on it)."
    )
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: Timestamp | None
    next_attempt_at: Timestamp | None
    created_at: Timestamp
    delivered_at: Timestamp | None
