"""Scalars: timestamps as the REST API writes them, and free-form JSON."""

from __future__ import annotations

from datetime import datetime
from typing import NewType

import strawberry
from strawberry.scalars import JSON

from api.models.base import format_timestamp

#: A UTC time written like the REST API's: 2025-05-21T21:26:58.211Z.
DateTime = NewType("DateTime", datetime)

SCALARS = {
    DateTime: strawberry.scalar(
        name="DateTime",
        serialize=format_timestamp,
        parse_value=lambda value: datetime.fromisoformat(str(value)),
        description="ISO 8601 time in UTC with milliseconds, e.g. 2025-05-21T21:26:58.211Z.",
    )
}

__all__ = ["JSON", "SCALARS", "DateTime"]
