"""Authentication and authorisation over the real app and database: login, throttling, bearer
tokens (forged ones included) and the role each operation needs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, JWT_SECRET, create_user, login, make_settings, problem
from tests.test_definitions import SPEC_CREATE

LOGIN = "/api/auth/login"
ME = "/api/auth/me"
V1_JSON = "application/vnd.workflow-orchestration.v1+json"
INVALID_CREDENTIALS = "https://workflow-orchestration.dev/problems/invalid-credentials"
UNAUTHENTICATED = "https://workflow-orchestration.dev/problems/unauthenticated"
TOO_MANY_REQUESTS = "https://workflow-orchestration.dev/problems/too-many-requests"
FORBIDDEN = "https://workflow-orchestration.dev/problems/forbidden"
INVALID_INPUT = "https://workflow-orchestration.dev/problems/invalid-input"

#: The spec's sample definition (API reference, "Create a workflow definition").
SAMPLE_DEFINITION = SPEC_CREATE


# --- helpers ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def token_of(headers: dict[str, str]) -> str:
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hmac_signature(signing_input: str, key: bytes, digest: Any = hashlib.sha256) -> str:
    return b64url(hmac.new(key, signing_input.encode(), digest).digest())


def assert_invalid_token(response: httpx.Response) -> dict[str, Any]:
    """401 problem+json with an RFC 6750 challenge saying the token itself is bad."""
    body = problem(response, 401)
    assert body["type"] == UNAUTHENTICATED
    assert body["title"] == "Unauthorized"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert 'error="invalid_token"' in challenge, challenge
    return body


def assert_no_credentials(response: httpx.Response) -> dict[str, Any]:
    """401 problem+json with a bare Bearer challenge (RFC 6750: no error code without credentials)."""
    body = problem(response, 401)
    assert body["type"] == UNAUTHENTICATED
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert "realm=" in challenge
    assert "error=" not in challenge, challenge
    return body


async def add_user(
    client: httpx.AsyncClient, admin: dict[str, str], username: str, role: str, password: str | None = None
) -> tuple[str, str]:
    """Create a user; return its id and password."""
    password = password or f"{username}-password-123"
    response = await client.post(
        "/api/users", json={"username": username, "password": password, "role": role}, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], password


async def attempt(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password})


# --- login -----------------------------------------------------------------------------


class TestLogin:
    async def test_spec_body_returns_a_bearer_token(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await client.post(
            LOGIN,
            content=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == V1_JSON
        body = response.json()
        assert set(body) == {"accessToken", "tokenType", "expiresIn"}
        assert body["tokenType"] == "Bearer"
        assert body["expiresIn"] == settings.jwt_ttl_seconds == 3600
        assert body["accessToken"].count(".") == 2
        assert ADMIN_PASSWORD not in response.text

    async def test_token_is_hs256_with_exp_iat_sub_and_roles(self, client: httpx.AsyncClient) -> None:
        before = int(time.time())
        response = await attempt(client, "admin", ADMIN_PASSWORD)
        after = int(time.time())
        token = response.json()["accessToken"]

        header = jwt.get_unverified_header(token)
        assert header["alg"] == "HS256"
        assert header.get("typ") == "JWT"
        # Signed with the configured secret: verification with it succeeds.
        claims = jwt.decode(
            token,
            JWT_SECRET,
            algorithms=["HS256"],
            options={"require": ["exp", "iat", "sub"], "verify_aud": False},
        )
        assert before - 1 <= claims["iat"] <= after + 1
        assert claims["exp"] - claims["iat"] == response.json()["expiresIn"]
        assert claims["roles"] == ["admin"]
        me = (await client.get(ME, headers=bearer(token))).json()
        assert claims["sub"] == me["id"]
        assert me["username"] == "admin"

    async def test_token_carries_the_users_role(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        operator = await create_user(client, admin, "oscar", "operator")
        viewer = await create_user(client, admin, "vera", "viewer")
        assert unverified_claims(token_of(operator))["roles"] == ["operator"]
        assert unverified_claims(token_of(viewer))["roles"] == ["viewer"]
        assert unverified_claims(token_of(operator))["sub"] != unverified_claims(token_of(viewer))["sub"]

    async def test_each_login_issues_a_distinct_token(self, client: httpx.AsyncClient) -> None:
        first = await login(client, "admin", ADMIN_PASSWORD)
        second = await login(client, "admin", ADMIN_PASSWORD)
        assert token_of(first) != token_of(second)
        for headers in (first, second):
            assert (await client.get(ME, headers=headers)).status_code == 200

    async def test_wrong_password_is_401(self, client: httpx.AsyncClient) -> None:
        response = await attempt(client, "admin", ADMIN_PASSWORD + "!")
        body = problem(response, 401)
        assert body["type"] == INVALID_CREDENTIALS
        assert body["detail"] == "Invalid username or password."
        assert body["instance"] == LOGIN
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert "accessToken" not in body
        assert ADMIN_PASSWORD not in response.text

    async def test_password_is_case_sensitive(self, client: httpx.AsyncClient) -> None:
        response = await attempt(client, "admin", ADMIN_PASSWORD.upper())
        assert problem(response, 401)["type"] == INVALID_CREDENTIALS

    async def test_unknown_user_and_wrong_password_answer_alike(self, client: httpx.AsyncClient) -> None:
        wrong_password = await attempt(client, "admin", "not-the-password")
        unknown_user = await attempt(client, "nobody", "not-the-password")
        assert wrong_password.status_code == unknown_user.status_code == 401
        assert wrong_password.json() == unknown_user.json()
        assert wrong_password.json()["instance"] == unknown_user.json()["instance"] == LOGIN
        assert dict(wrong_password.headers) == dict(unknown_user.headers)
        assert wrong_password.content == unknown_user.content

    async def test_disabled_user_cannot_log_in_and_gets_the_same_answer(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        user_id, password = await add_user(client, admin, "dora", "operator")
        assert (await attempt(client, "dora", password)).status_code == 200
        disabled = await client.post(f"/api/users/{user_id}/disable", headers=admin)
        assert disabled.status_code == 200 and disabled.json()["active"] is False

        right_password = await attempt(client, "dora", password)
        unknown_user = await attempt(client, "nobody", password)
        assert problem(right_password, 401)["type"] == INVALID_CREDENTIALS
        assert right_password.json() == unknown_user.json()
        assert dict(right_password.headers) == dict(unknown_user.headers)
        assert "accessToken" not in right_password.text

    async def test_username_is_case_insensitive(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        user_id, password = await add_user(client, admin, "Carol.Smith", "viewer")
        for spelling in ("carol.smith", "CAROL.SMITH", "Carol.Smith", "cArOl.SmItH"):
            headers = await login(client, spelling, password)
            me = (await client.get(ME, headers=headers)).json()
            assert me["id"] == user_id
            assert me["username"] == "carol.smith"
        assert (await attempt(client, "ADMIN", ADMIN_PASSWORD)).status_code == 200

    async def test_non_ascii_password_works_and_mismatches_are_401(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        password = "p\u00e4ssw\u00f6rd-\u00fcn\u00efc\u00f6de-\U0001f511"
        await add_user(client, admin, "uli", "viewer", password=password)
        assert (await attempt(client, "uli", password)).status_code == 200
        for wrong in ("passw\u00f6rd-\u00fcn\u00efc\u00f6de", "\u00e9" * 20, password.upper()):
            assert problem(await attempt(client, "uli", wrong), 401)["type"] == INVALID_CREDENTIALS

    async def test_long_passwords_are_compared_in_full(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        # bcrypt would ignore everything after byte 72; these two differ only after it.
        password = "a" * 72 + "-the-rest-matters"
        await add_user(client, admin, "lena", "viewer", password=password)
        assert (await attempt(client, "lena", password)).status_code == 200
        response = await attempt(client, "lena", "a" * 72 + "-something-else!!")
        assert problem(response, 401)["type"] == INVALID_CREDENTIALS

    async def test_malformed_json_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN, content=b'{"username": "admin", "password": ', headers={"Content-Type": "application/json"}
        )
        body = problem(response, 422)
        assert body["type"] == INVALID_INPUT
        assert body["instance"] == LOGIN
        assert body["detail"].startswith("Request body is not valid JSON")
        assert len(body["errors"]) == 1
        assert body["errors"][0]["pointer"] == "#"
        assert body["errors"][0]["detail"].startswith("Request body is not valid JSON")

    async def test_missing_fields_are_422_listing_each(self, client: httpx.AsyncClient) -> None:
        body = problem(await client.post(LOGIN, json={}), 422)
        assert body["type"] == INVALID_INPUT
        assert body["detail"] == "The request has 2 problems."
        assert sorted(body["errors"], key=lambda e: e["pointer"]) == [
            {"pointer": "#/password", "detail": "Field required"},
            {"pointer": "#/username", "detail": "Field required"},
        ]

    async def test_missing_password_is_422(self, client: httpx.AsyncClient) -> None:
        body = problem(await client.post(LOGIN, json={"username": "admin"}), 422)
        assert body["errors"] == [{"pointer": "#/password", "detail": "Field required"}]

    async def test_wrong_types_are_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGIN, json={"username": 42, "password": ["admin-password-for-tests"]})
        body = problem(response, 422)
        pointers = {e["pointer"]: e["detail"] for e in body["errors"]}
        assert set(pointers) == {"#/username", "#/password"}
        assert all("string" in detail for detail in pointers.values()), pointers
        # The offending values are not echoed back.
        assert ADMIN_PASSWORD not in response.text

    async def test_empty_strings_are_422(self, client: httpx.AsyncClient) -> None:
        body = problem(await client.post(LOGIN, json={"username": "", "password": ""}), 422)
        assert {e["pointer"] for e in body["errors"]} == {"#/username", "#/password"}

    async def test_unknown_fields_are_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN, json={"username": "admin", "password": ADMIN_PASSWORD, "role": "admin", "remember": True}
        )
        body = problem(response, 422)
        assert sorted(body["errors"], key=lambda e: e["pointer"]) == [
            {"pointer": "#/remember", "detail": "Unknown field"},
            {"pointer": "#/role", "detail": "Unknown field"},
        ]
        assert ADMIN_PASSWORD not in response.text

    async def test_overlong_password_is_422_without_echo(self, client: httpx.AsyncClient) -> None:
        secret = "s3cr3t-" + "p" * 1100
        response = await attempt(client, "admin", secret)
        body = problem(response, 422)
        assert [e["pointer"] for e in body["errors"]] == ["#/password"]
        assert "p" * 50 not in response.text

    async def test_nul_character_is_422_on_every_database(self, client: httpx.AsyncClient) -> None:
        body = problem(await attempt(client, "ad\u0000min", ADMIN_PASSWORD), 422)
        assert body["type"] == INVALID_INPUT
        assert any("NUL" in e["detail"] for e in body["errors"]), body

    @pytest.mark.parametrize(
        "payload", [b"[]", b'"admin"', b"null", b"42"], ids=["array", "string", "null", "number"]
    )
    async def test_body_that_is_not_an_object_is_422(self, client: httpx.AsyncClient, payload: bytes) -> None:
        response = await client.post(LOGIN, content=payload, headers={"Content-Type": "application/json"})
        body = problem(response, 422)
        assert len(body["errors"]) == 1
        assert "object" in body["errors"][0]["detail"] or "dictionary" in body["errors"][0]["detail"]

    @pytest.mark.parametrize("payload", [b"", b"[]"], ids=["empty", "array"])
    async def test_whole_body_problem_points_at_the_root(
        self, client: httpx.AsyncClient, payload: bytes
    ) -> None:
        response = await client.post(LOGIN, content=payload, headers={"Content-Type": "application/json"})
        body = problem(response, 422)
        # RFC 6901: "#" is the whole document; "#/" would be the member named "".
        assert [e["pointer"] for e in body["errors"]] == ["#"]

    async def test_form_encoded_body_is_415(self, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGIN, data={"username": "admin", "password": ADMIN_PASSWORD})
        body = problem(response, 415)
        assert body["type"] == "https://workflow-orchestration.dev/problems/unsupported-media-type"
        assert "application/json" in body["detail"]
        assert body["instance"] == LOGIN

    async def test_json_text_sent_as_text_plain_is_415(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN,
            content=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}),
            headers={"Content-Type": "text/plain"},
        )
        assert problem(response, 415)["title"] == "Unsupported Media Type"

    # The longest names LoginRequest takes; the second doubles in length when lower-cased.
    @pytest.mark.parametrize("long_name", ["x" * 200, "\u0130" * 200], ids=["ascii", "expands-when-lowered"])
    async def test_longest_allowed_username_is_an_ordinary_401(
        self, client: httpx.AsyncClient, long_name: str
    ) -> None:
        response = await attempt(client, long_name, "wrong-password")
        reference = await attempt(client, "nobody", "wrong-password")
        assert problem(response, 401)["type"] == INVALID_CREDENTIALS
        assert response.json() == reference.json()


class TestTokenLifetime:
    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(database_url, tmp_path, jwt_ttl_seconds=120)

    async def test_lifetime_follows_the_settings(self, client: httpx.AsyncClient) -> None:
        body = (await attempt(client, "admin", ADMIN_PASSWORD)).json()
        assert body["expiresIn"] == 120
        claims = unverified_claims(body["accessToken"])
        assert claims["exp"] - claims["iat"] == 120
        assert abs(claims["exp"] - (time.time() + 120)) < 5


class TestMe:
    async def test_returns_the_caller(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        operator: dict[str, str],
        viewer: dict[str, str],
    ) -> None:
        expected = {"admin": (admin, "admin"), "olivia": (operator, "operator"), "victor": (viewer, "viewer")}
        for username, (headers, role) in expected.items():
            response = await client.get(ME, headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"id", "username", "role", "active", "createdAt", "updatedAt"}
            assert body["username"] == username
            assert body["role"] == role
            assert body["active"] is True
            assert body["id"] == unverified_claims(token_of(headers))["sub"]
            assert body["createdAt"].endswith("Z")

    async def test_without_token_is_401(self, client: httpx.AsyncClient) -> None:
        assert assert_no_credentials(await client.get(ME))["instance"] == ME


# --- throttling ------------------------------------------------------------------------


class TestLoginThrottling:
    """At most 3 failures per username in the window (the per-address limit is out of the way)."""

    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(
            database_url, tmp_path, login_max_failures_per_user=3, login_max_failures_per_address=50
        )

    async def assert_throttled(self, response: httpx.Response, window: int = 900) -> int:
        body = problem(response, 429)
        assert body["type"] == TOO_MANY_REQUESTS
        assert body["title"] == "Too Many Requests"
        assert body["instance"] == LOGIN
        assert "accessToken" not in body
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= window + 1
        assert body["retryAfter"] == retry_after
        return retry_after

    async def test_failures_up_to_the_limit_are_401(self, client: httpx.AsyncClient) -> None:
        for _ in range(3):
            assert (
                problem(await attempt(client, "admin", "wrong-password"), 401)["type"] == INVALID_CREDENTIALS
            )

    async def test_user_over_the_limit_is_429_even_with_the_right_password(
        self, client: httpx.AsyncClient
    ) -> None:
        for _ in range(3):
            await attempt(client, "admin", "wrong-password")
        retry_after = await self.assert_throttled(await attempt(client, "admin", ADMIN_PASSWORD))
        assert retry_after > 800  # the 900-second window has just begun
        # Still locked: a throttled attempt does not slip through on a second try.
        await self.assert_throttled(await attempt(client, "admin", ADMIN_PASSWORD))
        await self.assert_throttled(await attempt(client, "admin", "wrong-password"))

    async def test_unknown_username_is_throttled_like_a_known_one(self, client: httpx.AsyncClient) -> None:
        for name in ("admin", "ghost"):
            for _ in range(3):
                assert (await attempt(client, name, "wrong-password")).status_code == 401
        known = await attempt(client, "admin", "wrong-password")
        unknown = await attempt(client, "ghost", "wrong-password")
        await self.assert_throttled(known)
        await self.assert_throttled(unknown)
        # Same answer: the lockout does not reveal which usernames exist.
        strip = {"retryAfter"}
        assert {k: v for k, v in known.json().items() if k not in strip} == {
            k: v for k, v in unknown.json().items() if k not in strip
        }

    async def test_failures_count_case_insensitively(self, client: httpx.AsyncClient) -> None:
        for spelling in ("ADMIN", "Admin", "admin"):
            assert (await attempt(client, spelling, "wrong-password")).status_code == 401
        await self.assert_throttled(await attempt(client, "aDmIn", ADMIN_PASSWORD))

    async def test_longest_usernames_are_counted_too(self, client: httpx.AsyncClient) -> None:
        long_name = "y" * 200
        for _ in range(3):
            assert (
                problem(await attempt(client, long_name, "wrong-password"), 401)["type"]
                == INVALID_CREDENTIALS
            )
        await self.assert_throttled(await attempt(client, long_name, "wrong-password"))
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200

    async def test_lockout_is_per_user(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        _, password = await add_user(client, admin, "uma", "viewer")
        for _ in range(3):
            await attempt(client, "uma", "wrong-password")
        await self.assert_throttled(await attempt(client, "uma", password))
        # Other users, and tokens issued before, are unaffected.
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200
        assert (await client.get(ME, headers=admin)).status_code == 200

    async def test_successful_login_clears_the_users_counter(self, client: httpx.AsyncClient) -> None:
        for _ in range(2):
            assert (await attempt(client, "admin", "wrong-password")).status_code == 401
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200
        # Two more failures would make four without the reset.
        for _ in range(2):
            assert (await attempt(client, "admin", "wrong-password")).status_code == 401
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200

    async def test_success_under_another_spelling_clears_the_counter(self, client: httpx.AsyncClient) -> None:
        for _ in range(2):
            await attempt(client, "admin", "wrong-password")
        assert (await attempt(client, "ADMIN", ADMIN_PASSWORD)).status_code == 200
        for _ in range(2):
            assert (await attempt(client, "admin", "wrong-password")).status_code == 401
        assert (await attempt(client, "Admin", ADMIN_PASSWORD)).status_code == 200


class TestAddressThrottling:
    """At most 3 failures per client address, whatever the usernames."""

    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(
            database_url, tmp_path, login_max_failures_per_user=50, login_max_failures_per_address=3
        )

    async def test_failures_across_usernames_lock_the_address(self, client: httpx.AsyncClient) -> None:
        for name in ("alice", "bob", "admin"):
            assert (await attempt(client, name, "wrong-password")).status_code == 401
        for name, password in (("admin", ADMIN_PASSWORD), ("zed", "whatever")):
            response = await attempt(client, name, password)
            body = problem(response, 429)
            assert body["type"] == TOO_MANY_REQUESTS
            assert int(response.headers["retry-after"]) == body["retryAfter"] >= 1

    async def test_a_success_does_not_reset_the_address_counter(self, client: httpx.AsyncClient) -> None:
        # Otherwise one valid account would let an attacker guess other accounts' passwords forever.
        for name in ("alice", "bob"):
            assert (await attempt(client, name, "wrong-password")).status_code == 401
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200
        assert (await attempt(client, "carol", "wrong-password")).status_code == 401
        assert problem(await attempt(client, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS


@contextlib.asynccontextmanager
async def failure_recorded_elsewhere(
    database_url: str, key: str
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another replica records the first failure of `key` and commits it a moment later.

    Yields a coroutine function that returns once this replica's own INSERT of that key waits on
    the other transaction (on SQLite: after a pause long enough for the login to get there).
    """
    if database_url.startswith("postgresql"):
        other = await psycopg.AsyncConnection.connect(database_url)
        watcher = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        try:
            await other.execute(
                "INSERT INTO rate_counters (key, hits, window_started_at) VALUES (%s, 1, now())", (key,)
            )

            async def blocked() -> None:
                for _ in range(200):
                    cursor = await watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO rate_counters%%'"
                    )
                    row = await cursor.fetchone()
                    if row and row[0] > 0:
                        return
                    await asyncio.sleep(0.05)
                pytest.fail("the login never reached its INSERT into login_failures")

            yield blocked
            await other.commit()
        finally:
            await other.close()
            await watcher.close()
        return

    path = database_url.removeprefix("sqlite:///")
    other_sqlite = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        other_sqlite.execute("BEGIN IMMEDIATE")
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        other_sqlite.execute(
            "INSERT INTO rate_counters (key, hits, window_started_at) VALUES (?, 1, ?)", (key, stamp)
        )

        async def paused() -> None:
            # The login reads no row, hashes (well under a second), then waits for the write lock.
            await asyncio.sleep(1.5)

        yield paused
        other_sqlite.execute("COMMIT")
    finally:
        other_sqlite.close()


class TestConcurrentLoginFailures:
    """Two replicas record a failure for the same username at the same time."""

    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(
            database_url, tmp_path, login_max_failures_per_user=2, login_max_failures_per_address=2
        )

    async def test_failure_racing_another_replicas_first_failure_is_counted(
        self, client: httpx.AsyncClient, database_url: str
    ) -> None:
        async with failure_recorded_elsewhere(database_url, "user:admin") as waiting:
            pending = asyncio.create_task(attempt(client, "admin", "wrong-password"))
            await waiting()
            assert not pending.done()
        response = await pending
        assert problem(response, 401)["type"] == INVALID_CREDENTIALS
        # One failure there plus one here reach the limit of two.
        assert problem(await attempt(client, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS

    async def test_failure_racing_another_replicas_address_failure_is_counted(
        self, client: httpx.AsyncClient, database_url: str
    ) -> None:
        # httpx's ASGITransport presents every request as coming from 127.0.0.1.
        async with failure_recorded_elsewhere(database_url, "addr:127.0.0.1") as waiting:
            pending = asyncio.create_task(attempt(client, "someone", "wrong-password"))
            await waiting()
            assert not pending.done()
        response = await pending
        assert problem(response, 401)["type"] == INVALID_CREDENTIALS
        # One failure there plus one here reach the address limit of two.
        assert problem(await attempt(client, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS


class TestThrottleWindow:
    """A 2-second window: a lockout ends when it does."""

    WINDOW = 2

    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(
            database_url,
            tmp_path,
            login_max_failures_per_user=3,
            login_max_failures_per_address=50,
            login_failure_window_seconds=self.WINDOW,
        )

    async def lock(self, client: httpx.AsyncClient) -> int:
        """Three failures, then the right password is refused. On a busy machine the three may
        take longer than the window, which then ends before the fourth attempt (which succeeds):
        that round proves nothing and is tried again."""
        for _ in range(5):
            began = time.monotonic()
            for _ in range(3):
                assert (await attempt(client, "admin", "wrong-password")).status_code == 401
            response = await attempt(client, "admin", ADMIN_PASSWORD)
            if response.status_code == 200 and time.monotonic() - began >= self.WINDOW:
                continue
            assert problem(response, 429)["type"] == TOO_MANY_REQUESTS
            retry_after = int(response.headers["retry-after"])
            assert 1 <= retry_after <= self.WINDOW
            return retry_after
        pytest.fail("five rounds of failed logins each outlasted the window")

    async def test_logins_go_through_after_retry_after(self, client: httpx.AsyncClient) -> None:
        retry_after = await self.lock(client)
        await asyncio.sleep(retry_after + 0.1)
        response = await attempt(client, "admin", ADMIN_PASSWORD)
        assert response.status_code == 200, response.text
        assert (await client.get(ME, headers=bearer(response.json()["accessToken"]))).status_code == 200

    async def test_a_new_window_starts_counting_from_zero(self, client: httpx.AsyncClient) -> None:
        retry_after = await self.lock(client)
        await asyncio.sleep(retry_after + 0.1)
        # Two failures in the new window stay under the limit of three.
        for _ in range(2):
            assert (
                problem(await attempt(client, "admin", "wrong-password"), 401)["type"] == INVALID_CREDENTIALS
            )
        assert (await attempt(client, "admin", ADMIN_PASSWORD)).status_code == 200


# --- bearer tokens ---------------------------------------------------------------------


class TestBearerToken:
    """Every request but login needs a valid, unexpired HS256 token signed with our secret."""

    async def test_missing_authorization_is_401(self, client: httpx.AsyncClient) -> None:
        for path in ("/api/workflows", "/api/users", ME, "/api/v2/workflows"):
            body = assert_no_credentials(await client.get(path))
            assert body["detail"] == "A valid bearer token is required."
            assert body["instance"] == path

    async def test_missing_authorization_on_write_is_401_not_422(self, client: httpx.AsyncClient) -> None:
        assert_no_credentials(await client.post("/api/workflows", json={}))

    async def test_basic_scheme_is_refused(self, client: httpx.AsyncClient) -> None:
        basic = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        body = assert_no_credentials(await client.get(ME, headers={"Authorization": f"Basic {basic}"}))
        assert body["type"] == UNAUTHENTICATED

    async def test_token_without_scheme_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        assert_no_credentials(await client.get(ME, headers={"Authorization": token_of(viewer)}))

    async def test_scheme_name_is_case_insensitive(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        # RFC 9110 section 11.1: auth schemes are case-insensitive.
        response = await client.get(ME, headers={"Authorization": f"bearer {token_of(viewer)}"})
        assert response.status_code == 200
        assert response.json()["username"] == "victor"

    @pytest.mark.parametrize(
        "value", ["Bearer not-a-jwt", "Bearer a.b.c", "Bearer ....", "Bearer e30.e30.e30"]
    )
    async def test_garbage_token_is_refused(self, client: httpx.AsyncClient, value: str) -> None:
        body = assert_invalid_token(await client.get(ME, headers={"Authorization": value}))
        assert body["detail"] == "The bearer token is invalid or expired."

    async def test_same_claims_resigned_with_the_right_secret_are_accepted(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        """The control for the forgeries below: re-signing is not what makes them fail."""
        claims = unverified_claims(token_of(viewer))
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        response = await client.get(ME, headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["username"] == "victor"

    @pytest.mark.parametrize("alg", ["none", "None", "NONE"])
    async def test_alg_none_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], alg: str
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        claims["roles"] = ["admin"]
        unsigned = f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(claims)}."
        assert_invalid_token(await client.get(ME, headers=bearer(unsigned)))
        assert_invalid_token(await client.get("/api/users", headers=bearer(unsigned)))

    async def test_alg_none_with_original_signature_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        _, payload, signature = token_of(viewer).split(".")
        forged = f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
        assert_invalid_token(await client.get(ME, headers=bearer(forged)))

    async def test_expired_token_is_refused(self, client: httpx.AsyncClient, viewer: dict[str, str]) -> None:
        claims = unverified_claims(token_of(viewer))
        now = datetime.now(UTC)
        claims.update(
            iat=now - timedelta(hours=2), nbf=now - timedelta(hours=2), exp=now - timedelta(minutes=1)
        )
        expired = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        body = assert_invalid_token(await client.get(ME, headers=bearer(expired)))
        assert "expired" in body["detail"]

    async def test_tampered_payload_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        header, _, signature = token_of(viewer).split(".")
        claims = unverified_claims(token_of(viewer))
        claims["roles"] = ["admin"]
        tampered = f"{header}.{b64url_json(claims)}.{signature}"
        assert_invalid_token(await client.get(ME, headers=bearer(tampered)))
        response = await client.post(
            "/api/users",
            json={"username": "mallory", "password": "mallory-password-1", "role": "admin"},
            headers=bearer(tampered),
        )
        assert_invalid_token(response)

    async def test_tampered_subject_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], admin: dict[str, str]
    ) -> None:
        header, _, signature = token_of(viewer).split(".")
        claims = unverified_claims(token_of(viewer))
        claims["sub"] = unverified_claims(token_of(admin))["sub"]
        assert_invalid_token(
            await client.get(ME, headers=bearer(f"{header}.{b64url_json(claims)}.{signature}"))
        )

    async def test_token_signed_with_another_secret_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        foreign = jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(foreign)))

    # The test secret is shorter than HS512 would like: that is the point, it is ours.
    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    @pytest.mark.parametrize("alg", ["HS384", "HS512"])
    async def test_other_hmac_algorithm_with_the_right_secret_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], alg: str
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        token = jwt.encode(claims, JWT_SECRET, algorithm=alg)
        assert jwt.get_unverified_header(token)["alg"] == alg
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    @pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
    async def test_asymmetric_alg_header_with_hmac_signature_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], alg: str
    ) -> None:
        """Algorithm confusion: an RS/ES header whose 'public key' is the shared secret."""
        claims = unverified_claims(token_of(viewer))
        signing_input = f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(claims)}"
        forged = f"{signing_input}.{hmac_signature(signing_input, JWT_SECRET.encode())}"
        assert_invalid_token(await client.get(ME, headers=bearer(forged)))

    @pytest.mark.parametrize("claim", ["exp", "sub", "iat"])
    async def test_token_missing_a_required_claim_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], claim: str
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        del claims[claim]
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    @pytest.mark.parametrize(
        ("claim", "value"),
        [("aud", "some-other-service"), ("iss", "someone-else"), ("roles", "admin"), ("ver", "1")],
    )
    async def test_token_with_a_foreign_or_malformed_claim_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str], claim: str, value: str
    ) -> None:
        """Signed with our secret, but not one of our access tokens."""
        claims = unverified_claims(token_of(viewer))
        claims[claim] = value
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    async def test_token_not_valid_yet_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        later = datetime.now(UTC) + timedelta(hours=1)
        claims.update(iat=later, nbf=later, exp=later + timedelta(hours=1))
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    async def test_token_of_an_unknown_user_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        claims["sub"] = "987654"
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    async def test_token_with_non_numeric_subject_is_refused(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        claims["sub"] = "victor"
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    async def test_refusals_do_not_leak_the_reason(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        claims = unverified_claims(token_of(viewer))
        foreign = jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
        expired = jwt.encode({**claims, "exp": int(time.time()) - 60}, JWT_SECRET, algorithm="HS256")
        forged = assert_invalid_token(await client.get(ME, headers=bearer(foreign)))
        stale = assert_invalid_token(await client.get(ME, headers=bearer(expired)))
        assert forged == stale
        assert "Signature" not in json.dumps(forged)


# --- roles -----------------------------------------------------------------------------


async def create_definition(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/api/workflows", json=SAMPLE_DEFINITION, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_forbidden(response: httpx.Response, needed: str, have: str) -> None:
    body = problem(response, 403)
    assert body["type"] == FORBIDDEN
    assert body["title"] == "Forbidden"
    assert needed in body["detail"] and have in body["detail"], body["detail"]


class TestViewerRole:
    async def test_can_read_definitions(
        self, client: httpx.AsyncClient, operator: dict[str, str], viewer: dict[str, str]
    ) -> None:
        created = await create_definition(client, operator)
        listed = await client.get("/api/workflows", headers=viewer)
        assert listed.status_code == 200
        assert [d["id"] for d in listed.json()] == [created["id"]]
        one = await client.get(f"/api/workflows/{created['id']}", headers=viewer)
        assert one.status_code == 200
        assert one.json()["name"] == "Sample Workflow"

    async def test_cannot_create_a_definition(
        self, client: httpx.AsyncClient, viewer: dict[str, str], admin: dict[str, str]
    ) -> None:
        response = await client.post("/api/workflows", json=SAMPLE_DEFINITION, headers=viewer)
        assert_forbidden(response, "operator", "viewer")
        assert (await client.get("/api/workflows", headers=admin)).json() == []

    async def test_cannot_update_a_definition(
        self, client: httpx.AsyncClient, operator: dict[str, str], viewer: dict[str, str]
    ) -> None:
        created = await create_definition(client, operator)
        changed = {**SAMPLE_DEFINITION, "name": "Hijacked"}
        response = await client.put(f"/api/workflows/{created['id']}", json=changed, headers=viewer)
        assert_forbidden(response, "operator", "viewer")
        current = (await client.get(f"/api/workflows/{created['id']}", headers=viewer)).json()
        assert current["name"] == "Sample Workflow"
        assert current["version"] == "1.0.0"

    async def test_cannot_delete_a_definition(
        self, client: httpx.AsyncClient, operator: dict[str, str], viewer: dict[str, str]
    ) -> None:
        created = await create_definition(client, operator)
        assert_forbidden(
            await client.delete(f"/api/workflows/{created['id']}", headers=viewer), "operator", "viewer"
        )
        assert (await client.get(f"/api/workflows/{created['id']}", headers=viewer)).status_code == 200

    async def test_forbidden_before_validation(
        self, client: httpx.AsyncClient, viewer: dict[str, str]
    ) -> None:
        # A viewer learns nothing about what a valid body would be.
        assert_forbidden(
            await client.post("/api/workflows", json={"bogus": 1}, headers=viewer), "operator", "viewer"
        )

    async def test_cannot_manage_users(self, client: httpx.AsyncClient, viewer: dict[str, str]) -> None:
        assert_forbidden(await client.get("/api/users", headers=viewer), "admin", "viewer")
        assert_forbidden(await client.get("/api/users/1", headers=viewer), "admin", "viewer")
        response = await client.patch("/api/users/1", json={"role": "viewer"}, headers=viewer)
        assert_forbidden(response, "admin", "viewer")


class TestOperatorRole:
    async def test_can_write_definitions(self, client: httpx.AsyncClient, operator: dict[str, str]) -> None:
        created = await create_definition(client, operator)
        assert created["version"] == "1.0.0"
        updated = await client.put(
            f"/api/workflows/{created['id']}", json={**SAMPLE_DEFINITION, "name": "Renamed"}, headers=operator
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["name"] == "Renamed"
        assert updated.json()["version"] == "1.0.1"
        deleted = await client.delete(f"/api/workflows/{created['id']}", headers=operator)
        assert deleted.status_code == 204
        gone = await client.get(f"/api/workflows/{created['id']}", headers=operator)
        assert problem(gone, 404)["type"].endswith("definition-not-found")

    async def test_cannot_list_users(self, client: httpx.AsyncClient, operator: dict[str, str]) -> None:
        assert_forbidden(await client.get("/api/users", headers=operator), "admin", "operator")
        assert_forbidden(await client.get("/api/v2/users", headers=operator), "admin", "operator")

    async def test_cannot_create_users(
        self, client: httpx.AsyncClient, operator: dict[str, str], admin: dict[str, str]
    ) -> None:
        body = {"username": "sneaky", "password": "sneaky-password-1", "role": "admin"}
        assert_forbidden(await client.post("/api/users", json=body, headers=operator), "admin", "operator")
        names = [u["username"] for u in (await client.get("/api/users", headers=admin)).json()]
        assert "sneaky" not in names
        assert (await attempt(client, "sneaky", "sneaky-password-1")).status_code == 401

    async def test_cannot_promote_itself(self, client: httpx.AsyncClient, operator: dict[str, str]) -> None:
        me = (await client.get(ME, headers=operator)).json()
        response = await client.patch(f"/api/users/{me['id']}", json={"role": "admin"}, headers=operator)
        assert_forbidden(response, "admin", "operator")
        assert (await client.get(ME, headers=operator)).json()["role"] == "operator"


class TestAdminRole:
    async def test_can_do_everything(self, client: httpx.AsyncClient, admin: dict[str, str]) -> None:
        created = await create_definition(client, admin)
        assert (await client.get("/api/workflows", headers=admin)).status_code == 200
        updated = await client.put(
            f"/api/workflows/{created['id']}", json={**SAMPLE_DEFINITION, "name": "Admin's"}, headers=admin
        )
        assert updated.status_code == 200 and updated.json()["version"] == "1.0.1"
        assert (await client.delete(f"/api/workflows/{created['id']}", headers=admin)).status_code == 204
        user_id, _ = await add_user(client, admin, "newbie", "viewer")
        users = (await client.get("/api/users", headers=admin)).json()
        assert [u["username"] for u in users] == ["admin", "newbie"]
        assert (await client.get(f"/api/users/{user_id}", headers=admin)).json()["username"] == "newbie"
