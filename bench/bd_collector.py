"""The breakdown benchmark's event collector: a thread-local the write-through runner drains (passed through the sandbox)."""

from __future__ import annotations

import threading
from typing import Any

collected = threading.local()


def collect(key: str, event: dict[str, Any]) -> None:
    collected.events.setdefault(key, []).append(event)
