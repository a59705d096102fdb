"""reconciler_passes: the outcome of the reconciler's latest pass (the backlog /readyz shows).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from api.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciler_passes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("examined", sa.Integer, nullable=False),
        sa.Column("repaired", sa.Integer, nullable=False),
        sa.Column("backlog", sa.Integer, nullable=False),
        sa.Column("unchecked", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reconciler_passes")
