"""The event feed: tells this process's watchers that an execution has new events.

The event log in the database is the truth; the feed only wakes watchers, who then read what
is new after their own cursor. So a slow watcher falls behind alone and never loses an event,
and a watcher on replica B sees an execution started on replica A: every replica reads the
same log. PostgreSQL's LISTEN/NOTIFY wakes the feed at once; a short poll covers SQLite (and
any notification lost while the listener reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from api.models.executions import ExecutionEventRow

log = logging.getLogger(__name__)

_events = ExecutionEventRow.__table__  # type: ignore[attr-defined]

T = TypeVar("T")

#: The PostgreSQL channel the read model writer notifies after each batch.
NOTIFY_CHANNEL = "wfo_events"


class SharedReads:
    """Single-flight reads with a short memory: watchers of one execution woken by the same
    change ask the same question; one database read answers all of them."""

    def __init__(self, ttl: float = 5.0, size: int = 2048) -> None:
        self.ttl = ttl
        self.size = size
        self._results: OrderedDict[Hashable, tuple[float, asyncio.Future[Any]]] = OrderedDict()

    async def get(
        self, key: Hashable, load: Callable[[], Awaitable[T]], keep: Callable[[T], bool] = bool
    ) -> T:
        """The answer to `key`: shared while loading, remembered afterwards only if `keep(answer)`
        (an empty answer, say, may be stale a moment later)."""
        now = time.monotonic()
        found = self._results.get(key)
        # Shared while loading; afterwards reused while fresh, unless it failed.
        if found is not None and (
            not found[1].done() or (now - found[0] < self.ttl and found[1].exception() is None)
        ):
            return await asyncio.shield(found[1])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results[key] = (now, future)
        self._results.move_to_end(key)
        while len(self._results) > self.size:
            self._results.popitem(last=False)
        try:
            result = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            self._results.pop(key, None)
            raise
        future.set_result(result)
        if not keep(result):
            self._results.pop(key, None)
        return result


class EventFeed:
    """One per process: polls (and on PostgreSQL listens) for new events, wakes waiters."""

    def __init__(self, engine: AsyncEngine, *, poll_interval: float = 0.1, listen_url: str | None = None):
        self.engine = engine
        self.poll_interval = poll_interval
        self.listen_url = listen_url
        self._latest: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = defaultdict(set)
        self._cursor = 0
        #: Polls were skipped (nobody waited): the cursor and the hints are behind.
        self._cold = False
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.shared = SharedReads()

    async def start(self) -> None:
        async with self.engine.connect() as conn:
            self._cursor = (await conn.execute(sa.select(sa.func.max(_events.c.id)))).scalar() or 0
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="event-feed-poll"))
        if self.listen_url:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="event-feed-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()

    async def wait_beyond(self, execution_id: int, seq: int, timeout: float) -> None:
        """Return when the execution has an event after `seq`, or after `timeout` seconds anyway
        (the caller reads the log either way, so a missed wake-up costs time, never events)."""
        if self._latest.get(execution_id, 0) > seq:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[execution_id].add(waiter)
        if self._cold:
            self._kick.set()  # the hints are cold: look now rather than at the next tick
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as it times out, and the cancelled task would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[execution_id]

    def _note(self, execution_id: int, seq: int) -> None:
        if seq > self._latest.get(execution_id, 0):
            self._latest[execution_id] = seq
        for waiter in self._waiters.get(execution_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be briefly away: keep going  # noqa: BLE001
                log.warning("event feed poll failed: %s", exc)
                await asyncio.sleep(1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._kick.wait()
            self._kick.clear()

    async def _poll(self) -> None:
        if not self._waiters:
            # Nobody to wake: no query (an API with no subscribers would otherwise read the log
            # after every event). The hints go cold; the first waiter warms them up.
            self._cold = True
            return
        if self._cold:
            await self._warm_up()
            return
        query = (
            sa.select(_events.c.id, _events.c.execution_id, _events.c.seq)
            .where(_events.c.id > self._cursor)
            .order_by(_events.c.id)
            .limit(5000)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        for event_id, execution_id, seq in rows:
            self._cursor = max(self._cursor, event_id)
            self._note(execution_id, seq)
        if len(self._latest) > 100_000:
            # Bounded memory: forget executions nobody waits on (the log still has them).
            self._latest = {k: v for k, v in self._latest.items() if k in self._waiters}

    async def _warm_up(self) -> None:
        """After polls were skipped: jump the cursor to the log's end, and note the latest event
        of each execution waited on (the events skipped over are theirs too)."""
        waited = list(self._waiters)
        async with self.engine.connect() as conn:
            top = (await conn.execute(sa.select(sa.func.max(_events.c.id)))).scalar() or 0
            latest = (
                await conn.execute(
                    sa.select(_events.c.execution_id, sa.func.max(_events.c.seq))
                    .where(_events.c.execution_id.in_(waited))
                    .group_by(_events.c.execution_id)
                )
            ).all()
        self._cursor = max(self._cursor, top)
        self._cold = False
        for execution_id, seq in latest:
            self._note(execution_id, seq)

    async def _listen_forever(self) -> None:
        assert self.listen_url is not None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.listen_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._kick.set()  # catch up on anything sent while not listening
                    async for _ in conn.notifies():
                        self._kick.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("event feed listener lost its connection: %s", exc)
                await asyncio.sleep(1)
