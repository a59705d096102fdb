"""Users, roles and login throttling."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

import sqlalchemy as sa
from pydantic import Field, SecretStr, StringConstraints, field_validator
from sqlmodel import Column, SQLModel
from sqlmodel import Field as Column_

from api.db import UTCDateTime, utcnow
from api.models.base import ApiModel, RequestModel, Timestamp
from api.settings import MIN_ADMIN_PASSWORD_CHARS, USERNAME_PATTERN


class Role(StrEnum):
    """viewer reads; operator also writes definitions and executions; admin also manages users."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class UserRow(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Column_(default=None, primary_key=True)
    username: str = Column_(sa_column=Column(sa.String(64), nullable=False, unique=True))
    password_hash: str = Column_(sa_column=Column(sa.String(255), nullable=False))
    role: str = Column_(sa_column=Column(sa.String(16), nullable=False))
    active: bool = Column_(default=True, sa_column=Column(sa.Boolean, nullable=False))
    #: Bumped whenever earlier tokens must stop working (disable, password reset, role change).
    token_version: int = Column_(default=1, sa_column=Column(sa.Integer, nullable=False))
    created_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Column_(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class CounterRow(SQLModel, table=True):
    """Hits per key in a fixed window: failed logins (`user:<name>`, `addr:<ip>`), webhook tests, ..."""

    __tablename__ = "rate_counters"

    key: str = Column_(sa_column=Column(sa.String(255), primary_key=True))
    hits: int = Column_(default=0, sa_column=Column(sa.Integer, nullable=False))
    window_started_at: datetime = Column_(sa_column=Column(UTCDateTime, nullable=False))


Username = Annotated[
    str,
    StringConstraints(pattern=f"^{USERNAME_PATTERN}$"),
    Field(description="1-64 letters, digits or `_ . @ + -`; case-insensitive."),
]
#: argon2 has no 72-byte limit (bcrypt has); the cap only bounds the hashing work.
NewPassword = Annotated[
    SecretStr,
    Field(
        min_length=MIN_ADMIN_PASSWORD_CHARS,
        max_length=1024,
        description=f"At least {MIN_ADMIN_PASSWORD_CHARS} characters.",
    ),
]


class LoginRequest(RequestModel):
    username: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    password: Annotated[SecretStr, Field(min_length=1, max_length=1024)]


class TokenPublic(ApiModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class UserCreate(RequestModel):
    username: Username
    password: NewPassword
    role: Role = Role.VIEWER

    @field_validator("username")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class UserUpdate(RequestModel):
    """Change a user's role or enable/disable them. Either change ends the user's current sessions."""

    read_only_fields: ClassVar[frozenset[str]] = frozenset({"id", "username", "createdAt", "updatedAt"})

    role: Role | None = None
    active: bool | None = None


class PasswordReset(RequestModel):
    password: NewPassword


class UserPublic(ApiModel):
    id: str
    username: str
    role: Role
    active: bool
    created_at: Timestamp
    updated_at: Timestamp
