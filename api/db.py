"""Database engine, sessions and schema migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from api.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Any PostgreSQL advisory lock key that is ours alone: serialises migrations of replicas.
_MIGRATION_LOCK_KEY = 0x57F0_0001

SessionFactory = Callable[[], AsyncSession]


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON documents: jsonb on PostgreSQL, JSON text on SQLite.
JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _driver_url(url: str, *, use_async: bool) -> URL:
    """Map a plain database URL onto the drivers we ship (aiosqlite/sqlite3, psycopg 3)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite" if use_async else "sqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API and the worker read while the other writes; busy_timeout makes
    # writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _prepare_sqlite_file(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(settings: Settings) -> AsyncEngine:
    url = _driver_url(settings.sqlalchemy_url, use_async=True)
    kwargs: dict[str, Any] = {"echo": settings.database_echo}
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
    else:
        kwargs |= {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sync_engine(settings: Settings) -> Engine:
    url = _driver_url(settings.sqlalchemy_url, use_async=False)
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
    engine = sa.create_engine(url, echo=settings.database_echo)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_writer_engine(settings: Settings, timeout: float) -> Engine:
    """A synchronous engine for the read model runner, which writes from workflow activation
    threads: every wait (pool, connect, lock, statement) gives up within `timeout` seconds."""
    url = _driver_url(settings.sqlalchemy_url, use_async=False)
    millis = int(timeout * 1000)
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        engine = sa.create_engine(url, echo=settings.database_echo, connect_args={"timeout": timeout})

        def pragmas(dbapi_connection: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, record)
            dbapi_connection.execute(f"PRAGMA busy_timeout={millis}")

        event.listen(engine, "connect", pragmas)
        return engine
    return sa.create_engine(
        url,
        echo=settings.database_echo,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=timeout,
        connect_args={
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c lock_timeout={millis} -c statement_timeout={millis}",
        },
    )


def listen_url(settings: Settings) -> str | None:
    """A libpq URL for LISTEN on PostgreSQL (None on SQLite, which has no notifications)."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@contextlib.asynccontextmanager
async def session_scope(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    async with sessions() as session:
        yield session


async def serialize_writes(session: AsyncSession) -> None:
    """Make this transaction's reads safe to act on: on SQLite, take the database's write lock now.

    SQLite has no row locks and runs reads outside the transaction until its first write; a
    no-op write first makes every later read see the state this transaction will change, so
    check-then-write code cannot interleave. PostgreSQL callers use SELECT ... FOR UPDATE.
    """
    if session.get_bind().dialect.name == "sqlite":
        await session.exec(sa.text("UPDATE alembic_version SET version_num = version_num"))  # type: ignore[call-overload]


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[sa.Connection | None]:
    """Only one process migrates at a time: several API replicas and workers may start together."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    else:
        database = engine.url.database
        if not database or database == ":memory:":
            yield None
            return
        with open(f"{database}.migrate.lock", "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield None
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; run at every start)."""
    from alembic import command
    from alembic.config import Config

    engine = create_sync_engine(settings)
    try:
        with _migration_lock(engine):
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    finally:
        engine.dispose()
