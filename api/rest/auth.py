"""Log in for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import CurrentUser, UserServiceDep
from api.errors import InvalidCredentials, InvalidInput, TooManyRequests
from api.models.users import LoginRequest, TokenPublic, UserPublic
from api.problems import problem_responses

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", responses=problem_responses(InvalidCredentials, InvalidInput, TooManyRequests))
async def login(data: LoginRequest, users: UserServiceDep, request: Request) -> TokenPublic:
    """Exchange a username and password for a short-lived bearer token."""
    address = request.client.host if request.client else None
    return await users.login(data, address)


@router.get("/me")
async def me(user: CurrentUser, users: UserServiceDep) -> UserPublic:
    """The user the bearer token belongs to."""
    return await users.get(str(user.id))
