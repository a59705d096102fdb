"""Fixed-window counters in the database, so every API replica counts the same hits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import UTCDateTime, utcnow
from api.errors import TooManyRequests
from api.models.users import CounterRow

#: Keys of the rows that say when the counters of one kind (`user:`, `addr:`, ...) were last purged.
PURGE_MARK = "purge:"


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
        for key in keys:
            await self.session.exec(self._upsert(key, now))
        await self._purge_expired(keys, now)
        await self.session.commit()

    async def take(self, limits: Sequence[tuple[str, int]], message: str) -> None:
        """Count one hit on every key, or on none of them: TooManyRequests (with the longest wait) if
        any key already has its limit of hits in its window.

        Check and count are one conditional upsert per key, in one transaction: two callers racing
        for the last hit cannot both get it (on PostgreSQL the row lock queues the second, which
        then sees the first's count; SQLite has one writer at a time). A refusal rolls back, so a
        refused attempt counts towards no key. The keys are taken in one order by every caller, so
        callers sharing keys never wait on each other in a cycle.
        """
        now = utcnow()
        for key, limit in sorted(limits):
            taken = (
                await self.session.exec(self._upsert(key, now, limit).returning(col(CounterRow.hits)))
            ).first()
            if taken is None:
                await self.session.rollback()
                raise TooManyRequests(message, await self._retry_after(limits))
        await self._purge_expired([key for key, _ in limits], now)
        await self.session.commit()

    async def give_back(self, *keys: str) -> None:
        """Return one hit taken on each key (a reserved attempt that turned out fine); not committed."""
        await self.session.exec(
            sa.update(CounterRow)
            .where(col(CounterRow.key).in_(keys), col(CounterRow.hits) > 0)
            .values(hits=col(CounterRow.hits) - 1)
        )

    async def clear(self, *keys: str) -> None:
        """Forget these keys' hits; not committed."""
        await self.session.exec(sa.delete(CounterRow).where(col(CounterRow.key).in_(keys)))

    def _upsert(self, key: str, now: datetime, limit: int | None = None) -> sa.Insert:
        """One hit on `key` (a new window if the last one ended); with `limit`, only if that leaves
        at most `limit` hits in the window (else the statement changes and returns nothing)."""
        started = sa.literal(now, UTCDateTime)
        expired = col(CounterRow.window_started_at) <= sa.literal(now - self.window, UTCDateTime)
        insert = postgresql_insert if self.session.get_bind().dialect.name == "postgresql" else sqlite_insert
        return (
            insert(CounterRow)
            .values(key=key, hits=1, window_started_at=now)
            .on_conflict_do_update(
                index_elements=["key"],
                set_={
                    "hits": sa.case((expired, 1), else_=col(CounterRow.hits) + 1),
                    "window_started_at": sa.case((expired, started), else_=col(CounterRow.window_started_at)),
                },
                where=None if limit is None else sa.or_(expired, col(CounterRow.hits) < limit),
            )
        )

    async def _retry_after(self, limits: Sequence[tuple[str, int]]) -> int:
        """Seconds until every key of `limits` that is at its limit has a new window."""
        now = utcnow()
        bounds = dict(limits)
        rows = await self.session.exec(select(CounterRow).where(col(CounterRow.key).in_(bounds)))
        waits = [
            (row.window_started_at + self.window - now).total_seconds()
            for row in rows
            if row.hits >= bounds[row.key] and row.window_started_at + self.window > now
        ]
        return int(max(waits, default=0)) + 1

    async def _purge_expired(self, keys: Sequence[str], now: datetime) -> None:
        """Delete the counters of these keys' kinds (the text before the first `:`) whose window
        ended, at most once per window and kind across replicas: the writer that finds the kind's
        purge mark older than a window moves it (a conditional upsert, like a hit) and purges."""
        for kind in sorted({key.partition(":")[0] for key in keys}):
            mark = f"{PURGE_MARK}{kind}"
            # Read first: the upsert below locks the mark's row on PostgreSQL even when it changes
            # nothing, and every writer of this kind would queue on it.
            last = (
                await self.session.exec(select(CounterRow.window_started_at).where(CounterRow.key == mark))
            ).first()
            if last is not None and last + self.window > now:
                continue
            claimed = (
                await self.session.exec(self._upsert(mark, now, 1).returning(col(CounterRow.hits)))
            ).first()
            if claimed is None:
                continue  # another writer purges this window
            await self.session.exec(
                sa.delete(CounterRow).where(
                    col(CounterRow.key).startswith(f"{kind}:", autoescape=True),
                    col(CounterRow.window_started_at) <= sa.literal(now - self.window, UTCDateTime),
                )
            )
