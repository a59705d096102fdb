"""The reconciler's last pass: what /readyz shows of it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Column_

from api.db import UTCDateTime

#: The one row of reconciler_passes: each pass overwrites it.
LAST_PASS_ID = 1


class ReconcilerPassRow(SQLModel, table=True):
    """The outcome of the latest reconciliation pass (one row, overwritten by every pass)."""

    __tablename__ = "reconciler_passes"

    id: int | None = Column_(default=None, primary_key=True)
    started_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))
    #: Executions the read model showed unfinished that the pass compared with Temporal.
    examined: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    repaired: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    #: Found diverging from Temporal and not repaired yet (within the grace period, or the repair failed).
    backlog: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    #: Temporal gave no usable answer about them.
    unchecked: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
