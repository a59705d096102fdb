"""User management (admins only) over the real app and database: create, list, get, change role or
active flag, disable/enable, reset a password; and that each of those ends the user's sessions."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import ADMIN_PASSWORD, login, problem

USERS = "/api/users"
ME = "/api/auth/me"
LOGIN = "/api/auth/login"
USER_FIELDS = {"id", "username", "role", "active", "createdAt", "updatedAt"}
USER_NOT_FOUND = "https://workflow-orchestration.dev/problems/user-not-found"
CONFLICT = "https://workflow-orchestration.dev/problems/conflict"
INVALID_INPUT = "https://workflow-orchestration.dev/problems/invalid-input"
INVALID_CREDENTIALS = "https://workflow-orchestration.dev/problems/invalid-credentials"
FORBIDDEN = "https://workflow-orchestration.dev/problems/forbidden"


async def add_user(
    client: httpx.AsyncClient, admin: dict[str, str], username: str, role: str = "viewer"
) -> tuple[dict[str, Any], str]:
    """Create a user; return its public record and its password."""
    password = f"{username}-password-123"
    response = await client.post(
        USERS, json={"username": username, "password": password, "role": role}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json(), password


async def attempt(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password})


async def assert_token_revoked(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get(ME, headers=headers)
    body = problem(response, 401)
    assert body["detail"] == "The bearer token is no longer valid; log in again."
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def assert_token_works(client: httpx.AsyncClient, headers: dict[str, str], username: str) -> None:
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == username


def roles_in(headers: dict[str, str]) -> list[str]:
    token = headers["Authorization"].removeprefix("Bearer ")
    return jwt.decode(token, options={"verify_signature": False})["roles"]


def assert_last_admin_conflict(response: httpx.Response) -> None:
    body = problem(response, 409)
    assert body["type"] == CONFLICT
    assert "last active admin" in body["detail"]


def assert_user_not_found(response: httpx.Response, user_id: str) -> None:
    body = problem(response, 404)
    assert body["type"] == USER_NOT_FOUND
    assert user_id in body["detail"]


NON_NUMERIC_IDS = ["abc", "1.0", "-1", "0x1", "1e3", "\u0661", "9" * 19, "1 ", "null"]


class TestCreateUser:
    async def test_returns_201_without_the_password(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        password = "a-long-enough-password"
        response = await client.post(
            USERS, json={"username": "nadia", "password": password, "role": "operator"}, headers=admin
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == USER_FIELDS
        assert body["username"] == "nadia"
        assert body["role"] == "operator"
        assert body["active"] is True
        assert body["id"].isdecimal()
        assert body["createdAt"].endswith("Z") and body["updatedAt"].endswith("Z")
        assert password not in response.text
        assert "$argon2" not in response.text
        assert "password" not in response.text.lower()

    async def test_new_user_can_log_in_with_its_role(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia", "operator")
        headers = await login(client, "nadia", password)
        assert roles_in(headers) == ["operator"]
        me = (await client.get(ME, headers=headers)).json()
        assert me == created

    async def test_role_defaults_to_viewer(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        response = await client.post(
            USERS, json={"username": "quiet", "password": "quiet-password-1"}, headers=admin
        )
        assert response.status_code == 201
        assert response.json()["role"] == "viewer"

    async def test_username_is_stored_in_lower_case(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.post(
            USERS, json={"username": "Mixed.Case", "password": "mixed-password-1"}, headers=admin
        )
        assert response.status_code == 201
        assert response.json()["username"] == "mixed.case"

    async def test_taken_username_is_409(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        _, password = await add_user(client, admin, "nadia")
        for spelling in ("nadia", "NADIA"):
            response = await client.post(
                USERS,
                json={"username": spelling, "password": "another-password-1", "role": "admin"},
                headers=admin,
            )
            body = problem(response, 409)
            assert body["type"] == CONFLICT
            assert "nadia" in body["detail"].lower()
        # The existing account is untouched.
        assert (await attempt(client, "nadia", password)).status_code == 200
        assert (await attempt(client, "nadia", "another-password-1")).status_code == 401
        users = (await client.get(USERS, headers=admin)).json()
        assert [(u["username"], u["role"]) for u in users] == [("admin", "admin"), ("nadia", "viewer")]

    async def test_bootstrap_admin_name_is_taken(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.post(
            USERS, json={"username": "Admin", "password": "takeover-password-1"}, headers=admin
        )
        assert problem(response, 409)["type"] == CONFLICT
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200

    async def test_too_short_password_is_422(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        response = await client.post(
            USERS, json={"username": "shorty", "password": "elevenchars"}, headers=admin
        )
        body = problem(response, 422)
        assert body["type"] == INVALID_INPUT
        assert [e["pointer"] for e in body["errors"]] == ["#/password"]
        assert "12" in body["errors"][0]["detail"]
        assert "elevenchars" not in response.text
        assert [u["username"] for u in (await client.get(USERS, headers=admin)).json()] == ["admin"]

    async def test_twelve_character_password_is_enough(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.post(
            USERS, json={"username": "exact", "password": "twelve-chars"}, headers=admin
        )
        assert response.status_code == 201, response.text
        assert (await attempt(client, "exact", "twelve-chars")).status_code == 200

    async def test_invalid_role_is_422(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        response = await client.post(
            USERS,
            json={"username": "boss", "password": "boss-password-1", "role": "superuser"},
            headers=admin,
        )
        body = problem(response, 422)
        assert [e["pointer"] for e in body["errors"]] == ["#/role"]
        assert all(role in body["errors"][0]["detail"] for role in ("viewer", "operator", "admin"))

    @pytest.mark.parametrize(
        "username", ["", "has space", "semi;colon", "-leading-dash", "x" * 65, "ünïcode"], ids=repr
    )
    async def test_invalid_username_is_422(
        self, client: httpx.AsyncClient, admin: dict[str, str], username: str
    ) -> None:
        response = await client.post(
            USERS, json={"username": username, "password": "fine-password-1"}, headers=admin
        )
        body = problem(response, 422)
        assert [e["pointer"] for e in body["errors"]] == ["#/username"]

    async def test_every_problem_is_listed(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        response = await client.post(
            USERS,
            json={"username": "bad name", "password": "short", "role": "root", "extra": 1},
            headers=admin,
        )
        body = problem(response, 422)
        assert body["detail"] == "The request has 4 problems."
        assert {e["pointer"] for e in body["errors"]} == {"#/username", "#/password", "#/role", "#/extra"}

    async def test_missing_fields_are_422(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        body = problem(await client.post(USERS, json={"role": "viewer"}, headers=admin), 422)
        assert sorted(body["errors"], key=lambda e: e["pointer"]) == [
            {"pointer": "#/password", "detail": "Field required"},
            {"pointer": "#/username", "detail": "Field required"},
        ]

    async def test_non_admin_is_403(
        self, client: httpx.AsyncClient, operator: dict[str, str], viewer: dict[str, str]
    ) -> None:
        for headers in (operator, viewer):
            response = await client.post(
                USERS,
                json={"username": "sneaky", "password": "sneaky-password-1", "role": "admin"},
                headers=headers,
            )
            assert problem(response, 403)["type"] == FORBIDDEN
        assert (await attempt(client, "sneaky", "sneaky-password-1")).status_code == 401


class TestListUsers:
    async def test_v1_is_an_array_in_creation_order(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        nadia, _ = await add_user(client, admin, "nadia", "operator")
        omar, _ = await add_user(client, admin, "omar")
        response = await client.get(USERS, headers=admin)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v1+json"
        users = response.json()
        assert isinstance(users, list)
        assert [u["username"] for u in users] == ["admin", "nadia", "omar"]
        assert users[1:] == [nadia, omar]
        assert all(set(u) == USER_FIELDS for u in users)
        assert "$argon2" not in response.text

    async def test_v2_is_a_page_envelope(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        await add_user(client, admin, "nadia")
        for response in (
            await client.get("/api/v2/users", headers=admin),
            await client.get(
                USERS, headers={**admin, "Accept": "application/vnd.workflow-orchestration.v2+json"}
            ),
        ):
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v2+json"
            body = response.json()
            assert set(body) == {"items", "total", "limit", "offset"}
            assert body["total"] == 2
            assert body["limit"] == 10
            assert body["offset"] == 0
            assert [u["username"] for u in body["items"]] == ["admin", "nadia"]

    async def test_pagination(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        for name in ("u1", "u2", "u3", "u4"):
            await add_user(client, admin, name)
        page = (await client.get("/api/v2/users?limit=2&offset=1", headers=admin)).json()
        assert [u["username"] for u in page["items"]] == ["u1", "u2"]
        assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
        last = (await client.get("/api/v2/users?limit=2&offset=4", headers=admin)).json()
        assert [u["username"] for u in last["items"]] == ["u4"]
        beyond = (await client.get("/api/v2/users?offset=50", headers=admin)).json()
        assert beyond["items"] == [] and beyond["total"] == 5
        v1 = (await client.get("/api/users?limit=3&offset=2", headers=admin)).json()
        assert [u["username"] for u in v1] == ["u2", "u3", "u4"]

    @pytest.mark.parametrize(
        ("query", "parameter"),
        [("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("offset=-1", "offset")],
    )
    async def test_bad_pagination_is_422(
        self, client: httpx.AsyncClient, admin: dict[str, str], query: str, parameter: str
    ) -> None:
        body = problem(await client.get(f"/api/v2/users?{query}", headers=admin), 422)
        assert body["type"] == INVALID_INPUT
        assert [(e["parameter"], e["in"]) for e in body["errors"]] == [(parameter, "query")]

    async def test_non_admin_is_403(
        self, client: httpx.AsyncClient, operator: dict[str, str], viewer: dict[str, str]
    ) -> None:
        for headers in (operator, viewer):
            body = problem(await client.get(USERS, headers=headers), 403)
            assert body["type"] == FORBIDDEN
            assert "username" not in body


class TestGetUser:
    async def test_returns_the_user(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created, _ = await add_user(client, admin, "nadia", "operator")
        response = await client.get(f"{USERS}/{created['id']}", headers=admin)
        assert response.status_code == 200
        assert response.json() == created
        v2 = await client.get(f"/api/v2/users/{created['id']}", headers=admin)
        assert v2.json() == created

    async def test_unknown_id_is_404(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        for user_id in ("999", "0"):
            assert_user_not_found(await client.get(f"{USERS}/{user_id}", headers=admin), user_id)

    @pytest.mark.parametrize("user_id", NON_NUMERIC_IDS, ids=repr)
    async def test_non_numeric_id_is_404(
        self, client: httpx.AsyncClient, admin: dict[str, str], user_id: str
    ) -> None:
        response = await client.get(f"{USERS}/{user_id}", headers=admin)
        body = problem(response, 404)
        assert body["type"] == USER_NOT_FOUND

    async def test_non_admin_is_403(self, client: httpx.AsyncClient, viewer: dict[str, str]) -> None:
        me = (await client.get(ME, headers=viewer)).json()
        # Not even their own record: /api/auth/me is the way.
        assert problem(await client.get(f"{USERS}/{me['id']}", headers=viewer), 403)["type"] == FORBIDDEN


class TestUpdateUser:
    async def test_role_change_ends_sessions(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created, password = await add_user(client, admin, "nadia", "viewer")
        before = await login(client, "nadia", password)
        response = await client.patch(f"{USERS}/{created['id']}", json={"role": "operator"}, headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["role"] == "operator"
        assert body["username"] == "nadia" and body["active"] is True
        assert body["createdAt"] == created["createdAt"]
        assert body["updatedAt"] > created["updatedAt"]
        assert (await client.get(f"{USERS}/{created['id']}", headers=admin)).json() == body

        await assert_token_revoked(client, before)
        after = await login(client, "nadia", password)
        assert roles_in(after) == ["operator"]
        assert (await client.get(ME, headers=after)).json()["role"] == "operator"
        definition = {"name": "Allowed now", "tasks": [{"name": "Task 1"}]}
        assert (await client.post("/api/workflows", json=definition, headers=after)).status_code == 201

    async def test_demotion_takes_effect_at_once(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia", "admin")
        as_admin = await login(client, "nadia", password)
        assert (await client.get(USERS, headers=as_admin)).status_code == 200
        await client.patch(f"{USERS}/{created['id']}", json={"role": "viewer"}, headers=admin)
        await assert_token_revoked(client, as_admin)
        as_viewer = await login(client, "nadia", password)
        assert problem(await client.get(USERS, headers=as_viewer), 403)["type"] == FORBIDDEN

    async def test_deactivation_ends_sessions_and_logins(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia", "operator")
        before = await login(client, "nadia", password)
        response = await client.patch(f"{USERS}/{created['id']}", json={"active": False}, headers=admin)
        assert response.status_code == 200
        assert response.json()["active"] is False
        assert response.json()["role"] == "operator"
        await assert_token_revoked(client, before)
        assert problem(await attempt(client, "nadia", password), 401)["type"] == INVALID_CREDENTIALS

        reactivated = await client.patch(f"{USERS}/{created['id']}", json={"active": True}, headers=admin)
        assert reactivated.json()["active"] is True
        await assert_token_works(client, await login(client, "nadia", password), "nadia")

    async def test_no_change_keeps_sessions(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created, password = await add_user(client, admin, "nadia", "operator")
        headers = await login(client, "nadia", password)
        for patch in ({}, {"role": "operator"}, {"active": True}, {"role": None, "active": None}):
            response = await client.patch(f"{USERS}/{created['id']}", json=patch, headers=admin)
            assert response.status_code == 200, response.text
            assert response.json() == created
        await assert_token_works(client, headers, "nadia")

    async def test_read_only_fields_are_ignored(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia")
        response = await client.patch(
            f"{USERS}/{created['id']}",
            json={
                "id": "77",
                "username": "renamed",
                "createdAt": "2000-01-01T00:00:00.000Z",
                "role": "operator",
            },
            headers=admin,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["id"], body["username"], body["createdAt"]) == (
            created["id"],
            "nadia",
            created["createdAt"],
        )
        assert body["role"] == "operator"
        assert (await attempt(client, "renamed", password)).status_code == 401

    @pytest.mark.parametrize(
        ("patch", "pointer"),
        [
            ({"role": "root"}, "#/role"),
            ({"active": "maybe"}, "#/active"),
            ({"password": "a-new-password-1"}, "#/password"),
        ],
        ids=["bad-role", "bad-active", "password-not-here"],
    )
    async def test_invalid_patch_is_422(
        self, client: httpx.AsyncClient, admin: dict[str, str], patch: dict[str, Any], pointer: str
    ) -> None:
        created, password = await add_user(client, admin, "nadia")
        body = problem(await client.patch(f"{USERS}/{created['id']}", json=patch, headers=admin), 422)
        assert [e["pointer"] for e in body["errors"]] == [pointer]
        assert (await client.get(f"{USERS}/{created['id']}", headers=admin)).json() == created
        assert (await attempt(client, "nadia", password)).status_code == 200

    async def test_unknown_user_is_404(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        assert_user_not_found(
            await client.patch(f"{USERS}/999", json={"role": "viewer"}, headers=admin), "999"
        )
        response = await client.patch(f"{USERS}/abc", json={"role": "viewer"}, headers=admin)
        assert problem(response, 404)["type"] == USER_NOT_FOUND

    async def test_last_admin_cannot_be_demoted(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        me = (await client.get(ME, headers=admin)).json()
        for role in ("operator", "viewer"):
            assert_last_admin_conflict(
                await client.patch(f"{USERS}/{me['id']}", json={"role": role}, headers=admin)
            )
        assert (await client.get(ME, headers=admin)).json() == me
        await assert_token_works(client, admin, "admin")

    async def test_last_admin_cannot_be_deactivated(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        me = (await client.get(ME, headers=admin)).json()
        assert_last_admin_conflict(
            await client.patch(f"{USERS}/{me['id']}", json={"active": False}, headers=admin)
        )
        assert (await client.get(ME, headers=admin)).json()["active"] is True
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200

    async def test_a_disabled_admin_does_not_count(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        other, _ = await add_user(client, admin, "backup", "admin")
        assert (await client.post(f"{USERS}/{other['id']}/disable", headers=admin)).status_code == 200
        me = (await client.get(ME, headers=admin)).json()
        assert_last_admin_conflict(
            await client.patch(f"{USERS}/{me['id']}", json={"role": "viewer"}, headers=admin)
        )

    async def test_an_admin_can_step_down_when_another_remains(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        other, password = await add_user(client, admin, "backup", "admin")
        me = (await client.get(ME, headers=admin)).json()
        response = await client.patch(f"{USERS}/{me['id']}", json={"role": "operator"}, headers=admin)
        assert response.status_code == 200
        assert response.json()["role"] == "operator"
        await assert_token_revoked(client, admin)

        backup = await login(client, "backup", password)
        # Now "backup" is the last admin.
        assert_last_admin_conflict(
            await client.patch(f"{USERS}/{other['id']}", json={"role": "viewer"}, headers=backup)
        )
        assert_last_admin_conflict(await client.post(f"{USERS}/{other['id']}/disable", headers=backup))
        await assert_token_works(client, backup, "backup")

    async def test_non_admin_is_403(self, client: httpx.AsyncClient, operator: dict[str, str]) -> None:
        response = await client.patch(f"{USERS}/1", json={"active": False}, headers=operator)
        assert problem(response, 403)["type"] == FORBIDDEN
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200


class TestDisableUser:
    async def test_disabling_ends_sessions_at_once(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia", "operator")
        first = await login(client, "nadia", password)
        second = await login(client, "nadia", password)
        response = await client.post(f"{USERS}/{created['id']}/disable", headers=admin)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == USER_FIELDS
        assert body["active"] is False and body["role"] == "operator"
        for headers in (first, second):
            await assert_token_revoked(client, headers)
        # Logging in is refused with the answer a wrong password gets.
        refused = await attempt(client, "nadia", password)
        wrong = await attempt(client, "nadia", "wrong-password")
        assert problem(refused, 401)["type"] == INVALID_CREDENTIALS
        assert refused.json() == wrong.json()
        assert (await client.get(f"{USERS}/{created['id']}", headers=admin)).json()["active"] is False

    async def test_is_idempotent(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created, _ = await add_user(client, admin, "nadia")
        first = await client.post(f"{USERS}/{created['id']}/disable", headers=admin)
        second = await client.post(f"{USERS}/{created['id']}/disable", headers=admin)
        assert second.status_code == 200
        assert second.json() == first.json()

    async def test_last_admin_cannot_be_disabled(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        me = (await client.get(ME, headers=admin)).json()
        assert_last_admin_conflict(await client.post(f"{USERS}/{me['id']}/disable", headers=admin))
        await assert_token_works(client, admin, "admin")
        assert (await client.get(ME, headers=admin)).json()["active"] is True

    async def test_an_admin_can_disable_another_admin(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        other, password = await add_user(client, admin, "backup", "admin")
        backup = await login(client, "backup", password)
        assert (await client.post(f"{USERS}/{other['id']}/disable", headers=admin)).json()["active"] is False
        await assert_token_revoked(client, backup)

    async def test_unknown_user_is_404(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        assert_user_not_found(await client.post(f"{USERS}/4242/disable", headers=admin), "4242")
        assert problem(await client.post(f"{USERS}/x/disable", headers=admin), 404)["type"] == USER_NOT_FOUND

    async def test_non_admin_is_403(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        victim, victim_password = await add_user(client, admin, "nadia", "viewer")
        _, operator_password = await add_user(client, admin, "omar", "operator")
        operator = await login(client, "omar", operator_password)
        assert problem(await client.post(f"{USERS}/{victim['id']}/disable", headers=operator), 403)
        assert (await attempt(client, "nadia", victim_password)).status_code == 200


class TestEnableUser:
    async def test_enabling_allows_fresh_logins_only(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia", "operator")
        old = await login(client, "nadia", password)
        await client.post(f"{USERS}/{created['id']}/disable", headers=admin)
        response = await client.post(f"{USERS}/{created['id']}/enable", headers=admin)
        assert response.status_code == 200
        assert response.json()["active"] is True and response.json()["role"] == "operator"
        # A token from before the disable stays dead.
        await assert_token_revoked(client, old)
        fresh = await login(client, "nadia", password)
        await assert_token_works(client, fresh, "nadia")

    async def test_enabling_an_active_user_changes_nothing(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia")
        headers = await login(client, "nadia", password)
        response = await client.post(f"{USERS}/{created['id']}/enable", headers=admin)
        assert response.json() == created
        await assert_token_works(client, headers, "nadia")

    async def test_unknown_user_is_404(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        assert_user_not_found(await client.post(f"{USERS}/4242/enable", headers=admin), "4242")

    async def test_non_admin_is_403(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created, password = await add_user(client, admin, "nadia")
        await client.post(f"{USERS}/{created['id']}/disable", headers=admin)
        _, viewer_password = await add_user(client, admin, "vic")
        viewer = await login(client, "vic", viewer_password)
        assert problem(await client.post(f"{USERS}/{created['id']}/enable", headers=viewer), 403)
        assert (await attempt(client, "nadia", password)).status_code == 401


class TestResetPassword:
    async def test_reset_ends_sessions_and_changes_the_password(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, old_password = await add_user(client, admin, "nadia", "operator")
        _, bystander_password = await add_user(client, admin, "omar")
        before = await login(client, "nadia", old_password)
        other = await login(client, "omar", bystander_password)
        new_password = "a-brand-new-password"
        response = await client.post(
            f"{USERS}/{created['id']}/password", json={"password": new_password}, headers=admin
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == USER_FIELDS
        assert body["username"] == "nadia" and body["role"] == "operator" and body["active"] is True
        assert new_password not in response.text

        await assert_token_revoked(client, before)
        assert problem(await attempt(client, "nadia", old_password), 401)["type"] == INVALID_CREDENTIALS
        await assert_token_works(client, await login(client, "nadia", new_password), "nadia")
        # Other users' sessions are untouched.
        await assert_token_works(client, other, "omar")
        await assert_token_works(client, admin, "admin")

    async def test_admin_resetting_own_password_must_log_in_again(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        me = (await client.get(ME, headers=admin)).json()
        response = await client.post(
            f"{USERS}/{me['id']}/password", json={"password": "new-admin-password-1"}, headers=admin
        )
        assert response.status_code == 200
        await assert_token_revoked(client, admin)
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 401
        await assert_token_works(client, await login(client, "admin", "new-admin-password-1"), "admin")

    async def test_too_short_password_is_422_and_changes_nothing(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, password = await add_user(client, admin, "nadia")
        headers = await login(client, "nadia", password)
        response = await client.post(
            f"{USERS}/{created['id']}/password", json={"password": "short"}, headers=admin
        )
        body = problem(response, 422)
        assert [e["pointer"] for e in body["errors"]] == ["#/password"]
        assert "short" not in json_values(body)
        await assert_token_works(client, headers, "nadia")
        assert (await attempt(client, "nadia", password)).status_code == 200

    async def test_missing_or_unknown_fields_are_422(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created, _ = await add_user(client, admin, "nadia")
        missing = problem(await client.post(f"{USERS}/{created['id']}/password", json={}, headers=admin), 422)
        assert missing["errors"] == [{"pointer": "#/password", "detail": "Field required"}]
        extra = problem(
            await client.post(
                f"{USERS}/{created['id']}/password",
                json={"password": "a-fine-password-1", "oldPassword": "x"},
                headers=admin,
            ),
            422,
        )
        assert extra["errors"] == [{"pointer": "#/oldPassword", "detail": "Unknown field"}]

    async def test_unknown_user_is_404(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        response = await client.post(
            f"{USERS}/4242/password", json={"password": "a-fine-password-1"}, headers=admin
        )
        assert_user_not_found(response, "4242")
        response = await client.post(
            f"{USERS}/me/password", json={"password": "a-fine-password-1"}, headers=admin
        )
        assert problem(response, 404)["type"] == USER_NOT_FOUND

    async def test_non_admin_is_403(
        self, client: httpx.AsyncClient, admin: dict[str, str], operator: dict[str, str]
    ) -> None:
        response = await client.post(
            f"{USERS}/1/password", json={"password": "hijacked-password-1"}, headers=operator
        )
        assert problem(response, 403)["type"] == FORBIDDEN
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200
        assert (await attempt(client, "admin", "hijacked-password-1")).status_code == 401


def json_values(body: Any) -> list[str]:
    """Every string value in a JSON document (to check that input is not echoed)."""
    if isinstance(body, dict):
        return [v for item in body.values() for v in json_values(item)]
    if isinstance(body, list):
        return [v for item in body for v in json_values(item)]
    return [body] if isinstance(body, str) else []


class TestLastAdminUnderConcurrency:
    async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
        self, client: httpx.AsyncClient, admin
    ):
        import asyncio

        created = await client.post(
            "/api/users",
            json={"username": "second", "password": "second-password-1", "role": "admin"},
            headers=admin,
        )
        second = await login(client, "second", "second-password-1")
        me = (await client.get("/api/auth/me", headers=admin)).json()
        results = await asyncio.gather(
            client.patch(f"/api/users/{created.json()['id']}", json={"role": "viewer"}, headers=admin),
            client.patch(f"/api/users/{me['id']}", json={"role": "viewer"}, headers=second),
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses in ([200, 409], [200, 401]), [r.text for r in results]
        users = (
            await client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        ).json()
        fresh = {"Authorization": f"Bearer {users['accessToken']}"}
        second_fresh = await login(client, "second", "second-password-1")
        roles = []
        for headers in (fresh, second_fresh):
            roles.append((await client.get("/api/auth/me", headers=headers)).json()["role"])
        assert roles.count("admin") == 1, roles
