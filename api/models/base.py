"""Shared pieces of the API schemas: camelCase aliases, timestamps, request hygiene, pages."""

from __future__ import annotations

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


def _nul_path(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where a NUL character hides in a JSON document, if anywhere."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return (*path, key)
            found = _nul_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, (*path, index))
            if found is not None:
                return found
    return None


class RequestModel(ApiModel):
    """A request body: unknown fields are refused; read-only fields a client echoes back are dropped.

    NUL characters are refused everywhere: PostgreSQL cannot store them and SQLite can, so
    accepting them would make the same request succeed or fail depending on the database.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
    read_only_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        path = _nul_path(data)
        if path is not None:
            error = PydanticCustomError("nul_character", "Text must not contain NUL (\\u0000) characters")
            raise ValidationError.from_exception_data(cls.__name__, [{"type": error, "loc": path, "input": None}])
        if cls.read_only_fields:
            data = {k: v for k, v in data.items() if k not in cls.read_only_fields}
        return data


class Page(ApiModel, Generic[T]):
    """The v2 list envelope."""

    items: list[T]
    total: int = Field(description="Number of items across all pages.")
    limit: int
    offset: int
