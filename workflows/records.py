"""The interpreter's records: the state of each task, blockers, inspections, approval decisions.

Plain dataclasses with no I/O and no clock, passed through the workflow sandbox: the sandbox runs
the interpreter's module afresh for every new run, and what lives here is defined once per worker
instead (a dataclass costs its generated methods each time it is defined).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workflows.inputs import TaskSpec

PENDING, RUNNING, WAITING, COMPLETED, FAILED, CANCELLED = (
    "PENDING",
    "RUNNING",
    "WAITING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
)


@dataclass
class TaskState:
    """A task of the running DAG: its spec and where it stands."""

    spec: TaskSpec
    status: str = PENDING
    #: Attempts of earlier schedulings (a retried task goes on counting).
    attempts_before: int = 0
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    resources: dict[str, Any] | None = None
    runner: asyncio.Task[None] | None = None
    decision: tuple[str, Any] | None = None
    #: WAITING when the previous run continued as new: it goes on waiting, unannounced.
    carried: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "taskId": self.spec.id,
            "status": self.status,
            "startTime": self.started_at,
            "endTime": self.ended_at,
            "attempts": self.attempts,
            "error": self.error,
            "resources": self.resources,
        }


@dataclass
class TaskDecision:
    """An approval task's outcome, sent by the API."""

    task_id: str
    output: Any = None
    reason: str | None = None


@dataclass
class Blocker:
    """Something holding the execution back, open until resolved."""

    key: str
    kind: str
    description: str
    task_id: str | None
    created_at: datetime
    resolved_at: datetime | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "description": self.description,
            "taskId": self.task_id,
            "createdAt": self.created_at,
            "resolvedAt": self.resolved_at,
        }


@dataclass
class Inspection:
    """When a running task is next looked at, and the gap after that."""

    next_at: float
    interval: float
