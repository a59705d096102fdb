"""Alembic environment: migrations run in-process at start (api.db.migrate) or via the alembic CLI."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import api.models.definitions
import api.models.executions
import api.models.reconciler
import api.models.users
import api.models.webhooks  # noqa: F401

target_metadata = SQLModel.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        from api.db import create_sync_engine
        from api.settings import get_settings

        engine = create_sync_engine(get_settings())
        with engine.begin() as conn:
            _migrate(conn)
        engine.dispose()
    else:
        _migrate(connection)


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
