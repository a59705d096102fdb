"""Webhooks and their deliveries; login_failures becomes the general rate_counters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from api.db import JSONDocument, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table("login_failures", "rate_counters")
    with op.batch_alter_table("rate_counters") as batch:
        batch.alter_column(
            "failures", new_column_name="hits", existing_type=sa.Integer, existing_nullable=False
        )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", JSONDocument, nullable=False),
        sa.Column("secret", sa.Text, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("deactivated_reason", sa.Text, nullable=True),
        sa.Column("created_by", sa.Integer, nullable=True, index=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_success_at", UTCDateTime, nullable=True),
        sa.Column("failing_since", UTCDateTime, nullable=True),
        sa.Column("deleted_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("webhook_id", sa.Integer, sa.ForeignKey("webhooks.id"), nullable=False, index=True),
        sa.Column("event_id", sa.Integer, sa.ForeignKey("execution_events.id"), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("payload", JSONDocument, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_attempt_at", UTCDateTime, nullable=True),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("dispatched", sa.Boolean, nullable=False),
        sa.Column("redeliveries", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_delivery_event"),
        sa.Index("ix_deliveries_dispatch", "dispatched", "id"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    with op.batch_alter_table("rate_counters") as batch:
        batch.alter_column(
            "hits", new_column_name="failures", existing_type=sa.Integer, existing_nullable=False
        )
    op.rename_table("rate_counters", "login_failures")
