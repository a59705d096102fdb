"""Workflow definitions: validation, versioned storage, reads."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import utcnow
from api.errors import Conflict, DefinitionNotFound, InvalidInput
from api.models.definitions import (
    MAX_LISTED_PROBLEMS,
    DefinitionIn,
    DefinitionPublic,
    DefinitionRow,
    DefinitionVersionRow,
    DefinitionVersionSummary,
    SynchronizationPointPublic,
    TaskPublic,
)
from api.services.users import Principal, parse_id
from api.settings import Settings

FIRST_VERSION = "1.0.0"


def next_version(version: str) -> str:
    """Patch bump: 1.0.0 -> 1.0.1 -> ... -> 1.0.10."""
    major, minor, patch = (int(p) for p in version.split("."))
    return f"{major}.{minor}.{patch + 1}"


def normalize(data: DefinitionIn) -> dict[str, Any]:
    """The stored document: ids filled in by position, aliases folded, every field present."""
    task_nodes, point_nodes = data.nodes()
    tasks = []
    for task, node in zip(data.tasks, task_nodes, strict=True):
        doc = task.model_dump(mode="json", by_alias=True)
        doc["id"] = node.id
        if task.retry_policy is not None:
            doc["retryPolicy"] = task.retry_policy.model_dump(
                mode="json", by_alias=True, exclude={"max_retries", "backoff_multiplier", "max_backoff"}
            )
        tasks.append(doc)
    sync_points = []
    for point, node in zip(data.synchronization_points, point_nodes, strict=True):
        doc = point.model_dump(mode="json", by_alias=True)
        doc["id"] = node.id
        sync_points.append(doc)
    return {"tasks": tasks, "synchronizationPoints": sync_points}


def check_size(data: DefinitionIn, settings: Settings) -> None:
    """The limits that depend on configuration, against this service's settings (DefinitionIn
    checks them first with the process's configured limits; this keeps them true whatever it had)."""
    problems: list[dict[str, str]] = []
    if len(data.tasks) > settings.max_tasks:
        problems.append(
            {
                "pointer": "#/tasks",
                "detail": f"{len(data.tasks)} tasks exceed the maximum of {settings.max_tasks}",
            }
        )
    reserved = system_queues(settings)
    for index, task in enumerate(data.tasks):
        queue = task.resource_requirements.queue if task.resource_requirements else None
        if queue in reserved:
            problems.append(
                {
                    "pointer": f"#/tasks/{index}/resourceRequirements/queue",
                    "detail": f"{queue!r} is a system queue; tasks cannot run there",
                }
            )
    if problems:
        count = len(problems)
        raise InvalidInput(
            f"The workflow definition has {count} problem{'s' if count != 1 else ''}.",
            problems[:MAX_LISTED_PROBLEMS],
        )


def system_queues(settings: Settings) -> frozenset[str]:
    """Queues no task may name: the interpreter's and the webhook deliveries'."""
    return frozenset({settings.system_task_queue, settings.webhook_task_queue})


def _public(
    definition_id: int,
    name: str,
    description: str | None,
    version: str,
    document: dict[str, Any],
    created,
    updated,
) -> DefinitionPublic:
    return DefinitionPublic(
        id=str(definition_id),
        name=name,
        description=description,
        version=version,
        created_at=created,
        updated_at=updated,
        tasks=[TaskPublic.model_validate(t) for t in document["tasks"]],
        synchronization_points=[
            SynchronizationPointPublic.model_validate(p) for p in document["synchronizationPoints"]
        ],
    )


def to_public(row: DefinitionRow) -> DefinitionPublic:
    assert row.id is not None
    return _public(
        row.id, row.name, row.description, row.version, row.document, row.created_at, row.updated_at
    )


class DefinitionService:
    def __init__(self, session: AsyncSession, settings: Settings):
        self.session = session
        self.settings = settings

    async def list(self, limit: int, offset: int) -> tuple[list[DefinitionPublic], int]:
        live = col(DefinitionRow.deleted_at).is_(None)
        total = (await self.session.exec(select(func.count()).select_from(DefinitionRow).where(live))).one()
        rows = await self.session.exec(
            select(DefinitionRow).where(live).order_by(col(DefinitionRow.id)).limit(limit).offset(offset)
        )
        return [to_public(r) for r in rows], total

    async def get(self, definition_id: str) -> DefinitionPublic:
        return to_public(await self._row(definition_id))

    async def create(self, user: Principal, data: DefinitionIn) -> DefinitionPublic:
        check_size(data, self.settings)
        document = normalize(data)
        now = utcnow()
        row = DefinitionRow(
            name=data.name,
            description=data.description,
            version=FIRST_VERSION,
            revision=1,
            document=document,
            created_by=user.id,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        assert row.id is not None
        self.session.add(self._version_row(row, user))
        await self.session.commit()
        return to_public(row)

    async def update(self, user: Principal, definition_id: str, data: DefinitionIn) -> DefinitionPublic:
        """Store a new version (patch bump); executions already running keep theirs."""
        check_size(data, self.settings)
        document = normalize(data)
        row = await self._row(definition_id, for_update=True)
        row.name, row.description, row.document = data.name, data.description, document
        row.version, row.revision = next_version(row.version), row.revision + 1
        row.updated_at = utcnow()
        self.session.add(self._version_row(row, user))
        try:
            await self.session.commit()
        except IntegrityError as exc:
            # Two updates raced from the same version: the first one won.
            await self.session.rollback()
            raise Conflict("The definition was changed concurrently; fetch it again and retry.") from exc
        return to_public(row)

    async def delete(self, user: Principal, definition_id: str) -> None:
        """Soft delete: the definition disappears from the API; its versions stay for past executions."""
        row = await self._row(definition_id, for_update=True)
        row.deleted_at = utcnow()
        await self.session.commit()

    async def versions(
        self, definition_id: str, limit: int, offset: int
    ) -> tuple[builtins.list[DefinitionVersionSummary], int]:
        row = await self._row(definition_id)
        of_definition = DefinitionVersionRow.definition_id == row.id
        total = (
            await self.session.exec(
                select(func.count()).select_from(DefinitionVersionRow).where(of_definition)
            )
        ).one()
        rows = await self.session.exec(
            select(DefinitionVersionRow)
            .where(of_definition)
            .order_by(col(DefinitionVersionRow.revision))
            .limit(limit)
            .offset(offset)
        )
        return [
            DefinitionVersionSummary(
                version=v.version,
                name=v.name,
                description=v.description,
                created_at=v.created_at,
                task_count=len(v.document["tasks"]),
            )
            for v in rows
        ], total

    async def version(self, definition_id: str, version: str) -> DefinitionPublic:
        """A definition as it was at one version (updatedAt: when that version was stored)."""
        row = await self._row(definition_id)
        stored = (
            await self.session.exec(
                select(DefinitionVersionRow).where(
                    DefinitionVersionRow.definition_id == row.id, DefinitionVersionRow.version == version
                )
            )
        ).first()
        if stored is None:
            raise DefinitionNotFound(definition_id, version)
        assert row.id is not None
        return _public(
            row.id,
            stored.name,
            stored.description,
            stored.version,
            stored.document,
            row.created_at,
            stored.created_at,
        )

    def _version_row(self, row: DefinitionRow, user: Principal) -> DefinitionVersionRow:
        assert row.id is not None
        return DefinitionVersionRow(
            definition_id=row.id,
            revision=row.revision,
            version=row.version,
            name=row.name,
            description=row.description,
            document=row.document,
            created_by=user.id,
            created_at=row.updated_at,
        )

    async def get_many(self, definition_ids: builtins.list[str]) -> dict[str, DefinitionPublic]:
        """Several definitions in one query (deleted and unknown ones are left out)."""
        keys = [k for k in (parse_id(i) for i in definition_ids) if k is not None]
        if not keys:
            return {}
        rows = await self.session.exec(
            select(DefinitionRow).where(
                col(DefinitionRow.id).in_(keys), col(DefinitionRow.deleted_at).is_(None)
            )
        )
        return {str(r.id): to_public(r) for r in rows}

    async def current(self, definition_id: str) -> DefinitionRow:
        """The stored definition at its current version (404 if unknown or deleted)."""
        return await self._row(definition_id)

    async def _row(self, definition_id: str, *, for_update: bool = False) -> DefinitionRow:
        key = parse_id(definition_id)
        row = (
            await self.session.get(DefinitionRow, key, with_for_update=for_update)
            if key is not None
            else None
        )
        if row is None or row.deleted_at is not None:
            raise DefinitionNotFound(definition_id)
        return row
