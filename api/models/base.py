"""Shared pieces of the API schemas: camelCase aliases, timestamps, request hygiene, pages."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

T = TypeVar("T")


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as the spec shows: 2025-05-21T21:26:58.211Z."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


#: Seconds, written back as an integer when whole (30 rather than 30.0).
Seconds = Annotated[float, PlainSerializer(_number, return_type=int | float)]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


def _not_storable(value: Any, path: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], str] | None:
    """The first value in a JSON document that no database could store as sent, and why."""
    if isinstance(value, str):
        return (path, "Text must not contain NUL (\\u0000) characters") if "\x00" in value else None
    if isinstance(value, float):
        return (
            None if math.isfinite(value) else (path, "Numbers must be finite (NaN and Infinity are not JSON)")
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return (*path, key), "Keys must not contain NUL (\\u0000) characters"
            found = _not_storable(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_storable(item, (*path, index))
            if found is not None:
                return found
    return None


class RequestModel(ApiModel):
    """A request body: unknown fields are refused; read-only fields a client echoes back are dropped.

    NUL characters are refused everywhere: PostgreSQL cannot store them and SQLite can, so
    accepting them would make the same request succeed or fail depending on the database.
    NaN and Infinity (which Python's JSON parser lets through) are refused: they are not JSON.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
    read_only_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        found = _not_storable(data)
        if found is not None:
            path, message = found
            error = PydanticCustomError("not_storable", message)
            raise ValidationError.from_exception_data(
                cls.__name__, [{"type": error, "loc": path, "input": None}]
            )
        if cls.read_only_fields:
            data = {k: v for k, v in data.items() if k not in cls.read_only_fields}
        return data


class Page(ApiModel, Generic[T]):
    """The v2 list envelope."""

    items: list[T]
    total: int = Field(description="Number of items across all pages.")
    limit: int
    offset: int
