"""Pagination: `limit` (default 10, capped) and `offset`, the same rules for REST and GraphQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from api.errors import InvalidInput
from api.models.base import Page
from api.settings import Settings

T = TypeVar("T")
MAX_OFFSET = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Pagination:
    limit: int
    offset: int

    @classmethod
    def checked(cls, settings: Settings, limit: int, offset: int) -> Pagination:
        """Pagination from raw values, refused (422) as the query parameters would be."""
        problems = []
        if limit < 1:
            problems.append(
                {"parameter": "limit", "in": "query", "detail": "Input should be greater than or equal to 1"}
            )
        elif limit > settings.page_max_limit:
            problems.append(
                {
                    "parameter": "limit",
                    "in": "query",
                    "detail": f"Input should be at most {settings.page_max_limit}",
                }
            )
        if offset < 0:
            problems.append(
                {"parameter": "offset", "in": "query", "detail": "Input should be greater than or equal to 0"}
            )
        elif offset > MAX_OFFSET:
            problems.append(
                {
                    "parameter": "offset",
                    "in": "query",
                    "detail": f"Input should be less than or equal to {MAX_OFFSET}",
                }
            )
        if problems:
            raise InvalidInput(
                f"The request has {len(problems)} problem{'s' if len(problems) > 1 else ''}.", problems
            )
        return cls(limit=limit, offset=offset)

    def present(self, version: int, items: Sequence[T], total: int) -> list[T] | Page[T]:
        """v1: a bare array, as the spec shows; v2: the envelope with the total."""
        if version >= 2:
            return Page(items=list(items), total=total, limit=self.limit, offset=self.offset)
        return list(items)
