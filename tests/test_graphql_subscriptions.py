"""GraphQL subscriptions over WebSocket, against real server processes.

Per database (SQLite file, PostgreSQL) the module starts a stack of real processes: two API
servers (`python -m server`, A and B) on the same database and the session's Temporal dev server,
and one worker (`python -m worker`). Executions are started and driven through A; subscribers
listen on B (so every test here is also a cross-replica test), over both WebSocket protocols,
with the real client of tests/graphql_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio

from tests.conftest import ADMIN_PASSWORD, JWT_SECRET, POSTGRES_ADMIN_URL, make_settings, temporal_address
from tests.graphql_client import (
    LEGACY_WS,
    PROTOCOLS,
    TRANSPORT_WS,
    ConnectionRejected,
    GraphQLWebSocket,
    bearer,
    data_of,
    error_of,
    expired_token,
    gql,
)
from tests.processes import (
    ApiClient,
    free_port,
    running_processes,
    server_client,
    task_of,
    wait_http_ready,
    wait_worker_polling,
)

pytestmark = pytest.mark.slow

# --- the API reference's subscription documents, verbatim -------------------------------------

WORKFLOW_EXECUTION_UPDATES = """
subscription WorkflowExecutionUpdates($id: ID!) {
  workflowExecutionUpdated(id: $id) {
    id
    status
    startTime
    endTime
    taskExecutions {
      id
      taskDefinitionId
      status
      startTime
      endTime
      attempts
      error
    }
  }
}
"""

TASK_EXECUTION_UPDATES = """
subscription TaskExecutionUpdates($workflowExecutionId: ID!) {
  taskExecutionUpdated(workflowExecutionId: $workflowExecutionId) {
    id
    taskDefinitionId
    status
    startTime
    endTime
    attempts
    error
  }
}
"""

PROGRESS_REPORT_UPDATES = """
subscription ProgressReportUpdates($workflowExecutionId: ID!) {
  progressReportUpdated(workflowExecutionId: $workflowExecutionId) {
    id
    workflowExecutionId
    completedTasks
    totalTasks
    estimatedCompletion
    blockers {
      id
      taskExecutionId
      description
      createdAt
      resolvedAt
    }
    milestones {
      id
      name
      description
      achieved
      achievedAt
    }
  }
}
"""

# --- with the extension fields that order them ------------------------------------------------------

EXECUTION_WITH_SEQUENCE = """subscription($id: ID!) { workflowExecutionUpdated(id: $id) {
  id status sequence endTime taskExecutions { id taskDefinitionId status attempts } } }"""
TASKS_WITH_SEQUENCE = """subscription($id: ID!, $after: Int) { taskExecutionUpdated(workflowExecutionId: $id, afterSequence: $after) {
  id taskDefinitionId status attempts sequence } }"""
EVENTS = """subscription($id: ID!, $after: Int! = 0) { executionEvents(workflowExecutionId: $id, afterSequence: $after) {
  sequence type createdAt data } }"""

CREATE = "mutation($input: CreateWorkflowDefinitionInput!) { createWorkflowDefinition(input: $input) { id } }"
START = (
    "mutation($input: StartWorkflowExecutionInput!) { startWorkflowExecution(input: $input) { id status } }"
)
COMPLETE = "mutation($id: ID!, $output: JSON) { completeTask(id: $id, output: $output) { id status } }"

#: An approval first: the execution waits (a stable state) until the test approves it.
GATED = [
    {"id": "gate", "name": "gate", "type": "approval"},
    {"id": "a", "name": "a", "dependencies": ["gate"]},
    {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}, "dependencies": ["a"]},
    {"id": "c", "name": "c", "dependencies": ["nap"]},
]
CHAIN = [
    {"id": "a", "name": "a"},
    {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}, "dependencies": ["a"]},
    {"id": "c", "name": "c", "dependencies": ["nap"]},
]

#: How far along a task status is: a task never moves back (a retry aside).
TASK_RANK = {"PENDING": 0, "RUNNING": 1, "WAITING": 1, "COMPLETED": 2, "FAILED": 2, "CANCELLED": 2}


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class Stack:
    """Two API servers (A, B) on one database, a worker, and a client of A for driving executions."""

    kind: str
    database_url: str
    url_a: str
    url_b: str
    http: httpx.AsyncClient  # server A
    operator: ApiClient  # REST on A
    tokens: dict[str, str]

    @property
    def ws_a(self) -> str:
        return self.url_a.replace("http://", "ws://") + "/graphql"

    @property
    def ws_b(self) -> str:
        return self.url_b.replace("http://", "ws://") + "/graphql"

    @property
    def operator_headers(self) -> dict[str, str]:
        return bearer(self.tokens["operator"])

    async def define(self, tasks: list[dict[str, Any]], name: str = "subscribed") -> str:
        result = await gql(
            self.http, CREATE, {"input": {"name": name, "tasks": tasks}}, self.operator_headers
        )
        return data_of(result)["createWorkflowDefinition"]["id"]

    async def start(self, tasks: list[dict[str, Any]], **extra: Any) -> str:
        """Start an execution through server A's GraphQL; returns its id."""
        definition_id = await self.define(tasks)
        result = await gql(
            self.http,
            START,
            {"input": {"workflowDefinitionId": definition_id, **extra}},
            self.operator_headers,
        )
        started = data_of(result)["startWorkflowExecution"]
        assert started["status"] == "RUNNING"
        return started["id"]

    async def waiting(self, execution_id: str, task_id: str = "gate") -> dict[str, Any]:
        """The execution (REST v2) once `task_id` waits, and the log has settled after it."""
        body = await self.operator.wait_task(execution_id, task_id, ["WAITING"], timeout=30)
        await self.settled(execution_id)
        return body

    async def settled(self, execution_id: str, quiet: float = 0.3) -> None:
        """Until the execution's event log has not grown for `quiet` seconds."""
        last, since = await self.last_sequence(execution_id), time.monotonic()
        while time.monotonic() - since < quiet:
            await asyncio.sleep(0.05)
            now = await self.last_sequence(execution_id)
            if now != last:
                last, since = now, time.monotonic()

    async def last_sequence(self, execution_id: str) -> int:
        query = "query($id: ID!) { workflowExecution(id: $id) { sequence } }"
        return data_of(await gql(self.http, query, {"id": execution_id}, self.operator_headers))[
            "workflowExecution"
        ]["sequence"]

    async def approve(self, execution_id: str, task_id: str = "gate", output: Any = "ok") -> None:
        task = task_of(await self.operator.execution(execution_id), task_id)
        assert task is not None
        result = await gql(self.http, COMPLETE, {"id": task["id"], "output": output}, self.operator_headers)
        assert data_of(result)["completeTask"]["status"] == "COMPLETED"

    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        """The whole event log, read through executionEvents on server A (once the execution has finished)."""
        async with GraphQLWebSocket.open(self.ws_a, TRANSPORT_WS, token=self.tokens["viewer"]) as ws:
            op = await ws.subscribe(EVENTS, {"id": execution_id})
            return [m["executionEvents"] for m in await ws.collect(op)]


def run_sql(database_url: str, statement: str, *params: Any) -> None:
    """One statement on the test's database, outside the service (to damage data on purpose)."""
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            conn.execute(statement.replace("%s", "?"), params)
            conn.commit()
    else:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(statement, params)


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgresql"], loop_scope="session")
async def stack(request: pytest.FixtureRequest, temporal_env, tmp_path_factory) -> AsyncIterator[Stack]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"graphql-ws-{kind}")
    pg_name = None
    if kind == "sqlite":
        database_url = f"sqlite:///{tmp / 'wfo.db'}"
    else:
        pg_name = f"wfo_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        database_url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{pg_name}"
    unique = uuid.uuid4().hex[:10]
    settings = make_settings(
        database_url,
        tmp,
        temporal_address=temporal_address(temporal_env),
        workflow_id_prefix=f"g{unique}",
        system_task_queue=f"system-{unique}",
        default_task_queue=f"tasks-{unique}",
        task_heartbeat_timeout_seconds=5,
        inspect_after_seconds=5,
        cancel_wait_seconds=20,
        log_level="WARNING",
    )
    try:
        with running_processes(tmp / "logs") as procs:
            port_a, port_b = free_port(), free_port()
            # One at a time: each API migrates the database when it starts.
            api_a = procs.start_api(settings, port_a, name="api-a")
            await wait_http_ready(api_a, f"http://127.0.0.1:{port_a}/healthz")
            api_b = procs.start_api(settings, port_b, name="api-b")
            worker = procs.start_worker(settings, identity=f"worker-{unique}")
            await wait_http_ready(api_b, f"http://127.0.0.1:{port_b}/healthz")
            client = temporal_env.client
            await wait_worker_polling(
                client, settings.system_task_queue, f"worker-{unique}", worker, workflows=True
            )
            await wait_worker_polling(client, settings.default_task_queue, f"worker-{unique}", worker)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port_a}", timeout=60, trust_env=False
            ) as http:
                admin = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
                tokens = {"admin": admin.headers["Authorization"].removeprefix("Bearer ")}
                for username, role in (("olivia", "operator"), ("victor", "viewer")):
                    password = f"{username}-password-123"
                    response = await http.post(
                        "/api/users",
                        json={"username": username, "password": password, "role": role},
                        headers=admin.headers,
                    )
                    assert response.status_code == 201, response.text
                    tokens[role] = (
                        (await ApiClient.login(http, username, password))
                        .headers["Authorization"]
                        .removeprefix("Bearer ")
                    )
                yield Stack(
                    kind=kind,
                    database_url=database_url,
                    url_a=f"http://127.0.0.1:{port_a}",
                    url_b=f"http://127.0.0.1:{port_b}",
                    http=http,
                    operator=ApiClient(http, bearer(tokens["operator"])),
                    tokens=tokens,
                )
            for process in (api_a, api_b, worker):
                process.check_alive()
    finally:
        if pg_name is not None:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


# --- checks ------------------------------------------------------------------------------------------


def assert_tasks_progress(states: list[list[dict[str, Any]]]) -> None:
    """Across successive snapshots of an execution, no task moves back."""
    seen: dict[str, int] = {}
    for tasks in states:
        for task in tasks:
            rank = TASK_RANK[task["status"]]
            assert rank >= seen.get(task["taskDefinitionId"], 0), f"{task} moved back: {states}"
            seen[task["taskDefinitionId"]] = rank


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def task_events(events: list[dict[str, Any]], after: int = 0) -> list[tuple[str, str, int]]:
    return [
        (e["data"]["taskId"], e["data"]["status"], e["sequence"])
        for e in events
        if e["type"].startswith("task.execution.") and e["sequence"] > after
    ]


# --- 1/4. the reference's subscriptions, over both protocols, across replicas ------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestWorkflowExecutionUpdated:
    async def test_spec_document_current_state_then_every_change_until_the_end(
        self, stack: Stack, protocol: str
    ):
        execution_id = await stack.start(GATED)
        now = await stack.waiting(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(
                WORKFLOW_EXECUTION_UPDATES, {"id": execution_id}, "WorkflowExecutionUpdates"
            )
            first = (await ws.next_data(op))["workflowExecutionUpdated"]
            assert first["id"] == execution_id and first["status"] == "RUNNING" and first["endTime"] is None
            assert [(t["taskDefinitionId"], t["status"]) for t in first["taskExecutions"]] == [
                ("gate", "WAITING")
            ]
            assert first["startTime"] == now["startTime"], "the current state comes first"
            await stack.approve(execution_id)
            rest = [m["workflowExecutionUpdated"] for m in await ws.collect(op)]
        updates = [first, *rest]
        statuses = [u["status"] for u in updates]
        assert statuses[-1] == "COMPLETED" and set(statuses[:-1]) == {"RUNNING"}, statuses
        assert_tasks_progress([u["taskExecutions"] for u in updates])
        final = await stack.operator.execution(execution_id)
        last = updates[-1]
        assert last["endTime"] == final["endTime"] and last["startTime"] == final["startTime"]
        assert last["taskExecutions"] == [
            {k: t[k] for k in last["taskExecutions"][0]} for t in final["taskExecutions"]
        ]
        # Every change was seen: nap WAITING shows between a COMPLETED and c starting.
        seen = {(t["taskDefinitionId"], t["status"]) for u in updates for t in u["taskExecutions"]}
        assert {
            ("gate", "WAITING"),
            ("gate", "COMPLETED"),
            ("nap", "WAITING"),
            ("nap", "COMPLETED"),
            ("c", "COMPLETED"),
        } <= seen

    async def test_sequence_grows_with_each_change(self, stack: Stack, protocol: str):
        execution_id = await stack.start(GATED)
        await stack.waiting(execution_id)
        current = await stack.last_sequence(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(EXECUTION_WITH_SEQUENCE, {"id": execution_id})
            first = await ws.next_data(op)
            await stack.approve(execution_id)
            updates = [m["workflowExecutionUpdated"] for m in [first, *await ws.collect(op)]]
        sequences = [u["sequence"] for u in updates]
        assert sequences[0] == current, "the state as of now comes first"
        # Each state is sent once and never older than the last (TestLaggingSubscriber checks strictly).
        # States are re-read per batch of changes, so several events may show as one state; at least the
        # state now, one while nap sleeps (1 s) and the final one.
        assert non_decreasing(sequences) and len(set(sequences)) >= 3, sequences
        events = await stack.events(execution_id)
        assert (
            sequences[-1] == events[-1]["sequence"] and events[-1]["type"] == "workflow.execution.completed"
        )

    async def test_a_finished_execution_gives_its_state_and_completes(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN[:1])
        await stack.operator.wait_status(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(WORKFLOW_EXECUTION_UPDATES, {"id": execution_id})
            updates = await ws.collect(op)
        assert [u["workflowExecutionUpdated"]["status"] for u in updates] == ["COMPLETED"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestTaskExecutionUpdated:
    async def test_spec_document_current_tasks_then_every_task_change(self, stack: Stack, protocol: str):
        execution_id = await stack.start(GATED)
        now = await stack.waiting(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(
                TASK_EXECUTION_UPDATES, {"workflowExecutionId": execution_id}, "TaskExecutionUpdates"
            )
            first = (await ws.next_data(op))["taskExecutionUpdated"]
            gate = task_of(now, "gate")
            assert first == {k: gate[k] for k in first}, "the current task state comes first"
            await stack.approve(execution_id)
            rest = [m["taskExecutionUpdated"] for m in await ws.collect(op)]
        assert [(t["taskDefinitionId"], t["status"]) for t in rest] == [
            ("gate", "COMPLETED"),
            ("a", "RUNNING"),
            ("a", "COMPLETED"),
            ("nap", "WAITING"),
            ("nap", "COMPLETED"),
            ("c", "RUNNING"),
            ("c", "COMPLETED"),
        ]
        final = await stack.operator.execution(execution_id)
        last_of = {t["taskDefinitionId"]: t for t in rest}
        for task in final["taskExecutions"]:
            assert last_of[task["taskDefinitionId"]] == {
                k: task[k] for k in last_of[task["taskDefinitionId"]]
            }

    async def test_matches_the_event_log_in_order(self, stack: Stack, protocol: str):
        execution_id = await stack.start(GATED)
        await stack.waiting(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
            snapshot = (await ws.next_data(op))["taskExecutionUpdated"]
            await stack.approve(execution_id)
            rest = [m["taskExecutionUpdated"] for m in await ws.collect(op)]
            replay_op = await ws.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id, "after": 0})
            replay = [m["taskExecutionUpdated"] for m in await ws.collect(replay_op)]
        events = await stack.events(execution_id)
        assert [(t["taskDefinitionId"], t["status"], t["sequence"]) for t in rest] == task_events(
            events, snapshot["sequence"]
        )
        assert (
            strictly_increasing([t["sequence"] for t in rest]) and rest[0]["sequence"] > snapshot["sequence"]
        )
        # From the start of the log: every task change there ever was.
        assert [(t["taskDefinitionId"], t["status"], t["sequence"]) for t in replay] == task_events(events)
        ids = {t["taskDefinitionId"]: t["id"] for t in rest}
        assert all(t["id"] == ids[t["taskDefinitionId"]] for t in replay), (
            "task execution ids are the rows' ids"
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestProgressReportUpdated:
    async def test_spec_document_until_every_milestone(self, stack: Stack, protocol: str):
        execution_id = await stack.start(GATED)
        await stack.waiting(execution_id)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(
                PROGRESS_REPORT_UPDATES, {"workflowExecutionId": execution_id}, "ProgressReportUpdates"
            )
            first = (await ws.next_data(op))["progressReportUpdated"]
            assert first["id"] == first["workflowExecutionId"] == execution_id
            assert (first["completedTasks"], first["totalTasks"]) == (0, 4)
            assert [(b["description"], b["resolvedAt"]) for b in first["blockers"]] == [
                ("Task gate waits for approval", None)
            ]
            assert [(m["name"], m["achieved"]) for m in first["milestones"]] == [
                ("Initialization", True),
                ("Completion", False),
            ]
            await stack.approve(execution_id)
            rest = [m["progressReportUpdated"] for m in await ws.collect(op)]
        reports = [first, *rest]
        completed = [r["completedTasks"] for r in reports]
        assert completed == sorted(completed) and completed[-1] == 4, completed
        last = reports[-1]
        assert last["blockers"][0]["resolvedAt"] is not None
        assert all(m["achieved"] and m["achievedAt"] for m in last["milestones"])
        rest_progress = await stack.operator.progress(execution_id)
        assert last == rest_progress


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestExecutionEvents:
    async def test_the_whole_log_in_order_then_complete(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN)
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(EVENTS, {"id": execution_id})
            events = [m["executionEvents"] for m in await ws.collect(op)]
            tail_op = await ws.subscribe(EVENTS, {"id": execution_id, "after": 5})
            tail = [m["executionEvents"] for m in await ws.collect(tail_op)]
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "workflow.execution.started"
        assert events[-1]["type"] == "workflow.execution.completed"
        assert tail == events[5:]


# --- 4. two replicas ------------------------------------------------------------------------------------


class TestAcrossReplicas:
    async def test_subscribers_on_both_servers_see_the_same_stream(self, stack: Stack):
        """Started through A's GraphQL before anyone subscribes; B and A stream the same changes."""
        execution_id = await stack.start(CHAIN)
        async with (
            GraphQLWebSocket.open(stack.ws_b, TRANSPORT_WS, token=stack.tokens["viewer"]) as on_b,
            GraphQLWebSocket.open(stack.ws_a, LEGACY_WS, token=stack.tokens["viewer"]) as on_a,
        ):
            op_b = await on_b.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id, "after": 0})
            op_a = await on_a.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id, "after": 0})
            from_b, from_a = await asyncio.gather(on_b.collect(op_b), on_a.collect(op_a))
        assert from_b == from_a
        assert [
            (m["taskExecutionUpdated"]["taskDefinitionId"], m["taskExecutionUpdated"]["status"])
            for m in from_b
        ] == [
            ("a", "RUNNING"),
            ("a", "COMPLETED"),
            ("nap", "WAITING"),
            ("nap", "COMPLETED"),
            ("c", "RUNNING"),
            ("c", "COMPLETED"),
        ]


# --- 3. auth over WebSocket ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestWebSocketAuth:
    async def test_token_in_connection_init(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN[:1])
        async with GraphQLWebSocket.open(
            stack.ws_b, protocol, init_payload={"Authorization": f"Bearer {stack.tokens['viewer']}"}
        ) as ws:
            op = await ws.subscribe(WORKFLOW_EXECUTION_UPDATES, {"id": execution_id})
            assert (await ws.next_data(op))["workflowExecutionUpdated"]["id"] == execution_id

    async def test_token_in_the_handshake_header(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN[:1])
        async with GraphQLWebSocket.open(
            stack.ws_b, protocol, headers=bearer(stack.tokens["viewer"]), init_payload={}
        ) as ws:
            op = await ws.subscribe(WORKFLOW_EXECUTION_UPDATES, {"id": execution_id})
            assert (await ws.next_data(op))["workflowExecutionUpdated"]["id"] == execution_id

    @pytest.mark.parametrize("credentials", ["none", "garbage", "expired", "basic", "bad-header"])
    async def test_without_a_valid_token_the_connection_is_refused(
        self, stack: Stack, protocol: str, credentials: str
    ):
        payload, headers = {
            "none": ({}, {}),
            "garbage": ({"Authorization": "Bearer not-a-jwt"}, {}),
            "expired": ({"Authorization": f"Bearer {expired_token(stack.tokens['admin'], JWT_SECRET)}"}, {}),
            "basic": ({"Authorization": "Basic YWRtaW46YWRtaW4="}, {}),
            "bad-header": ({}, bearer("not-a-jwt")),
        }[credentials]
        async with GraphQLWebSocket.open(stack.ws_b, protocol, headers=headers, init=False) as ws:
            with pytest.raises(ConnectionRejected) as refused:
                await ws.initialize(payload)
            if protocol == TRANSPORT_WS:
                assert refused.value.code == 4403
            else:
                # Legacy protocol: a connection_error with the reason, then the server closes.
                assert refused.value.error["code"] == "UNAUTHENTICATED"
                assert refused.value.error["message"]
                assert refused.value.code == 1011
            assert not [m for m in ws.received if m.get("type") in ("connection_ack", "next", "data")]

    async def test_no_operation_before_connection_init(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN[:1])
        async with GraphQLWebSocket.open(stack.ws_b, protocol, init=False) as ws:
            await ws.subscribe(WORKFLOW_EXECUTION_UPDATES, {"id": execution_id})
            code, _ = await ws.wait_closed()
            assert code == 4401
            assert not [m for m in ws.received if m.get("type") in ("next", "data")]

    async def test_a_refused_connection_carries_no_data(self, stack: Stack, protocol: str):
        """Even a client that ignores the refusal and subscribes at once gets nothing."""
        execution_id = await stack.start(CHAIN[:1])
        async with GraphQLWebSocket.open(stack.ws_b, protocol, init=False) as ws:
            await ws.send({"type": "connection_init", "payload": {"Authorization": "Bearer not-a-jwt"}})
            await ws.subscribe(WORKFLOW_EXECUTION_UPDATES, {"id": execution_id})
            code, _ = await ws.wait_closed()
            assert code in (4403, 1011)
            assert not [m for m in ws.received if m.get("type") in ("next", "data", "connection_ack")], (
                ws.received
            )


# --- 6. errors in subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestSubscriptionErrors:
    @pytest.mark.parametrize(
        "document", [WORKFLOW_EXECUTION_UPDATES, TASK_EXECUTION_UPDATES, PROGRESS_REPORT_UPDATES, EVENTS]
    )
    async def test_unknown_execution_is_not_found(self, stack: Stack, protocol: str, document: str):
        variables = {"id": "424242", "workflowExecutionId": "424242"}
        variables = {k: v for k, v in variables.items() if f"${k}" in document}
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(document, variables)
            message = await ws.receive(op)
            assert message.kind == "next", message
            error_of(message.payload, "NOT_FOUND")
            assert (await ws.receive(op)).kind == "complete"

    async def test_invalid_document_is_an_error_message(self, stack: Stack, protocol: str):
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe("subscription { nope }")
            message = await ws.receive(op)
            assert message.kind == "error" and "nope" in message.payload[0]["message"]
            # The connection stays usable.
            op = await ws.subscribe(EVENTS, {"id": "424242"})
            assert (await ws.receive(op)).kind == "next"

    async def test_unexpected_errors_are_masked(self, stack: Stack, protocol: str):
        execution_id = await stack.start(CHAIN[:1])
        await stack.operator.wait_status(execution_id)
        secret = f"BOGUS-{secrets.token_hex(4)}"
        run_sql(
            stack.database_url, "UPDATE executions SET status = %s WHERE id = %s", secret, int(execution_id)
        )
        try:
            await self.check_masked(stack, protocol, execution_id, secret)
        finally:
            run_sql(
                stack.database_url,
                "UPDATE executions SET status = %s WHERE id = %s",
                "COMPLETED",
                int(execution_id),
            )

    async def check_masked(self, stack: Stack, protocol: str, execution_id: str, secret: str) -> None:
        response = await stack.http.post(
            "/graphql",
            json={
                "query": "query($id: ID!) { workflowExecution(id: $id) { status } }",
                "variables": {"id": execution_id},
            },
            headers=stack.operator_headers,
        )
        assert secret not in response.text and "An unexpected error occurred." in response.text
        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as ws:
            op = await ws.subscribe(
                "subscription($id: ID!) { workflowExecutionUpdated(id: $id) { id status } }",
                {"id": execution_id},
            )
            message = await ws.receive(op)
        raw = json.dumps(message.payload)
        assert secret not in raw and "Traceback" not in raw, raw
        errors = message.payload if message.kind == "error" else message.payload["errors"]
        assert [(e["message"], e.get("extensions", {}).get("code")) for e in errors] == [
            ("An unexpected error occurred.", "INTERNAL_SERVER_ERROR")
        ]


# --- 4. slow clients and reconnects ------------------------------------------------------------------------


HEAVY = "subscription($id: ID!) { workflowExecutionUpdated(id: $id) { status sequence context { data } } }"


def heavy_context() -> dict[str, str]:
    """A context of 300 KB of incompressible text: updates that carry it fill a slow reader's
    socket and the server's buffers after a few."""
    return {"blob": secrets.token_hex(150_000)}


def non_decreasing(values: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestSlowClient:
    async def test_a_client_that_does_not_read_stalls_nobody(self, stack: Stack, protocol: str):
        tasks = [
            {"id": f"t{i}", "name": f"t{i}", "dependencies": [f"t{i - 1}"] if i else []} for i in range(8)
        ]
        tasks.append(
            {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}, "dependencies": ["t7"]}
        )
        context = heavy_context()
        execution_id = await stack.start(tasks, initialContext=context)
        async with GraphQLWebSocket.open(
            stack.ws_b, protocol, token=stack.tokens["viewer"], slow=True
        ) as slow:
            slow_ops = [await slow.subscribe(HEAVY, {"id": execution_id}) for _ in range(3)]
            async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as fast:
                op = await fast.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
                updates = [m["taskExecutionUpdated"] for m in await fast.collect(op, timeout=20)]
                assert updates[-1]["taskDefinitionId"] == "nap" and updates[-1]["status"] == "COMPLETED"
                changes = [u["sequence"] for u in updates if u["sequence"] > updates[0]["sequence"]]
                assert changes and strictly_increasing(changes), updates
                # The server still answers other requests at once.
                async with server_client(stack.url_b) as http_b:
                    probe = await gql(http_b, "{ me { username } }", headers=bearer(stack.tokens["viewer"]))
                assert data_of(probe) == {"me": {"username": "victor"}}
            unread = [m for m in slow.received if m.get("type") not in ("connection_ack", "ka")]
            assert not unread, "the slow client has read no result so far"
            # The slow client then reads at its pace and misses nothing: it ends with the final state.
            final_sequence = (await stack.events(execution_id))[-1]["sequence"]
            for slow_op in slow_ops:
                results = [m["workflowExecutionUpdated"] for m in await slow.collect(slow_op, timeout=30)]
                assert results[-1]["status"] == "COMPLETED" and results[-1]["sequence"] == final_sequence
                assert non_decreasing([r["sequence"] for r in results])
                assert all(json.loads(r["context"]["data"])["blob"] == context["blob"] for r in results)


class TestLaggingSubscriber:
    """Protocol-independent (the watcher's doing): one protocol is enough."""

    async def test_a_lagging_subscriber_gets_each_state_once(self, stack: Stack):
        protocol = TRANSPORT_WS
        # 500 parallel tasks write about 1,500 events while the reader, its buffers full of ~1 MB
        # updates (every task, six times over) after the first few, does not read: it falls more
        # than one batch (500 events) behind.
        tasks = [{"id": f"t{i}", "name": f"t{i}"} for i in range(500)]
        lists = " ".join(
            f"l{i}: taskExecutions {{ id taskDefinitionId status startTime endTime attempts error }}"
            for i in range(6)
        )
        document = f"subscription($id: ID!) {{ workflowExecutionUpdated(id: $id) {{ sequence {lists} }} }}"
        execution_id = await stack.start(tasks)
        async with GraphQLWebSocket.open(
            stack.ws_b, protocol, token=stack.tokens["viewer"], slow=True
        ) as slow:
            ops = [await slow.subscribe(document, {"id": execution_id}) for _ in range(4)]
            await stack.operator.wait_status(execution_id, timeout=60)
            received = [
                [m["workflowExecutionUpdated"]["sequence"] for m in await slow.collect(op, timeout=60)]
                for op in ops
            ]
        events = await stack.events(execution_id)
        assert len(events) > 1000
        for sequences in received:
            assert sequences[-1] == events[-1]["sequence"]
            assert non_decreasing(sequences)
        assert all(strictly_increasing(sequences) for sequences in received), received


@pytest.mark.parametrize("protocol", PROTOCOLS)
class TestReconnect:
    async def test_resuming_after_the_last_sequence_misses_nothing(self, stack: Stack, protocol: str):
        tasks = [*GATED, {"id": "d", "name": "d", "dependencies": ["c"]}]
        execution_id = await stack.start(tasks)
        await stack.waiting(execution_id)

        def key(message: dict[str, Any]) -> tuple:
            t = message["taskExecutionUpdated"]
            return (t["id"], t["taskDefinitionId"], t["status"], t["attempts"], t["sequence"])

        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as full:
            full_op = await full.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
            async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as first:
                first_op = await first.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
                before = [await first.next_data(first_op)]
                await stack.approve(execution_id)
                before += [await first.next_data(first_op) for _ in range(3)]
            # Disconnected mid-stream (nap still sleeps); reconnect, on the other replica this time.
            last = before[-1]["taskExecutionUpdated"]["sequence"]
            async with GraphQLWebSocket.open(stack.ws_a, protocol, token=stack.tokens["viewer"]) as again:
                again_op = await again.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id, "after": last})
                after = await again.collect(again_op)
            everything = await full.collect(full_op)
        assert after, "the reconnect happened before the end"
        assert [key(m) for m in before + after] == [key(m) for m in everything]
        assert everything[-1]["taskExecutionUpdated"]["taskDefinitionId"] == "d"

    async def test_resuming_in_the_middle_of_the_first_snapshot_misses_nothing(
        self, stack: Stack, protocol: str
    ):
        tasks = [{"id": f"g{i}", "name": f"g{i}", "type": "approval"} for i in range(3)]
        execution_id = await stack.start(tasks)
        for i in range(3):
            await stack.operator.wait_task(execution_id, f"g{i}", ["WAITING"])
        await stack.settled(execution_id)

        def key(message: dict[str, Any]) -> tuple:
            t = message["taskExecutionUpdated"]
            return (t["taskDefinitionId"], t["status"])

        async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as full:
            full_op = await full.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
            async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as first:
                first_op = await first.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id})
                before = [await first.next_data(first_op)]
            last = before[-1]["taskExecutionUpdated"]["sequence"]
            async with GraphQLWebSocket.open(stack.ws_b, protocol, token=stack.tokens["viewer"]) as again:
                again_op = await again.subscribe(TASKS_WITH_SEQUENCE, {"id": execution_id, "after": last})
                for i in range(3):
                    await stack.approve(execution_id, f"g{i}")
                after = await again.collect(again_op)
            everything = await full.collect(full_op)
        assert [key(m) for m in before + after] == [key(m) for m in everything]
