"""Workflow definitions and their versions."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import ApiVersion, DefinitionServiceDep, Operator, PaginationDep, Viewer
from api.errors import Conflict, DefinitionNotFound, Forbidden, InvalidInput
from api.models.base import Page
from api.models.definitions import DefinitionIn, DefinitionPublic, DefinitionVersionSummary
from api.problems import problem_responses

router = APIRouter(prefix="/workflows", tags=["workflow definitions"], responses=problem_responses(Forbidden))


@router.get("", responses=problem_responses(InvalidInput))
async def list_definitions(
    user: Viewer, definitions: DefinitionServiceDep, page: PaginationDep, version: ApiVersion
) -> list[DefinitionPublic] | Page[DefinitionPublic]:
    """All workflow definitions, current versions (v1: an array; v2: a page envelope)."""
    items, total = await definitions.list(page.limit, page.offset)
    return page.present(version, items, total)


@router.post("", status_code=201, responses=problem_responses(InvalidInput))
async def create_definition(
    data: DefinitionIn, user: Operator, definitions: DefinitionServiceDep
) -> DefinitionPublic:
    """Create a workflow definition at version 1.0.0. Missing ids become task-N / sync-N by position."""
    return await definitions.create(user, data)


@router.get("/{definition_id}", responses=problem_responses(DefinitionNotFound))
async def get_definition(
    definition_id: str, user: Viewer, definitions: DefinitionServiceDep
) -> DefinitionPublic:
    """One workflow definition at its current version."""
    return await definitions.get(definition_id)


@router.put("/{definition_id}", responses=problem_responses(DefinitionNotFound, InvalidInput, Conflict))
async def update_definition(
    definition_id: str, data: DefinitionIn, user: Operator, definitions: DefinitionServiceDep
) -> DefinitionPublic:
    """Replace a definition, storing a new version (1.0.0 -> 1.0.1). Running executions keep theirs."""
    return await definitions.update(user, definition_id, data)


@router.delete("/{definition_id}", status_code=204, responses=problem_responses(DefinitionNotFound))
async def delete_definition(
    definition_id: str, user: Operator, definitions: DefinitionServiceDep
) -> Response:
    """Delete a definition. Executions already started are not affected."""
    await definitions.delete(user, definition_id)
    return Response(status_code=204)


@router.get("/{definition_id}/versions", responses=problem_responses(DefinitionNotFound, InvalidInput))
async def list_versions(
    definition_id: str,
    user: Viewer,
    definitions: DefinitionServiceDep,
    page: PaginationDep,
    version: ApiVersion,
) -> list[DefinitionVersionSummary] | Page[DefinitionVersionSummary]:
    """Every stored version of a definition, oldest first."""
    items, total = await definitions.versions(definition_id, page.limit, page.offset)
    return page.present(version, items, total)


@router.get("/{definition_id}/versions/{version}", responses=problem_responses(DefinitionNotFound))
async def get_version(
    definition_id: str, version: str, user: Viewer, definitions: DefinitionServiceDep
) -> DefinitionPublic:
    """A definition as it was at one version."""
    return await definitions.version(definition_id, version)
