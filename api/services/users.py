"""Users: login (with throttling), token checks, and user management for admins."""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import security
from api.db import serialize_writes, utcnow
from api.errors import Conflict, Forbidden, InvalidCredentials, Unauthenticated, UserNotFound
from api.models.users import (
    LoginRequest,
    PasswordReset,
    Role,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserRow,
    UserUpdate,
)
from api.services.counters import Counters
from api.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The threads that hash and check passwords, per pool size. Argon2 takes tens of milliseconds of
#: CPU and 64 MiB per call by design: on the event loop a stream of logins would stall every
#: request. The pool is small on purpose, so a login flood waits its turn here instead of taking
#: every thread (and every core) of the process.
_password_pools: dict[int, ThreadPoolExecutor] = {}


async def off_the_loop(settings: Settings, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on the password threads."""
    threads = settings.password_hash_threads
    pool = _password_pools.get(threads)
    if pool is None:
        pool = _password_pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="wfo-password")
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    id: int
    username: str
    role: Role
    #: When the token this principal came with expires (None: not from a token).
    expires_at: datetime | None = field(default=None, compare=False)

    def require(self, role: Role) -> None:
        if not self.role.allows(role):
            raise Forbidden(f"This needs the {role.value} role; you have {self.role.value}.")


def to_public(row: UserRow) -> UserPublic:
    assert row.id is not None
    return UserPublic(
        id=str(row.id),
        username=row.username,
        role=Role(row.role),
        active=row.active,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def parse_id(raw: str) -> int | None:
    """Public ids are decimal strings; anything else names nothing."""
    if not raw.isascii() or not raw.isdecimal() or len(raw) > 18:
        return None
    return int(raw)


def address_key(address: str) -> str:
    """The client address a throttle counts: an IPv6 client by its /64 (one host is usually given
    a whole /64 to pick addresses from), an IPv4-mapped one as IPv4, anything unparsable as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """Failed logins in a fixed window, counted per (username, client address), per username from
    every address, and per client address.

    A limit per username alone would let anyone lock the owner out for good: five wrong passwords
    per window, forever. Counted per (username, address), an attacker locks out only themselves
    and the owner, elsewhere, still logs in. The per-username ceiling (much higher) bounds guessing
    spread over many addresses; reaching it takes that many addresses, and is the only way left
    to lock an account. The per-address limit bounds one client guessing many usernames.

    Each attempt is reserved on all three counters before the password is checked, in one step
    (Counters.take): parallel guesses cannot get past a limit, and refused attempts count nowhere
    (an attacker hammering a locked pair does not push the username towards its ceiling). A
    success clears the username's counters and gives the address its reservation back.
    """

    MESSAGE = "Too many failed logins; try again later."

    def __init__(self, session: AsyncSession, settings: Settings, username: str, address: str | None):
        self.counters = Counters(session, settings.login_failure_window_seconds)
        # Bounded: no user has a name this long, so long names may share one counter.
        name = username.lower()[:200]
        where = address_key(address) if address else "-"
        self.user_key = f"user:{name}"
        self.pair_key = f"pair:{where} {name}"
        self.address_key = f"addr:{where}" if address else None
        self.limits = [
            (self.pair_key, settings.login_max_failures_per_user_and_address),
            (self.user_key, settings.login_max_failures_per_user),
        ]
        if self.address_key:
            self.limits.append((self.address_key, settings.login_max_failures_per_address))

    async def reserve(self) -> None:
        """Count this attempt as a failure until it succeeds; 429 if any counter is full."""
        await self.counters.take(self.limits, self.MESSAGE)

    async def succeeded(self) -> None:
        """The attempt was right (not committed): the username starts afresh, the address does not
        (one valid account must not let a client guess other accounts' passwords forever)."""
        await self.counters.clear(self.pair_key, self.user_key)
        if self.address_key:
            await self.counters.give_back(self.address_key)


class UserService:
    def __init__(self, session: AsyncSession, settings: Settings):
        self.session = session
        self.settings = settings

    # --- authentication -------------------------------------------------------------

    async def login(self, data: LoginRequest, address: str | None) -> TokenPublic:
        username = data.username.lower()
        throttle = LoginThrottle(self.session, self.settings, username, address)
        await throttle.reserve()
        row = (await self.session.exec(select(UserRow).where(UserRow.username == username))).first()
        password = data.password.get_secret_value()
        ok = await off_the_loop(
            self.settings, security.verify_password, password, row.password_hash if row else None
        )
        if not ok or row is None or not row.active:
            # The reservation stays: it was a failure.
            log.info("failed login for %r from %s", username, address)
            raise InvalidCredentials()
        assert row.id is not None
        if security.needs_rehash(row.password_hash):
            row.password_hash = await off_the_loop(self.settings, security.hash_password, password)
        await throttle.succeeded()
        await self.session.commit()
        token, ttl = security.issue_token(
            self.settings,
            user_id=row.id,
            username=row.username,
            role=row.role,
            token_version=row.token_version,
        )
        return TokenPublic(access_token=token, expires_in=ttl)

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token, checked against the user as stored now."""
        try:
            claims = security.decode_token(self.settings, token)
        except security.InvalidToken as exc:
            raise Unauthenticated("The bearer token is invalid or expired.", invalid_token=True) from exc
        row = await self.session.get(UserRow, claims.user_id)
        # A disabled user, a reset password or a changed role bumps token_version.
        if row is None or not row.active or row.token_version != claims.token_version:
            raise Unauthenticated("The bearer token is no longer valid; log in again.", invalid_token=True)
        return Principal(
            id=claims.user_id, username=row.username, role=Role(row.role), expires_at=claims.expires_at
        )

    # --- management (admins) --------------------------------------------------------

    async def list(self, limit: int, offset: int) -> tuple[list[UserPublic], int]:
        total = (await self.session.exec(select(func.count()).select_from(UserRow))).one()
        rows = await self.session.exec(select(UserRow).order_by(col(UserRow.id)).limit(limit).offset(offset))
        return [to_public(r) for r in rows], total

    async def get(self, user_id: str) -> UserPublic:
        return to_public(await self._row(user_id))

    async def create(self, data: UserCreate) -> UserPublic:
        now = utcnow()
        row = UserRow(
            username=data.username,
            password_hash=await off_the_loop(
                self.settings, security.hash_password, data.password.get_secret_value()
            ),
            role=data.role.value,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(f"The username {data.username!r} is taken.") from exc
        return to_public(row)

    async def update(self, actor: Principal, user_id: str, data: UserUpdate) -> UserPublic:
        # A change that may leave no admin locks the admins first, all of them in one order:
        # two admins demoting each other at once then queue, one after the other (locking the
        # target first and the others after would deadlock them).
        admins = await self._lock_admins() if data.role is not None or data.active is not None else []
        row = await self._row(user_id, for_update=True)
        changed = False
        if data.role is not None and data.role.value != row.role:
            if row.role == Role.ADMIN:
                self._keep_an_admin(row, admins)
            row.role, changed = data.role.value, True
        if data.active is not None and data.active != row.active:
            if not data.active and row.role == Role.ADMIN:
                self._keep_an_admin(row, admins)
            row.active, changed = data.active, True
        if changed:
            self._end_sessions(row)
            await self.session.commit()
            log.info(
                "user %s changed by %s: role=%s active=%s", row.username, actor.username, row.role, row.active
            )
        return to_public(row)

    async def reset_password(self, actor: Principal, user_id: str, data: PasswordReset) -> UserPublic:
        row = await self._row(user_id, for_update=True)
        row.password_hash = await off_the_loop(
            self.settings, security.hash_password, data.password.get_secret_value()
        )
        self._end_sessions(row)
        await self.session.commit()
        log.info("password of %s reset by %s", row.username, actor.username)
        return to_public(row)

    async def ensure_admin(self, username: str, password: str) -> bool:
        """Create the first admin from the environment unless that user exists. True if created."""
        username = username.lower()
        exists = (await self.session.exec(select(UserRow.id).where(UserRow.username == username))).first()
        if exists is not None:
            return False
        await self.create(
            UserCreate.model_validate({"username": username, "password": password, "role": "admin"})
        )
        return True

    def _end_sessions(self, row: UserRow) -> None:
        row.token_version += 1
        row.updated_at = utcnow()

    async def _lock_admins(self) -> builtins.list[int]:
        """The active admins' ids, write-locked in id order for the rest of the transaction."""
        await serialize_writes(self.session)
        admins = await self.session.exec(
            select(UserRow.id)
            .where(UserRow.role == Role.ADMIN.value, col(UserRow.active).is_(True))
            .order_by(col(UserRow.id))
            .with_for_update()
        )
        return [admin_id for admin_id in admins if admin_id is not None]

    @staticmethod
    def _keep_an_admin(leaving: UserRow, admins: builtins.list[int]) -> None:
        if not [admin_id for admin_id in admins if admin_id != leaving.id]:
            raise Conflict("This is the last active admin; make another user admin first.")

    async def _row(self, user_id: str, *, for_update: bool = False) -> UserRow:
        if for_update:
            await serialize_writes(self.session)
        key = parse_id(user_id)
        row = await self.session.get(UserRow, key, with_for_update=for_update) if key is not None else None
        if row is None:
            raise UserNotFound(user_id)
        return row
