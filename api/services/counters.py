"""Fixed-window counters in the database, so every API replica counts the same hits."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import UTCDateTime, utcnow
from api.errors import TooManyRequests
from api.models.users import CounterRow


class Counters:
    def __init__(self, session: AsyncSession, window_seconds: float):
        self.session = session
        self.window = timedelta(seconds=window_seconds)

    async def check(self, key: str, limit: int, message: str) -> None:
        """429 with Retry-After if the key has `limit` hits in its current window."""
        now = utcnow()
        row = await self.session.get(CounterRow, key, populate_existing=True)
        if row is None or row.window_started_at + self.window <= now or row.hits < limit:
            return
        retry_after = int((row.window_started_at + self.window - now).total_seconds()) + 1
        raise TooManyRequests(message, retry_after)

    async def hit(self, *keys: str) -> None:
        """Count one hit per key, each in a single upsert: concurrent replicas never lose a count."""
        now = utcnow()
        started = sa.literal(now, UTCDateTime)
        expired = col(CounterRow.window_started_at) <= sa.literal(now - self.window, UTCDateTime)
        insert = postgresql_insert if self.session.get_bind().dialect.name == "postgresql" else sqlite_insert
        for key in keys:
            statement = (
                insert(CounterRow)
                .values(key=key, hits=1, window_started_at=now)
                .on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        "hits": sa.case((expired, 1), else_=col(CounterRow.hits) + 1),
                        "window_started_at": sa.case((expired, started), else_=col(CounterRow.window_started_at)),
                    },
                )
            )
            await self.session.exec(statement)  # type: ignore[call-overload]
        await self.session.commit()

    async def clear(self, key: str) -> None:
        await self.session.exec(sa.delete(CounterRow).where(col(CounterRow.key) == key))  # type: ignore[call-overload]
