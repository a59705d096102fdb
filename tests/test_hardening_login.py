"""Login under attack (issue 10, item 6, and the `rate_counters` purge): the password check off the
event loop, the throttle reserving an attempt before the check, a lock-out that does not lock the
owner out, X-Forwarded-For believed only from trusted proxies, and expired windows purged.

In-process tests use the real app and database through httpx's ASGITransport, whose `client`
argument sets the client address the app sees; the proxy tests start real server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi import FastAPI

from api.db import utcnow
from api.models.users import CounterRow, UserRow
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, make_settings, problem
from tests.processes import free_port, running_processes, server_client, wait_http_ready

LOGIN = "/api/auth/login"
TOO_MANY_REQUESTS = "https://workflow-orchestration.dev/problems/too-many-requests"
INVALID_CREDENTIALS = "https://workflow-orchestration.dev/problems/invalid-credentials"

ATTACKER = "203.0.113.7"
OWNER = "198.51.100.20"


@contextlib.asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app whose requests come from `address`."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def attempt(http: httpx.AsyncClient, username: str, password: str, **headers: str) -> httpx.Response:
    return await http.post(LOGIN, json={"username": username, "password": password}, headers=headers)


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


# --- the check and the count are one step ------------------------------------------------------


class TestParallelGuesses:
    """Many wrong passwords at once: no more get checked than the limit allows."""

    LIMITS: ClassVar[dict[str, dict[str, int]]] = {
        # the limit under test is 3; the others are out of the way
        "user-and-address": {
            "login_max_failures_per_user_and_address": 3,
            "login_max_failures_per_user": 100,
            "login_max_failures_per_address": 100,
        },
        "user": {
            "login_max_failures_per_user_and_address": 100,
            "login_max_failures_per_user": 3,
            "login_max_failures_per_address": 100,
        },
        "address": {
            "login_max_failures_per_user_and_address": 100,
            "login_max_failures_per_user": 100,
            "login_max_failures_per_address": 3,
        },
    }

    @pytest.fixture(params=list(LIMITS))
    def settings(self, request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(database_url, tmp_path, **self.LIMITS[request.param])

    async def test_concurrent_bad_logins_cannot_exceed_the_limit(self, app: FastAPI) -> None:
        async with client_from(app, ATTACKER) as http:
            responses = await asyncio.gather(*(attempt(http, "admin", f"guess-{i}") for i in range(12)))
            counts = statuses(list(responses))
            # Exactly three guesses were checked; every other one was refused before any check.
            assert counts == {401: 3, 429: 9}, counts
            for response in responses:
                if response.status_code == 429:
                    assert problem(response, 429)["type"] == TOO_MANY_REQUESTS
            # The right password is refused too now: the window is used up.
            assert problem(await attempt(http, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS


# --- the password check does not hold up the event loop ----------------------------------------------


def slow_hash(password: str, at_least: float) -> tuple[str, float]:
    """An Argon2id hash of `password` whose check takes at least `at_least` seconds on this machine
    (measured here, then scaled), and how long one check of it takes."""
    probe_cost = 6
    probe = PasswordHasher(time_cost=probe_cost, memory_cost=65536, parallelism=1)
    probe_hash = probe.hash(password)
    started = time.perf_counter()
    probe.verify(probe_hash, password)
    per_pass = (time.perf_counter() - started) / probe_cost
    cost = min(2000, max(probe_cost, math.ceil(at_least / per_pass)))
    hasher = PasswordHasher(time_cost=cost, memory_cost=65536, parallelism=1)
    hashed = hasher.hash(password)
    started = time.perf_counter()
    with contextlib.suppress(VerificationError):
        hasher.verify(hashed, password + "-not")
    return hashed, time.perf_counter() - started


class TestLoginFlood:
    async def test_health_checks_answer_while_passwords_are_checked(self, app: FastAPI) -> None:
        """Logins whose password check takes seconds are in flight; /healthz answers meanwhile, in
        a small part of one check's time (a check on the event loop would hold it for all of it)."""
        hashed, check_seconds = await asyncio.to_thread(slow_hash, "slow-user-password", 3.0)
        async with app.state.sessions() as session:
            session.add(UserRow(username="slowpoke", password_hash=hashed, role="viewer"))
            await session.commit()

        async with client_from(app, ATTACKER) as http:
            started = time.monotonic()
            logins = [asyncio.create_task(attempt(http, "slowpoke", f"wrong-{i}")) for i in range(3)]
            try:
                await asyncio.sleep(0.2)  # the logins reach their password checks
                response = await http.get("/healthz")
                answered_after = time.monotonic() - started
                assert response.status_code == 200
                assert not any(login.done() for login in logins), "a login finished before the health check"
                # Generous: half of one password check, which itself takes seconds here.
                assert answered_after < check_seconds / 2, (answered_after, check_seconds)
            finally:
                results = await asyncio.gather(*logins)
        assert statuses(list(results)) == {401: 3}


# --- the owner is not locked out by someone else's guesses -----------------------------------------


class TestLockOutIsNotADenialOfService:
    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(
            database_url,
            tmp_path,
            login_max_failures_per_user_and_address=3,
            login_max_failures_per_user=7,
            login_max_failures_per_address=20,
        )

    async def test_owner_logs_in_from_another_address_while_the_attacker_is_throttled(
        self, app: FastAPI
    ) -> None:
        async with client_from(app, ATTACKER) as attacker, client_from(app, OWNER) as owner:
            for i in range(3):
                assert (
                    problem(await attempt(attacker, "admin", f"guess-{i}"), 401)["type"]
                    == INVALID_CREDENTIALS
                )
            # The attacker keeps trying: refused without a check (the right password too).
            for i in range(30):
                assert (await attempt(attacker, "admin", f"more-{i}")).status_code == 429
            assert problem(await attempt(attacker, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS
            # The owner, elsewhere, gets in: refused attempts did not count towards the user's ceiling.
            response = await attempt(owner, "admin", ADMIN_PASSWORD)
            assert response.status_code == 200, response.text
            # ...and a typo of the owner's is an ordinary 401.
            assert problem(await attempt(owner, "admin", "typo"), 401)["type"] == INVALID_CREDENTIALS

    async def test_many_addresses_reach_the_users_ceiling(self, app: FastAPI) -> None:
        """Guessing from many addresses is bounded by the per-user ceiling (7 here)."""
        addresses = [f"192.0.2.{i}" for i in range(1, 5)]
        seen: list[int] = []
        for address in addresses:
            async with client_from(app, address) as http:
                for i in range(3):
                    seen.append((await attempt(http, "admin", f"guess-{i}")).status_code)
        assert Counter(seen) == {401: 7, 429: 5}, seen
        async with client_from(app, OWNER) as owner:
            assert problem(await attempt(owner, "admin", ADMIN_PASSWORD), 429)["type"] == TOO_MANY_REQUESTS

    async def test_addresses_of_one_ipv6_network_count_as_one(self, app: FastAPI) -> None:
        """An IPv6 client has a whole /64 to pick addresses from: they share one counter."""
        for suffix in ("1", "2", "3"):
            async with client_from(app, f"2001:db8:1:2::{suffix}") as http:
                assert (await attempt(http, "admin", "guess")).status_code == 401
        async with client_from(app, "2001:db8:1:2:ffff::9") as http:
            assert (await attempt(http, "admin", "guess")).status_code == 429
        async with client_from(app, "2001:db8:1:3::1") as http:
            assert (await attempt(http, "admin", ADMIN_PASSWORD)).status_code == 200


# --- X-Forwarded-For ------------------------------------------------------------------------------


@pytest.mark.slow
class TestTrustedProxies:
    """A real server (uvicorn as server.py configures it); this test's requests come from 127.0.0.1."""

    @pytest.mark.parametrize(
        ("trusted", "believed"),
        [([], False), (["10.9.8.7"], False), (["127.0.0.1"], True), (["127.0.0.0/8"], True)],
        ids=["none", "another-proxy", "this-proxy", "this-network"],
    )
    async def test_forwarded_for_is_believed_only_from_trusted_proxies(
        self, tmp_path: Path, trusted: list[str], believed: bool
    ) -> None:
        settings = make_settings(
            f"sqlite:///{tmp_path / 'wfo.db'}",
            tmp_path,
            trusted_proxies=trusted,
            login_max_failures_per_user_and_address=2,
            login_max_failures_per_user=50,
            login_max_failures_per_address=50,
            log_level="WARNING",
        )
        port = free_port()
        with running_processes(tmp_path / "logs") as procs:
            api = procs.start_api(settings, port)
            url = f"http://127.0.0.1:{port}"
            await wait_http_ready(api, f"{url}/healthz")
            async with server_client(url, timeout=30) as http:
                for i in range(2):
                    response = await attempt(http, "admin", f"guess-{i}", **{"X-Forwarded-For": ATTACKER})
                    assert response.status_code == 401, response.text
                assert (
                    await attempt(http, "admin", "guess", **{"X-Forwarded-For": ATTACKER})
                ).status_code == 429
                # Another client behind the same proxy: its own counter only if the header is believed.
                response = await attempt(http, "admin", ADMIN_PASSWORD, **{"X-Forwarded-For": OWNER})
                assert response.status_code == (200 if believed else 429), response.text
            api.check_alive()

    def test_a_wildcard_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="WFO_TRUSTED_PROXIES"):
            make_settings("sqlite:///x.db", tmp_path, trusted_proxies=["*"])

    def test_entries_must_be_addresses_or_networks(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="WFO_TRUSTED_PROXIES"):
            make_settings("sqlite:///x.db", tmp_path, trusted_proxies=["proxy.internal"])


# --- rate_counters are purged ----------------------------------------------------------------------


class TestCounterPurge:
    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return make_settings(database_url, tmp_path, login_failure_window_seconds=60)

    async def keys(self, app: FastAPI) -> set[str]:
        async with app.state.sessions() as session:
            return set((await session.exec(sa.select(CounterRow.key))).scalars())  # type: ignore[call-overload]

    async def test_expired_windows_are_deleted_when_counters_are_written(self, app: FastAPI) -> None:
        long_ago = utcnow() - timedelta(hours=2)
        async with app.state.sessions() as session:
            for i in range(50):
                session.add(CounterRow(key=f"addr:10.0.0.{i}", hits=3, window_started_at=long_ago))
                session.add(CounterRow(key=f"user:gone-{i}", hits=1, window_started_at=long_ago))
            session.add(CounterRow(key="user:recent", hits=1, window_started_at=utcnow()))
            await session.commit()

        async with client_from(app, ATTACKER) as http:
            assert (await attempt(http, "admin", "wrong")).status_code == 401
        keys = await self.keys(app)
        assert not {k for k in keys if k.startswith(("addr:10.0.0.", "user:gone-"))}, sorted(keys)
        # A window still open stays, and so do the counters just written.
        assert "user:recent" in keys
        assert "user:admin" in keys and f"addr:{ATTACKER}" in keys

    async def test_purge_runs_at_most_once_per_window(self, app: FastAPI) -> None:
        async with client_from(app, ATTACKER) as http:
            assert (await attempt(http, "admin", "wrong")).status_code == 401
            long_ago = utcnow() - timedelta(hours=2)
            async with app.state.sessions() as session:
                session.add(CounterRow(key="addr:10.1.1.1", hits=3, window_started_at=long_ago))
                await session.commit()
            # A purge ran a moment ago: the next write leaves the stale row for the next window's purge.
            assert (await attempt(http, "admin", "wrong")).status_code == 401
        assert "addr:10.1.1.1" in await self.keys(app)
