"""What this worker process offers to task activities: its identity and its capacity.

worker.py calls `configure_worker(identity=...)` and `configure_capacity(cpu=..., memory=..., gpu=...)`
once at start. A task's `resourceRequirements` (`cpu` cores, `memory` MB, `gpu` count) are
reserved before it runs and given back when it ends. Waiting is FIFO-fair: no task overtakes an
earlier one, so a big task is never starved by a stream of small ones. A task that needs more
than the worker has in total can never run here and fails with the non-retryable error type
`InsufficientCapacity`.

Everything here runs on the worker's event loop (task activities are async), so plain asyncio
futures guard the counters; no locks are needed.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from temporalio.exceptions import ApplicationError

INSUFFICIENT_CAPACITY = "InsufficientCapacity"
RESOURCES = ("cpu", "memory", "gpu")
_UNITS = {"cpu": "cores", "memory": "MB", "gpu": "GPUs"}
#: Float sums of fractional cores drift; this much over the total still fits.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Resources:
    """Amounts of cpu (cores), memory (MB) and gpu; None in a total means unlimited."""

    cpu: float | None = None
    memory: float | None = None
    gpu: float | None = None

    @classmethod
    def of(cls, requirements: Mapping[str, Any] | None) -> Resources:
        """The countable part of a task's requirements (storage, custom and queue are not counted)."""
        if not requirements:
            return cls()
        values: dict[str, float | None] = {}
        for name in RESOURCES:
            raw = requirements.get(name)
            if raw is None:
                values[name] = None
                continue
            try:
                amount = float(raw)
            except (TypeError, ValueError):
                raise ApplicationError(
                    f"resourceRequirements.{name} must be a number, not {raw!r}",
                    type="InvalidInput",
                    non_retryable=True,
                ) from None
            if amount < 0:
                raise ApplicationError(
                    f"resourceRequirements.{name} must not be negative ({amount:g})",
                    type="InvalidInput",
                    non_retryable=True,
                )
            values[name] = amount or None
        return cls(**values)

    def is_empty(self) -> bool:
        """True when nothing is asked for."""
        return all(getattr(self, name) is None for name in RESOURCES)

    def as_dict(self) -> dict[str, float]:
        """The amounts that are set, for messages and error details."""
        return {name: value for name in RESOURCES if (value := getattr(self, name)) is not None}

    def describe(self) -> str:
        """Human text, e.g. `2 cores, 512 MB`; `unlimited` when no amount is set."""
        parts = [f"{value:g} {_UNITS[name]}" for name, value in self.as_dict().items()]
        return ", ".join(parts) or "unlimited"


class Capacity:
    """A worker-wide pool of cpu, memory and gpu, reserved FIFO by task activities."""

    def __init__(
        self, cpu: float | None = None, memory: float | None = None, gpu: float | None = None
    ) -> None:
        self.total = Resources(cpu, memory, gpu)
        self._used = {name: 0.0 for name in RESOURCES}
        self._waiters: deque[tuple[Resources, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> Resources:
        """What running tasks hold now."""
        return Resources(**{name: value or None for name, value in self._used.items()})

    @property
    def waiting(self) -> int:
        """How many tasks wait for capacity."""
        return sum(1 for _, future in self._waiters if not future.done())

    def check(self, need: Resources) -> None:
        """Refuse (InsufficientCapacity, non-retryable) a need this worker can never satisfy."""
        over = [
            name
            for name in RESOURCES
            if (amount := getattr(need, name)) is not None
            and (total := getattr(self.total, name)) is not None
            and amount > total + _EPSILON
        ]
        if over:
            raise ApplicationError(
                f"the task needs {need.describe()} but this worker has {self.total.describe()} in total"
                f" (too little {', '.join(over)}); run it on a queue served by bigger workers",
                {"needs": need.as_dict(), "workerCapacity": self.total.as_dict()},
                type=INSUFFICIENT_CAPACITY,
                non_retryable=True,
            )

    @asynccontextmanager
    async def reserve(self, requirements: Mapping[str, Any] | Resources | None) -> AsyncIterator[Resources]:
        """Hold `requirements` for the duration of the block, waiting (FIFO) until they fit."""
        need = requirements if isinstance(requirements, Resources) else Resources.of(requirements)
        if need.is_empty():
            yield need
            return
        await self.acquire(need)
        try:
            yield need
        finally:
            self.release(need)

    async def acquire(self, need: Resources) -> None:
        """Take `need`, waiting behind earlier waiters until it fits; cancellation leaves the queue."""
        self.check(need)
        if not self._waiters and self._fits(need):
            self._take(need)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (need, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._give(need)  # granted just as the waiter was cancelled: hand it on
            else:
                future.cancel()
                self._waiters.remove(entry)
            self._wake()
            raise

    def release(self, need: Resources) -> None:
        """Give `need` back and start the waiters that now fit, in order."""
        self._give(need)
        self._wake()

    def _fits(self, need: Resources) -> bool:
        for name in RESOURCES:
            amount, total = getattr(need, name), getattr(self.total, name)
            if amount is not None and total is not None and self._used[name] + amount > total + _EPSILON:
                return False
        return True

    def _take(self, need: Resources) -> None:
        for name, amount in need.as_dict().items():
            self._used[name] += amount

    def _give(self, need: Resources) -> None:
        for name, amount in need.as_dict().items():
            self._used[name] = max(0.0, self._used[name] - amount)

    def _wake(self) -> None:
        while self._waiters:
            need, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(need):
                return  # strict FIFO: nobody overtakes the head of the queue
            self._waiters.popleft()
            self._take(need)
            future.set_result(None)


_capacity = Capacity()
_identity: str | None = None


def configure_capacity(
    cpu: float | None = None, memory: float | None = None, gpu: float | None = None
) -> Capacity:
    """Set this worker's total capacity (None: unlimited); called once by worker.py before it polls."""
    global _capacity
    for name, value in (("cpu", cpu), ("memory", memory), ("gpu", gpu)):
        if value is not None and value < 0:
            raise ValueError(f"{name} capacity must not be negative")
    _capacity = Capacity(cpu, memory, gpu)
    return _capacity


def capacity() -> Capacity:
    """The worker-wide capacity that task activities reserve from."""
    return _capacity


def configure_worker(identity: str) -> None:
    """Record the worker identity that task outcomes and errors report (the Temporal Worker's identity)."""
    global _identity
    _identity = identity


def worker_identity() -> str:
    """The identity set by `configure_worker`, else Temporal's default form `pid@host`."""
    return _identity or f"{os.getpid()}@{socket.gethostname()}"
