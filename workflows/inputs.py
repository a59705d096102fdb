"""Dataclasses that cross into Temporal (workflow and activity inputs and results).

Add fields with defaults; never remove or reorder them: running executions hold these in their
histories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskInput:
    """What a task activity receives."""

    execution_id: str
    task_id: str
    task_type: str
    input: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)
