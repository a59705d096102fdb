"""The only code that touches JWTs and password hashes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from api.settings import Settings

#: Pinned: a token naming any other algorithm (`none` included) is refused.
ALGORITHM = "HS256"
AUDIENCE = "workflow-orchestration-api"

_hasher = PasswordHasher()
#: Verified against when the user does not exist, so both answers take the same time.
_DUMMY_HASH = _hasher.hash("not a real password: equalises timing")


class InvalidToken(Exception):
    """The token is malformed, expired, tampered with or signed by someone else."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    username: str
    roles: tuple[str, ...]
    token_version: int
    expires_at: datetime | None = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """True when the password matches. With no hash, burns the same time and answers False."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def issue_token(
    settings: Settings, *, user_id: int, username: str, role: str, token_version: int
) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    now = datetime.now(UTC)
    ttl = settings.jwt_ttl_seconds
    claims = {
        "iss": settings.jwt_issuer,
        "aud": AUDIENCE,
        "sub": str(user_id),
        "name": username,
        "roles": [role],
        "ver": token_version,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_key(), algorithm=ALGORITHM), ttl


def decode_token(settings: Settings, token: str) -> TokenClaims:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_key(),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            leeway=5,
        )
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("roles claim missing")
        version = claims.get("ver")
        if not isinstance(version, int):
            raise InvalidToken("ver claim missing")
        return TokenClaims(
            user_id=int(claims["sub"]),
            username=str(claims.get("name", "")),
            roles=tuple(roles),
            token_version=version,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except (
        jwt.PyJWTError,
        ValueError,
        TypeError,
        OverflowError,
        OSError,
    ) as exc:  # the last two: an absurd exp
        raise InvalidToken(str(exc)) from exc
