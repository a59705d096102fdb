"""Faults on a real stack: workers, the API and Temporal as real processes, killed and restarted
mid-execution; cancel reaching an HTTP request in flight; the database going away under the
read model. Everything on the Temporal dev server (the session's, or one of the test's own),
the real database and loopback HTTP servers; processes on free ports, signalled by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Self

import httpx
import psycopg
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.db import create_engine, session_factory
from api.models.executions import ExecutionEventRow, ExecutionRow
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, POSTGRES_ADMIN_URL, make_settings, running_worker
from tests.loopback import LoopbackServer, RecordedRequest, Reply
from tests.processes import (
    ApiClient,
    ProcessSet,
    free_port,
    server_client,
    task_of,
    wait_http_ready,
    wait_temporal_ready,
    wait_worker_polling,
)
from workflows.constants import workflow_id

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    # A killed worker's task is noticed after 3 s of silence.
    return engine_settings.model_copy(update={"task_heartbeat_timeout_seconds": 3})


@contextlib.asynccontextmanager
async def in_process_api(settings: Settings) -> AsyncIterator[ApiClient]:
    """The API app with its lifespan (its own Temporal client, from the settings), logged in as admin."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield await ApiClient.login(http, "admin", ADMIN_PASSWORD)


@pytest_asyncio.fixture
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with in_process_api(settings) as client:
        yield client


def gated(gate: threading.Event, reply: Reply, timeout: float = 60.0):
    """A loopback handler that answers `reply` once `gate` is set (the request stays in flight until then)."""

    def handler(request: RecordedRequest) -> Reply:
        gate.wait(timeout)
        return reply

    return handler


# --- a worker dies mid-task --------------------------------------------------------------------


class TestWorkerKilled:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_task_runs_again_on_another_worker(
        self,
        settings: Settings,
        api: ApiClient,
        temporal_env: WorkflowEnvironment,
        loopback: LoopbackServer,
        processes: ProcessSet,
    ) -> None:
        """SIGKILL the task worker mid-request: after the heartbeat timeout the task's second attempt
        runs on the other worker, and the execution completes."""
        # The first request never gets its answer (its worker dies); the second is answered at once.
        loopback.route(
            "/work", replies=[Reply(delay=120, json={"late": True}), Reply(json={"served": "second"})]
        )
        queue = settings.default_task_queue
        async with running_worker(
            temporal_env.client, settings, "--queue", settings.system_task_queue, identity="system"
        ):
            workers = {
                name: processes.start_worker(settings, "--queue", queue, identity=name)
                for name in ("task-worker-a", "task-worker-b")
            }
            for name, process in workers.items():
                await wait_worker_polling(temporal_env.client, queue, name, process)

            definition = await api.define(
                "killed-worker",
                [
                    {
                        "id": "call",
                        "name": "call",
                        "type": "http",
                        "input": {"url": loopback.url_for("/work"), "timeoutSeconds": 120},
                        "retryPolicy": {"maxAttempts": 3, "initialInterval": 0.5},
                    },
                    {"id": "after", "name": "after", "dependencies": ["call"]},
                ],
            )
            execution = await api.start(definition, {"order": 17})
            await loopback.wait_for_requests_async(1, "/work", timeout=30)

            # Which worker holds the request: Temporal knows who started the attempt.
            handle = temporal_env.client.get_workflow_handle(
                workflow_id(settings.workflow_id_prefix, definition, execution["id"])
            )
            pending = (await handle.describe()).raw_description.pending_activities
            assert [p.activity_id for p in pending] == ["call#1"]
            victim_name = pending[0].last_worker_identity
            assert victim_name in workers, pending
            (survivor_name,) = set(workers) - {victim_name}
            victim = workers[victim_name]
            victim.kill()
            assert victim.returncode == -9

            final = await api.wait_status(execution["id"], timeout=60)

        assert final["status"] == "COMPLETED", final
        call = task_of(final, "call")
        assert call is not None
        assert call["status"] == "COMPLETED"
        assert call["attempts"] == 2
        assert call["error"] is None
        assert call["resources"]["worker"] == survivor_name
        assert call["resources"]["queue"] == queue
        assert task_of(final, "after")["status"] == "COMPLETED"  # type: ignore[index]
        assert final["context"]["data"]["order"] == 17
        assert final["context"]["data"]["call-result"]["body"] == {"served": "second"}
        assert len(loopback.requests_to("/work")) == 2

        # Temporal noticed the silence: the second attempt carries the heartbeat timeout as its last failure.
        history = await handle.fetch_history()
        started = [
            e.activity_task_started_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        retried = [s for s in started if s.attempt == 2]
        assert len(retried) == 1
        assert retried[0].identity == survivor_name
        assert "heartbeat" in retried[0].last_failure.message.lower(), retried[0].last_failure


# --- the API restarts mid-execution --------------------------------------------------------------


class TestApiRestarted:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_execution_goes_on_and_nothing_is_lost(
        self,
        settings: Settings,
        temporal_env: WorkflowEnvironment,
        loopback: LoopbackServer,
        processes: ProcessSet,
    ) -> None:
        """SIGTERM the API (a real `python -m server`) while a task is in flight, start it again: the
        execution completes, and the new API shows every task and the whole context, with the old token."""
        gate = threading.Event()
        loopback.route("/slow", handler=gated(gate, Reply(json={"rows": 3})))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api_process = processes.start_api(settings, port)
        try:
            await wait_http_ready(api_process, f"{base_url}/readyz")
            async with (
                running_worker(temporal_env.client, settings, identity="restart-worker"),
                server_client(base_url, timeout=30) as http,
            ):
                api = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
                definition = await api.define(
                    "api-restart",
                    [
                        {
                            "id": "fetch",
                            "name": "fetch",
                            "type": "http",
                            "input": {"url": loopback.url_for("/slow")},
                        },
                        {
                            "id": "nap",
                            "name": "nap",
                            "type": "sleep",
                            "input": {"seconds": 0.5},
                            "dependencies": ["fetch"],
                        },
                        {"id": "report", "name": "report", "dependencies": ["nap"]},
                        {"id": "side", "name": "side"},
                    ],
                    [{"id": "fetched", "name": "Fetched", "requiredTasks": ["fetch"]}],
                )
                execution = await api.start(definition, {"customer": "acme", "items": [1, 2]})
                await loopback.wait_for_requests_async(1, "/slow", timeout=30)
                await api.wait_task(execution["id"], "side", ["COMPLETED"], timeout=30)

                api_process.terminate()
                # A graceful stop (uvicorn re-raises the SIGTERM it handled, once it has shut down).
                assert api_process.returncode in (0, -15), api_process.describe()
                assert "Application shutdown complete" in api_process.log_text()
                with pytest.raises(httpx.ConnectError):
                    await http.get("/healthz")

                api_process.start()  # same port, same settings
                await wait_http_ready(api_process, f"{base_url}/readyz")
                during = await api.execution(execution["id"])  # the token from before the restart
                assert during["status"] == "RUNNING"
                assert task_of(during, "fetch")["status"] == "RUNNING"  # type: ignore[index]

                gate.set()
                final = await api.wait_status(execution["id"], timeout=60)
                tasks = (
                    await http.get(f"/api/executions/{execution['id']}/tasks", headers=api.headers)
                ).json()
                progress = await api.progress(execution["id"])
        finally:
            gate.set()

        assert final["status"] == "COMPLETED", final
        assert sorted(t["taskDefinitionId"] for t in final["taskExecutions"]) == [
            "fetch",
            "nap",
            "report",
            "side",
        ]
        assert all(t["status"] == "COMPLETED" and t["attempts"] == 1 for t in final["taskExecutions"]), final
        assert final["context"]["data"] == {
            "customer": "acme",
            "items": [1, 2],
            "fetch-result": {
                "status": 200,
                "headers": final["context"]["data"]["fetch-result"]["headers"],
                "body": {"rows": 3},
            },
            "nap-result": {"sleptSeconds": 0.5},
            "report-result": "success",
            "side-result": "success",
        }
        assert final["context"]["version"] == 5
        assert len(tasks) == 4
        assert progress["completedTasks"] == progress["totalTasks"] == 4
        assert all(m["achieved"] for m in progress["milestones"]), progress["milestones"]
        assert len(loopback.requests_to("/slow")) == 1


# --- Temporal restarts mid-execution -----------------------------------------------------------


class TestTemporalRestarted:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_running_execution_resumes(
        self, database_url: str, tmp_path: Path, loopback: LoopbackServer, processes: ProcessSet
    ) -> None:
        """SIGTERM a dev server of this test's own while an execution sleeps, start it again on the same
        data file and port: the worker (a real `python -m worker`) reconnects and the execution completes."""
        temporal, client, address = await processes.start_own_temporal(tmp_path / "temporal")
        settings = make_settings(
            database_url,
            tmp_path,
            temporal_address=address,
            workflow_id_prefix="restart",
            task_heartbeat_timeout_seconds=3,
            inspect_after_seconds=1,
        )
        loopback.route("/ping", json={"pong": True})
        async with in_process_api(settings) as api:  # migrates the database before the worker starts
            worker = processes.start_worker(settings, identity="survivor")
            await wait_worker_polling(client, settings.system_task_queue, "survivor", worker, workflows=True)
            definition = await api.define(
                "temporal-restart",
                [
                    {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 4}},
                    {
                        "id": "ping",
                        "name": "ping",
                        "type": "http",
                        "input": {"url": loopback.url_for("/ping")},
                        "dependencies": ["nap"],
                    },
                    {"id": "done", "name": "done", "dependencies": ["ping"]},
                ],
            )
            execution = await api.start(definition, {"run": "before the restart"})
            await api.wait_task(execution["id"], "nap", ["WAITING"], timeout=30)
            waiting_seen = time.monotonic()
            temporal.terminate()
            assert not temporal.alive
            # The server went down with the 4 s timer still pending.
            assert time.monotonic() - waiting_seen < 3.5
            during = await api.execution(execution["id"])  # the read model answers while Temporal is down
            assert during["status"] == "RUNNING"
            assert task_of(during, "nap")["status"] == "WAITING"  # type: ignore[index]

            temporal.start()  # same data file, same port
            await wait_temporal_ready(temporal, address)

            final = await api.wait_status(execution["id"], timeout=90)
            worker.check_alive()

        assert final["status"] == "COMPLETED", final
        assert [t["status"] for t in final["taskExecutions"]] == ["COMPLETED"] * 3
        assert final["context"]["data"] == {
            "run": "before the restart",
            "nap-result": {"sleptSeconds": 4},
            "ping-result": final["context"]["data"]["ping-result"],
            "done-result": "success",
        }
        assert final["context"]["data"]["ping-result"]["body"] == {"pong": True}
        # One run from start to end: the restart did not make a second one.
        wid = workflow_id("restart", definition, execution["id"])
        runs = [w async for w in client.list_workflows(f'WorkflowId = "{wid}"')]
        assert [r.status.name for r in runs] == ["COMPLETED"]


# --- cancel reaches an HTTP request in flight ----------------------------------------------------


class HangingServer:
    """A raw HTTP endpoint on loopback that never answers, and notices when the client hangs up."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.received = asyncio.Event()
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/hang"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            self.received.set()
            # No answer, ever: read until the client closes its end.
            while await reader.read(1024):
                pass
            self.closed_at = time.monotonic()
            self.closed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_at = time.monotonic()
            self.closed.set()
        finally:
            writer.close()


class TestCancelDuringHttpTask:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_request_is_aborted_and_task_cancelled(
        self, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """Cancel while an `http` task waits for its answer: the connection is closed, the task and the
        execution are CANCELLED, and the cancel's answer already says so."""
        async with (
            HangingServer() as server,
            running_worker(temporal_env.client, settings, identity="cancel-worker"),
        ):
            definition = await api.define(
                "cancel-http",
                [
                    {
                        "id": "call",
                        "name": "call",
                        "type": "http",
                        "input": {"url": server.url, "timeoutSeconds": 300},
                    },
                    {"id": "after", "name": "after", "dependencies": ["call"]},
                    {"id": "quick", "name": "quick"},
                ],
            )
            execution = await api.start(definition)
            await asyncio.wait_for(server.received.wait(), 30)
            await api.wait_task(execution["id"], "quick", ["COMPLETED"], timeout=30)
            assert not server.closed.is_set()

            response = await api.cancel(execution["id"])
            answered_at = time.monotonic()
            assert response.status_code == 200, response.text
            answer = response.json()
            # The in-flight request is aborted (cancellation reaches the activity through its heartbeat).
            await asyncio.wait_for(server.closed.wait(), 15)
            stored = await api.execution(execution["id"])
            history = await temporal_env.client.get_workflow_handle(
                workflow_id(settings.workflow_id_prefix, definition, execution["id"])
            ).fetch_history()

        assert answer["status"] == "CANCELLED", answer
        assert answer["endTime"] is not None
        assert task_of(answer, "call")["status"] == "CANCELLED"  # type: ignore[index]
        assert task_of(answer, "call")["endTime"] is not None  # type: ignore[index]
        assert task_of(answer, "quick")["status"] == "COMPLETED"  # type: ignore[index]
        after = task_of(answer, "after")  # never started: no task execution (as in the spec), or CANCELLED
        assert after is None or after["status"] == "CANCELLED", after
        assert stored["status"] == "CANCELLED"
        assert {t["taskDefinitionId"]: t["status"] for t in stored["taskExecutions"]} == {
            t["taskDefinitionId"]: t["status"] for t in answer["taskExecutions"]
        }
        assert len(server.requests) == 1  # aborted, not retried
        assert server.closed_at is not None and server.closed_at - answered_at < 15
        types = [e.event_type for e in history.events]
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in types
        assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED


# --- the database goes away under the read model -----------------------------------------------


@contextlib.contextmanager
def database_unavailable(database_url: str) -> Iterator[None]:
    """No new connection to the database, and every open one cut, until the block ends."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


#: The outage: long enough for the nap to end, for Temporal to retry the failed workflow task a
#: few times, and past the 8 s (80 % of the workflow-task timeout) after which the SDK would
#: heartbeat a workflow task held open by a local activity.
OUTAGE_SECONDS = 10


async def event_log(settings: Settings, execution_id: str) -> tuple[ExecutionRow, list[ExecutionEventRow]]:
    """The execution row and its event log, read straight from the database."""
    engine = create_engine(settings)
    try:
        async with session_factory(engine)() as session:
            row = await session.get(ExecutionRow, int(execution_id))
            events = list(
                await session.exec(
                    select(ExecutionEventRow)
                    .where(ExecutionEventRow.execution_id == int(execution_id))
                    .order_by(col(ExecutionEventRow.seq))
                )
            )
    finally:
        await engine.dispose()
    assert row is not None
    return row, events


class TestDatabaseDown:
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    async def test_the_dag_waits_without_growing_its_history_then_catches_up(
        self, database_url: str, settings: Settings, api: ApiClient, temporal_env: WorkflowEnvironment
    ) -> None:
        """While PostgreSQL refuses connections, the workflow task that would write the nap's end
        fails and Temporal retries it: nothing new is scheduled, and the history does not grow
        however long the outage lasts (no heartbeats, no retries recorded). Once the
        database is back the execution completes and the event log has every sequence number once,
        in order."""
        async with running_worker(temporal_env.client, settings, identity="db-worker"):
            definition = await api.define(
                "database-down",
                [
                    {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}},
                    {"id": "after", "name": "after", "dependencies": ["nap"]},
                    {"id": "last", "name": "last", "dependencies": ["after"]},
                ],
                [{"id": "napped", "name": "Napped", "requiredTasks": ["nap"]}],
            )
            execution = await api.start(definition, {"db": "down"})
            await api.wait_task(execution["id"], "nap", ["WAITING"], timeout=30)
            handle = temporal_env.client.get_workflow_handle(
                workflow_id(settings.workflow_id_prefix, definition, execution["id"])
            )

            with database_unavailable(database_url):
                began = time.monotonic()
                while True:  # the nap ends after 1 s; the workflow task writing it fails
                    history = await handle.fetch_history()
                    failures = [
                        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
                    ]
                    if failures or time.monotonic() - began > OUTAGE_SECONDS:
                        break
                    await asyncio.sleep(0.2)
                assert failures, "the workflow task that cannot write fails"
                message = failures[0].workflow_task_failed_event_attributes.failure.message
                assert "read model could not be written" in message, message
                length = len(history.events)
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
                history = await handle.fetch_history()
                types = [e.event_type for e in history.events]
                assert EventType.EVENT_TYPE_TIMER_FIRED in types  # the nap is over...
                assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in types  # ...but its dependent waits
                # Temporal records a failure or two (the second as the task leaves the worker's
                # sticky queue: scheduled, started, failed), then retries without recording
                # anything. A busy machine may take the first look above in the middle of that
                # second cycle (seen: its failure, then the next attempt's scheduled and started):
                # what is added is workflow-task events of one cycle at most, never more failures.
                added = types[length:]
                workflow_task_events = {
                    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
                }
                assert set(added) <= workflow_task_events and len(added) <= 3, (
                    f"retries of the failed workflow task add nothing else: {added}"
                )
                assert 1 <= types.count(EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED) <= 2

            final = await api.wait_status(execution["id"], timeout=60)

        assert final["status"] == "COMPLETED", (final["error"], final["taskExecutions"])
        assert [t["status"] for t in final["taskExecutions"]] == ["COMPLETED"] * 3
        assert set(final["context"]["data"]) == {"db", "nap-result", "after-result", "last-result"}
        row, events = await event_log(settings, execution["id"])
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1)), seqs
        assert row.last_seq == len(events)
        assert sorted(events, key=lambda e: e.id or 0) == events  # written in sequence order
        kinds = [e.type for e in events]
        assert kinds[0] == "workflow.execution.started"
        assert kinds[-1] == "workflow.execution.completed", kinds
        assert kinds.count("task.execution.completed") == 3
        assert kinds.count("synchronization.point.reached") == 1


# --- a worker asked to stop finishes what it runs --------------------------------------------


class TestWorkerStopped:
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    async def test_sigterm_lets_the_running_task_finish(
        self,
        settings: Settings,
        api: ApiClient,
        temporal_env: WorkflowEnvironment,
        loopback: LoopbackServer,
        processes: ProcessSet,
    ) -> None:
        """SIGTERM while a task runs: the worker stops polling, lets the task finish, exits 0;
        the task completes on its first attempt, on that worker."""
        gate = threading.Event()
        loopback.route("/work", handler=gated(gate, Reply(json={"done": True})))
        queue = settings.default_task_queue
        async with running_worker(
            temporal_env.client, settings, "--queue", settings.system_task_queue, identity="system"
        ):
            worker = processes.start_worker(
                settings, "--queue", queue, "--graceful-shutdown", "30", identity="leaving"
            )
            await wait_worker_polling(temporal_env.client, queue, "leaving", worker)
            definition = await api.define(
                "graceful",
                [{"id": "call", "name": "call", "type": "http", "input": {"url": loopback.url_for("/work")}}],
            )
            execution = await api.start(definition, {})
            await loopback.wait_for_requests_async(1, "/work", timeout=30)

            worker.signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert worker.alive, "the worker waits for its running task"
            gate.set()
            assert await asyncio.to_thread(worker.wait, 30) == 0, worker.log_tail()

            final = await api.wait_status(execution["id"], timeout=30)
        assert final["status"] == "COMPLETED", final
        call = task_of(final, "call")
        assert call is not None and call["attempts"] == 1 and call["resources"]["worker"] == "leaving"
        assert len(loopback.requests_to("/work")) == 1
        assert "worker stopped" in worker.log_text()
