"""task_executions.seq: the sequence number of the event that left the task in its state.

A task subscription's first snapshot gives each task this number, so a client that resumes
after any message of it (``afterSequence``) gets the rest.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_executions") as batch:
        batch.add_column(sa.Column("seq", sa.Integer, nullable=False, server_default="0"))
    # Rows written before: the execution's last sequence number is at or after the task's own,
    # so a resuming client gets them again rather than never.
    op.execute(
        "UPDATE task_executions SET seq = "
        "(SELECT last_seq FROM executions WHERE executions.id = task_executions.execution_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("task_executions") as batch:
        batch.drop_column("seq")
