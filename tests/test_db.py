"""Schema migrations on both databases, and the details the two databases differ on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from api.db import create_engine, create_sync_engine, migrate, session_factory
from api.models.definitions import DefinitionRow


class TestMigrations:
    def test_migrations_build_exactly_the_models_schema(self, settings):
        migrate(settings)
        engine = create_sync_engine(settings)
        try:
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                assert compare_metadata(context, SQLModel.metadata) == []
                assert context.get_current_revision() is not None
        finally:
            engine.dispose()

    def test_migrating_again_changes_nothing(self, settings):
        migrate(settings)
        migrate(settings)
        engine = create_sync_engine(settings)
        try:
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
        finally:
            engine.dispose()
        assert {
            "users",
            "rate_counters",
            "workflow_definitions",
            "workflow_definition_versions",
            "executions",
            "task_executions",
            "execution_events",
            "milestones",
            "blockers",
            "webhooks",
            "webhook_deliveries",
            "alembic_version",
        } <= tables

    def test_replicas_starting_together_migrate_once(self, settings):
        failures: list[BaseException] = []

        def run() -> None:
            try:
                migrate(settings)
            except BaseException as exc:  # collected and asserted below  # noqa: BLE001
                failures.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []


class TestTimestamps:
    async def test_timestamps_come_back_in_utc_on_both_databases(self, settings):
        migrate(settings)
        engine = create_engine(settings)
        sessions = session_factory(engine)
        moment = datetime(2025, 5, 21, 23, 26, 58, 211000, tzinfo=timezone(timedelta(hours=2)))
        try:
            async with sessions() as session:
                row = DefinitionRow(
                    name="t",
                    version="1.0.0",
                    revision=1,
                    document={"tasks": [], "synchronizationPoints": []},
                    created_at=moment,
                    updated_at=moment,
                )
                session.add(row)
                await session.commit()
                row_id = row.id
            async with sessions() as session:
                stored = await session.get(DefinitionRow, row_id)
                assert stored is not None
                assert stored.created_at == moment
                assert stored.created_at.tzinfo == UTC
        finally:
            await engine.dispose()

    async def test_naive_datetimes_are_refused(self, settings):
        migrate(settings)
        engine = create_engine(settings)
        sessions = session_factory(engine)
        try:
            async with sessions() as session:
                session.add(
                    DefinitionRow(
                        name="t", version="1.0.0", revision=1, document={}, created_at=datetime(2025, 1, 1)
                    )
                )
                with pytest.raises(sa.exc.StatementError, match="naive datetime"):
                    await session.commit()
        finally:
            await engine.dispose()
