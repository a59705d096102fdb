"""User management, for admins."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Admin, ApiVersion, PaginationDep, UserServiceDep
from api.errors import Conflict, Forbidden, InvalidInput, UserNotFound
from api.models.base import Page
from api.models.users import PasswordReset, UserCreate, UserPublic, UserUpdate
from api.problems import problem_responses

router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(Forbidden))


@router.get("")
async def list_users(
    admin: Admin, users: UserServiceDep, page: PaginationDep, version: ApiVersion
) -> list[UserPublic] | Page[UserPublic]:
    """All users (v1: an array; v2: a page envelope)."""
    items, total = await users.list(page.limit, page.offset)
    return page.present(version, items, total)


@router.post("", status_code=201, responses=problem_responses(Conflict, InvalidInput))
async def create_user(data: UserCreate, admin: Admin, users: UserServiceDep) -> UserPublic:
    """Create a user with a role (viewer, operator or admin)."""
    return await users.create(data)


@router.get("/{user_id}", responses=problem_responses(UserNotFound))
async def get_user(user_id: str, admin: Admin, users: UserServiceDep) -> UserPublic:
    """One user."""
    return await users.get(user_id)


@router.patch("/{user_id}", responses=problem_responses(UserNotFound, Conflict, InvalidInput))
async def update_user(user_id: str, data: UserUpdate, admin: Admin, users: UserServiceDep) -> UserPublic:
    """Change a user's role or active flag; the user's existing tokens stop working."""
    return await users.update(admin, user_id, data)


@router.post("/{user_id}/disable", responses=problem_responses(UserNotFound, Conflict))
async def disable_user(user_id: str, admin: Admin, users: UserServiceDep) -> UserPublic:
    """Disable a user; their tokens stop working at once."""
    return await users.update(admin, user_id, UserUpdate(active=False))


@router.post("/{user_id}/enable", responses=problem_responses(UserNotFound))
async def enable_user(user_id: str, admin: Admin, users: UserServiceDep) -> UserPublic:
    """Enable a disabled user."""
    return await users.update(admin, user_id, UserUpdate(active=True))


@router.post("/{user_id}/password", responses=problem_responses(UserNotFound, InvalidInput))
async def reset_password(
    user_id: str, data: PasswordReset, admin: Admin, users: UserServiceDep
) -> UserPublic:
    """Set a new password; the user's existing tokens stop working."""
    return await users.reset_password(admin, user_id, data)
