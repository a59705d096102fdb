"""Where the interpreter's events leave the workflow: the events of one activation are collected
here, and the worker's read model runner (activities/publisher.py) writes them to the read model
before that activation's commands go to Temporal.

So a task never starts before the API shows it started (its schedule command leaves only after
the write), and publishing costs no local activity, no extra activation and no history event.
While the database refuses the write, the workflow task fails and Temporal retries it: the DAG
waits, and nothing is added to the history but the first failure.

This module is passed through the workflow sandbox (the collector must be the worker's own
object, not a copy per workflow run) and does no I/O.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from workflows.inputs import Event

_local = threading.local()


class NoPublisher(RuntimeError):
    """The worker running the interpreter has no read model runner (it must be built by worker.py)."""


@dataclass
class Collected:
    """The events one activation emitted, for one execution."""

    execution_id: str | None = None
    events: list[Event] = field(default_factory=list)


@contextlib.contextmanager
def collecting() -> Iterator[Collected]:
    """The runner's side: everything emitted in this thread until the block ends."""
    collected = Collected()
    _local.collected = collected
    try:
        yield collected
    finally:
        _local.collected = None


def available() -> bool:
    """Whether this activation runs under a read model runner."""
    return getattr(_local, "collected", None) is not None


def emit(execution_id: str, event: Event) -> None:
    """The workflow's side: hand over one event of the running activation."""
    collected: Collected | None = getattr(_local, "collected", None)
    if collected is None:
        raise NoPublisher(
            "this worker runs the interpreter without a read model runner (see worker.py WorkerSet)"
        )
    collected.execution_id = execution_id
    collected.events.append(event)
