"""GraphQL over HTTP (/graphql): the API reference's documents as written, the rest of the schema,
one service layer with REST, auth, error codes, protection limits and DataLoaders.

Real parts throughout: the app with its lifespan on SQLite and PostgreSQL, the Temporal dev
server and a real worker where executions run. Subscriptions (WebSocket, several server
processes) are in test_graphql_subscriptions.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import JWT_SECRET, problem
from tests.graphql_client import bearer, data_of, error_of, expired_token, foreign_token, gql, token_of


@pytest.fixture
def settings(engine_settings):
    # GraphiQL and introspection, as in dev mode: outside it both are off unless switched on
    # (tests/test_hardening_graphql.py checks that default).
    return engine_settings.model_copy(update={"graphql_introspection": True, "api_docs": True})


# --- the API reference's documents, verbatim ------------------------------------------------

GET_WORKFLOW_DEFINITION = """
query GetWorkflowDefinition($id: ID!) {
  workflowDefinition(id: $id) {
    id
    name
    description
    version
    createdAt
    updatedAt
    tasks {
      id
      name
      description
      dependencies
    }
    synchronizationPoints {
      id
      name
      description
      requiredTasks
    }
  }
}
"""

GET_WORKFLOW_EXECUTION = """
query GetWorkflowExecution($id: ID!) {
  workflowExecution(id: $id) {
    id
    workflowDefinitionId
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
    context {
      id
      data
      version
      createdAt
      updatedAt
    }
  }
}
"""

GET_PROGRESS_REPORT = """
query GetProgressReport($id: ID!) {
  progressReport(workflowExecutionId: $id) {
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

CREATE_WORKFLOW_DEFINITION = """
mutation CreateWorkflowDefinition($input: CreateWorkflowDefinitionInput!) {
  createWorkflowDefinition(input: $input) {
    id
    name
    description
    version
    createdAt
    updatedAt
    tasks {
      id
      name
      description
      dependencies
    }
    synchronizationPoints {
      id
      name
      description
      requiredTasks
    }
  }
}
"""

CREATE_WORKFLOW_DEFINITION_VARIABLES = json.loads("""
{
  "input": {
    "name": "Sample Workflow",
    "description": "A sample workflow definition",
    "tasks": [
      {
        "name": "Task 1",
        "description": "First task"
      },
      {
        "name": "Task 2",
        "description": "Second task",
        "dependencies": ["task-1"]
      }
    ],
    "synchronizationPoints": [
      {
        "name": "All Tasks Completed",
        "description": "Wait for all tasks to complete",
        "requiredTasks": ["task-1", "task-2"]
      }
    ]
  }
}
""")

START_WORKFLOW_EXECUTION = """
mutation StartWorkflowExecution($input: StartWorkflowExecutionInput!) {
  startWorkflowExecution(input: $input) {
    id
    workflowDefinitionId
    status
    startTime
    endTime
    context {
      id
      data
      version
      createdAt
      updatedAt
    }
  }
}
"""

START_WORKFLOW_EXECUTION_VARIABLES = json.loads("""
{
  "input": {
    "workflowDefinitionId": "1",
    "initialContext": "{\\"key\\":\\"value\\"}"
  }
}
""")

SPEC_ID_VARIABLES = json.loads("""
{
  "id": "1"
}
""")

# --- the rest of the schema -------------------------------------------------------------------

DEFINITION_FIELDS = "id name version tasks { id name type dependencies input timeout } synchronizationPoints { id requiredTasks }"
EXECUTION_FIELDS = """id workflowDefinitionId workflowDefinitionVersion status startTime endTime error sequence
    taskExecutions { id taskDefinitionId status startTime endTime attempts error }
    context { id data version }"""
TASK_FIELDS = "id taskDefinitionId status startTime endTime attempts error"

CREATE = f"mutation($input: CreateWorkflowDefinitionInput!) {{ createWorkflowDefinition(input: $input) {{ {DEFINITION_FIELDS} }} }}"
UPDATE = f"mutation($id: ID!, $input: CreateWorkflowDefinitionInput!) {{ updateWorkflowDefinition(id: $id, input: $input) {{ {DEFINITION_FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteWorkflowDefinition(id: $id) }"
START = f"mutation($input: StartWorkflowExecutionInput!) {{ startWorkflowExecution(input: $input) {{ {EXECUTION_FIELDS} }} }}"
CANCEL = f"mutation($id: ID!) {{ cancelWorkflowExecution(id: $id) {{ {EXECUTION_FIELDS} }} }}"
RETRY = f"mutation($id: ID!) {{ retryTaskExecution(id: $id) {{ {TASK_FIELDS} }} }}"
COMPLETE = (
    f"mutation($id: ID!, $output: JSON) {{ completeTask(id: $id, output: $output) {{ {TASK_FIELDS} }} }}"
)
REJECT = f"mutation($id: ID!, $reason: String) {{ rejectTask(id: $id, reason: $reason) {{ {TASK_FIELDS} }} }}"
EXECUTION = f"query($id: ID!) {{ workflowExecution(id: $id) {{ {EXECUTION_FIELDS} }} }}"
DEFINITIONS = f"query($limit: Int!, $offset: Int!) {{ workflowDefinitions(limit: $limit, offset: $offset) {{ total limit offset items {{ {DEFINITION_FIELDS} }} }} }}"
EXECUTIONS = """query($limit: Int! = 10, $offset: Int! = 0, $status: ExecutionStatus, $def: ID) {
  workflowExecutions(limit: $limit, offset: $offset, status: $status, workflowDefinitionId: $def) {
    total limit offset items { id workflowDefinitionId status }
  }
}"""
TASKS = f"""query($id: ID!, $status: TaskStatus, $limit: Int! = 10, $offset: Int! = 0) {{
  taskExecutions(workflowExecutionId: $id, status: $status, limit: $limit, offset: $offset) {{
    total limit offset items {{ {TASK_FIELDS} }}
  }}
}}"""
VERSIONS = "query($id: ID!) { workflowDefinitionVersions(id: $id) { total limit offset items { version name description taskCount } } }"
VERSION = f"query($id: ID!, $v: String!) {{ workflowDefinitionVersion(id: $id, version: $v) {{ {DEFINITION_FIELDS} }} }}"
ME = "{ me { id username role active } }"

FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


async def create_definition(
    client: httpx.AsyncClient, headers: dict[str, str], tasks: list[dict], name: str = "test", **extra: Any
) -> str:
    result = await gql(client, CREATE, {"input": {"name": name, "tasks": tasks, **extra}}, headers)
    return data_of(result)["createWorkflowDefinition"]["id"]


async def start_execution(
    client: httpx.AsyncClient, headers: dict[str, str], definition_id: str, **extra: Any
) -> dict:
    result = await gql(client, START, {"input": {"workflowDefinitionId": definition_id, **extra}}, headers)
    return data_of(result)["startWorkflowExecution"]


async def execution(client: httpx.AsyncClient, headers: dict[str, str], execution_id: str) -> dict:
    return data_of(await gql(client, EXECUTION, {"id": execution_id}, headers))["workflowExecution"]


async def wait_execution(
    client, headers, execution_id: str, predicate, what: str, timeout: float = 30
) -> dict:
    """Poll the execution over GraphQL until `predicate` holds."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = await execution(client, headers, execution_id)
        if predicate(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"execution {execution_id}: {what} not seen in {timeout}s; last: {json.dumps(body, indent=1)}"
    )


async def finished(client, headers, execution_id: str) -> dict:
    return await wait_execution(client, headers, execution_id, lambda b: b["status"] in FINISHED, "the end")


def task_of(body: dict, task_id: str) -> dict | None:
    return next((t for t in body["taskExecutions"] if t["taskDefinitionId"] == task_id), None)


async def waiting(client, headers, execution_id: str, task_id: str) -> dict:
    """The task execution once it is WAITING (an approval)."""
    body = await wait_execution(
        client,
        headers,
        execution_id,
        lambda b: (task_of(b, task_id) or {}).get("status") == "WAITING",
        f"{task_id} WAITING",
    )
    return task_of(body, task_id)  # type: ignore[return-value]


def only(d: dict, keys) -> dict:
    return {k: d[k] for k in keys}


# --- 1. the API reference's documents ----------------------------------------------------------


class TestSpecDocuments:
    """Each example of the reference's GraphQL section, copied verbatim, answers as documented and
    as REST does for the same object."""

    async def test_create_workflow_definition(self, client, operator):
        result = await gql(client, CREATE_WORKFLOW_DEFINITION, CREATE_WORKFLOW_DEFINITION_VARIABLES, operator)
        created = data_of(result)["createWorkflowDefinition"]
        assert created["id"] == "1"
        assert (
            created["name"] == "Sample Workflow" and created["description"] == "A sample workflow definition"
        )
        assert created["version"] == "1.0.0"
        assert created["createdAt"] == created["updatedAt"] and created["createdAt"].endswith("Z")
        assert created["tasks"] == [
            {"id": "task-1", "name": "Task 1", "description": "First task", "dependencies": []},
            {"id": "task-2", "name": "Task 2", "description": "Second task", "dependencies": ["task-1"]},
        ]
        assert created["synchronizationPoints"] == [
            {
                "id": "sync-1",
                "name": "All Tasks Completed",
                "description": "Wait for all tasks to complete",
                "requiredTasks": ["task-1", "task-2"],
            }
        ]
        rest = (await client.get("/api/workflows/1", headers=operator)).json()
        assert only(rest, ("id", "name", "description", "version", "createdAt", "updatedAt")) == only(
            created, ("id", "name", "description", "version", "createdAt", "updatedAt")
        )
        assert [only(t, ("id", "name", "description", "dependencies")) for t in rest["tasks"]] == created[
            "tasks"
        ]
        assert [
            only(p, ("id", "name", "description", "requiredTasks")) for p in rest["synchronizationPoints"]
        ] == created["synchronizationPoints"]

    async def test_get_workflow_definition(self, client, operator, viewer):
        created = data_of(
            await gql(client, CREATE_WORKFLOW_DEFINITION, CREATE_WORKFLOW_DEFINITION_VARIABLES, operator)
        )
        result = await gql(client, GET_WORKFLOW_DEFINITION, SPEC_ID_VARIABLES, viewer)
        assert data_of(result)["workflowDefinition"] == created["createWorkflowDefinition"]

    async def test_start_execution_then_get_it_and_its_progress(self, client, operator, viewer, worker):
        data_of(await gql(client, CREATE_WORKFLOW_DEFINITION, CREATE_WORKFLOW_DEFINITION_VARIABLES, operator))
        started = data_of(
            await gql(client, START_WORKFLOW_EXECUTION, START_WORKFLOW_EXECUTION_VARIABLES, operator)
        )
        execution_ = started["startWorkflowExecution"]
        assert execution_["id"] == "1" and execution_["workflowDefinitionId"] == "1"
        assert execution_["status"] == "RUNNING" and execution_["endTime"] is None
        assert execution_["context"]["data"] == '{"key":"value"}'
        assert execution_["context"]["version"] == 1 and execution_["context"]["id"] == "1"

        await finished(client, viewer, "1")
        final = data_of(await gql(client, GET_WORKFLOW_EXECUTION, SPEC_ID_VARIABLES, viewer))[
            "workflowExecution"
        ]
        assert final["status"] == "COMPLETED" and final["endTime"] >= final["startTime"]
        assert [
            (t["taskDefinitionId"], t["status"], t["attempts"], t["error"]) for t in final["taskExecutions"]
        ] == [
            ("task-1", "COMPLETED", 1, None),
            ("task-2", "COMPLETED", 1, None),
        ]
        assert json.loads(final["context"]["data"]) == {
            "key": "value",
            "task-1-result": "success",
            "task-2-result": "success",
        }
        assert final["context"]["version"] == 3

        rest = (await client.get("/api/executions/1", headers=viewer)).json()
        for task in rest["taskExecutions"]:
            task.pop("resources")
        assert rest == final, "GraphQL and REST v1 answer the same execution"

        progress = data_of(await gql(client, GET_PROGRESS_REPORT, SPEC_ID_VARIABLES, viewer))[
            "progressReport"
        ]
        assert progress["id"] == "1" and progress["workflowExecutionId"] == "1"
        assert progress["completedTasks"] == progress["totalTasks"] == 2
        assert progress["blockers"] == []
        assert [(m["name"], m["achieved"]) for m in progress["milestones"]] == [
            ("Initialization", True),
            ("All Tasks Completed", True),
            ("Completion", True),
        ]
        assert all(m["achievedAt"] for m in progress["milestones"])
        assert progress["estimatedCompletion"] == final["endTime"]
        assert (await client.get("/api/executions/1/progress", headers=viewer)).json() == progress


class TestGraphiQL:
    async def test_a_browser_gets_graphiql(self, client):
        response = await client.get("/graphql", headers={"Accept": "text/html"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "graphiql" in response.text.lower()

    async def test_queries_work_over_get_but_mutations_do_not(self, client, operator):
        response = await client.get("/graphql", params={"query": "{ me { username } }"}, headers=operator)
        assert response.status_code == 200 and response.json() == {"data": {"me": {"username": "olivia"}}}
        mutation = 'mutation { createWorkflowDefinition(input: {name: "x"}) { id } }'
        response = await client.get("/graphql", params={"query": mutation}, headers=operator)
        assert response.status_code == 400, "a GET (a link, an <img>) never changes anything"
        assert (await client.get("/api/v2/workflows", headers=operator)).json()["total"] == 0

    async def test_a_subscription_over_http_is_told_where_subscriptions_run(self, client, viewer, caplog):
        # It once ran as a query and ended in "An unexpected error occurred." (a null for a
        # non-null field), logged as an unhandled error; GraphiQL sends one so when it cannot
        # tell a document is a subscription.
        subscription = 'subscription { workflowExecutionUpdated(id: "1") { id status } }'
        for method in ("POST", "GET"):
            if method == "POST":
                result = await gql(client, subscription, headers=viewer)
            else:
                response = await client.get("/graphql", params={"query": subscription}, headers=viewer)
                result = response.json()
            error = error_of(result, "BAD_REQUEST")
            assert "served over WebSocket" in error["message"], error
        assert "unhandled error" not in caplog.text


# --- 1. the rest of the schema ------------------------------------------------------------------


class TestMe:
    async def test_me_is_the_caller(self, client, viewer):
        me = data_of(await gql(client, ME, headers=viewer))["me"]
        rest = (await client.get("/api/auth/me", headers=viewer)).json()
        assert me == {"id": str(rest["id"]), "username": "victor", "role": "viewer", "active": True}

    async def test_me_timestamps(self, client, viewer):
        me = data_of(await gql(client, "{ me { createdAt updatedAt } }", headers=viewer))["me"]
        rest = (await client.get("/api/auth/me", headers=viewer)).json()
        assert me == {"createdAt": rest["createdAt"], "updatedAt": rest["updatedAt"]}

    async def test_version_timestamps(self, client, operator):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        query = "query($id: ID!) { workflowDefinitionVersions(id: $id) { items { version createdAt } } }"
        versions = data_of(await gql(client, query, {"id": definition_id}, operator))[
            "workflowDefinitionVersions"
        ]
        rest = (await client.get(f"/api/v2/workflows/{definition_id}/versions", headers=operator)).json()
        assert versions["items"] == [{"version": "1.0.0", "createdAt": rest["items"][0]["createdAt"]}]


class TestDefinitions:
    async def test_list_pages_like_rest(self, client, operator, viewer):
        ids = [await create_definition(client, operator, [{"name": "a"}], name=f"wf{i}") for i in range(3)]
        page = data_of(await gql(client, DEFINITIONS, {"limit": 2, "offset": 1}, viewer))[
            "workflowDefinitions"
        ]
        assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
        assert [d["id"] for d in page["items"]] == ids[1:], "oldest first"
        rest = (await client.get("/api/v2/workflows?limit=2&offset=1", headers=viewer)).json()
        assert [d["id"] for d in rest["items"]] == ids[1:] and rest["total"] == 3
        default = data_of(await gql(client, "{ workflowDefinitions { limit offset total } }", headers=viewer))
        assert default["workflowDefinitions"] == {"limit": 10, "offset": 0, "total": 3}

    async def test_update_stores_a_new_version_and_keeps_the_old_one(self, client, operator, viewer):
        definition_id = await create_definition(client, operator, [{"id": "a", "name": "a"}], name="v1")
        new = {
            "name": "v2",
            "description": "second",
            "tasks": [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "dependencies": ["a"]}],
        }
        updated = data_of(await gql(client, UPDATE, {"id": definition_id, "input": new}, operator))[
            "updateWorkflowDefinition"
        ]
        assert updated["id"] == definition_id and updated["version"] == "1.0.1" and updated["name"] == "v2"
        assert [t["id"] for t in updated["tasks"]] == ["a", "b"]

        versions = data_of(await gql(client, VERSIONS, {"id": definition_id}, viewer))[
            "workflowDefinitionVersions"
        ]
        assert versions["total"] == 2
        assert [(v["version"], v["name"], v["taskCount"]) for v in versions["items"]] == [
            ("1.0.0", "v1", 1),
            ("1.0.1", "v2", 2),
        ]
        rest = (await client.get(f"/api/v2/workflows/{definition_id}/versions", headers=viewer)).json()
        assert [{k: v for k, v in item.items() if k != "createdAt"} for item in rest["items"]] == versions[
            "items"
        ]

        old = data_of(await gql(client, VERSION, {"id": definition_id, "v": "1.0.0"}, viewer))[
            "workflowDefinitionVersion"
        ]
        assert old["version"] == "1.0.0" and old["name"] == "v1" and [t["id"] for t in old["tasks"]] == ["a"]
        current = data_of(
            await gql(
                client,
                "query($id: ID!) { workflowDefinition(id: $id) { version } }",
                {"id": definition_id},
                viewer,
            )
        )
        assert current["workflowDefinition"]["version"] == "1.0.1"
        error = error_of(await gql(client, VERSION, {"id": definition_id, "v": "9.9.9"}, viewer), "NOT_FOUND")
        assert "9.9.9" in error["message"]

    async def test_delete(self, client, operator, viewer):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        assert data_of(await gql(client, DELETE, {"id": definition_id}, operator)) == {
            "deleteWorkflowDefinition": True
        }
        error_of(await gql(client, GET_WORKFLOW_DEFINITION, {"id": definition_id}, viewer), "NOT_FOUND")
        assert (
            data_of(await gql(client, DEFINITIONS, {"limit": 10, "offset": 0}, viewer))[
                "workflowDefinitions"
            ]["total"]
            == 0
        )
        problem(await client.get(f"/api/workflows/{definition_id}", headers=viewer), 404)
        error_of(await gql(client, DELETE, {"id": definition_id}, operator), "NOT_FOUND")

    async def test_extensions_of_the_definition_model(self, client, operator):
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": "http://127.0.0.1:9/x"},
                "timeout": 5,
                "retryPolicy": {"maxRetries": 2, "backoffMultiplier": 3, "maxBackoff": 10},
                "resourceRequirements": {
                    "cpu": 1.5,
                    "memory": 256,
                    "custom": [{"name": "zone", "value": "eu"}],
                },
            },
        ]
        query = """mutation($input: CreateWorkflowDefinitionInput!) { createWorkflowDefinition(input: $input) {
            id tasks { id type input timeout
              retryPolicy { maxAttempts initialInterval backoffCoefficient maximumInterval nonRetryableErrors }
              resourceRequirements { cpu memory storage gpu queue custom { name value } } } } }"""
        created = data_of(await gql(client, query, {"input": {"name": "ext", "tasks": tasks}}, operator))[
            "createWorkflowDefinition"
        ]
        task = created["tasks"][0]
        assert (
            task["type"] == "http"
            and task["input"] == {"url": "http://127.0.0.1:9/x"}
            and task["timeout"] == 5
        )
        assert task["retryPolicy"]["maxAttempts"] == 3 and task["retryPolicy"]["backoffCoefficient"] == 3
        assert task["retryPolicy"]["maximumInterval"] == 10
        assert task["resourceRequirements"]["custom"] == [{"name": "zone", "value": "eu"}]
        rest = (await client.get(f"/api/workflows/{created['id']}", headers=operator)).json()
        assert rest["tasks"][0]["retryPolicy"]["maxAttempts"] == 3
        assert rest["tasks"][0]["resourceRequirements"]["cpu"] == task["resourceRequirements"]["cpu"] == 1.5


class TestExecutions:
    async def test_lists_filter_and_page_like_rest(self, client, operator, viewer, worker):
        ok = await create_definition(
            client, operator, [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "dependencies": ["a"]}]
        )
        gate = await create_definition(client, operator, [{"id": "gate", "name": "gate", "type": "approval"}])
        ids = [(await start_execution(client, operator, ok))["id"] for _ in range(2)]
        rejected = (await start_execution(client, operator, gate))["id"]
        ids.append(rejected)
        approval = await waiting(client, operator, rejected, "gate")
        data_of(await gql(client, REJECT, {"id": approval["id"], "reason": "no"}, operator))
        for execution_id in ids:
            await finished(client, viewer, execution_id)

        cases = [
            ({}, "", list(reversed(ids))),
            ({"status": "FAILED"}, "status=FAILED", [rejected]),
            ({"status": "COMPLETED"}, "status=COMPLETED", list(reversed(ids[:2]))),
            ({"def": ok}, f"workflowDefinitionId={ok}", list(reversed(ids[:2]))),
            ({"def": ok, "limit": 1, "offset": 1}, f"workflowDefinitionId={ok}&limit=1&offset=1", [ids[0]]),
            ({"def": gate, "status": "COMPLETED"}, f"workflowDefinitionId={gate}&status=COMPLETED", []),
            ({"def": "999"}, "workflowDefinitionId=999", []),
        ]
        for variables, params, expected in cases:
            page = data_of(await gql(client, EXECUTIONS, variables, viewer))["workflowExecutions"]
            assert [e["id"] for e in page["items"]] == expected, variables
            rest = (await client.get(f"/api/v2/executions?{params}", headers=viewer)).json()
            assert [e["id"] for e in rest["items"]] == expected, params
            assert (
                page["total"] == rest["total"]
                and page["limit"] == rest["limit"]
                and page["offset"] == rest["offset"]
            )
        listed = data_of(await gql(client, EXECUTIONS, {"status": "FAILED"}, viewer))["workflowExecutions"][
            "items"
        ][0]
        assert listed == {"id": rejected, "workflowDefinitionId": gate, "status": "FAILED"}

    async def test_task_executions_filter_and_page_like_rest(self, client, operator, viewer, worker):
        tasks = [{"id": f"t{i}", "name": f"t{i}"} for i in range(4)] + [
            {"id": "gate", "name": "gate", "type": "approval"}
        ]
        execution_id = (
            await start_execution(client, operator, await create_definition(client, operator, tasks))
        )["id"]
        approval = await waiting(client, operator, execution_id, "gate")
        data_of(await gql(client, REJECT, {"id": approval["id"], "reason": "no"}, operator))
        await finished(client, viewer, execution_id)

        for variables, params in [
            ({}, ""),
            ({"status": "FAILED"}, "status=FAILED"),
            ({"status": "COMPLETED", "limit": 2, "offset": 1}, "status=COMPLETED&limit=2&offset=1"),
            ({"limit": 100}, "limit=100"),
        ]:
            page = data_of(await gql(client, TASKS, {"id": execution_id, **variables}, viewer))[
                "taskExecutions"
            ]
            rest = (
                await client.get(f"/api/v2/executions/{execution_id}/tasks?{params}", headers=viewer)
            ).json()
            for task in rest["items"]:
                task.pop("resources")
            assert page == rest, variables
        failed = data_of(await gql(client, TASKS, {"id": execution_id, "status": "FAILED"}, viewer))[
            "taskExecutions"
        ]
        assert (
            failed["total"] == 1
            and failed["items"][0]["taskDefinitionId"] == "gate"
            and "no" in failed["items"][0]["error"]
        )
        completed = data_of(
            await gql(client, TASKS, {"id": execution_id, "status": "COMPLETED", "limit": 2}, viewer)
        )
        assert completed["taskExecutions"]["total"] == 4 and len(completed["taskExecutions"]["items"]) == 2

    async def test_initial_context_as_an_object_and_idempotency_key(self, client, operator, worker):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        first = await start_execution(
            client, operator, definition_id, initialContext={"n": 1}, idempotencyKey="order-1"
        )
        assert json.loads(first["context"]["data"]) == {"n": 1}
        again = await start_execution(
            client, operator, definition_id, initialContext={"n": 1}, idempotencyKey="order-1"
        )
        assert again["id"] == first["id"]
        other = await gql(
            client,
            START,
            {
                "input": {
                    "workflowDefinitionId": definition_id,
                    "initialContext": {"n": 2},
                    "idempotencyKey": "order-1",
                }
            },
            operator,
        )
        assert "different request" in error_of(other, "BAD_USER_INPUT")["message"]
        assert data_of(await gql(client, EXECUTIONS, {}, operator))["workflowExecutions"]["total"] == 1
        await finished(client, operator, first["id"])


class TestExecutionMutations:
    async def test_cancel_answers_with_the_cancelled_state(self, client, operator, worker):
        tasks = [
            {"id": "done", "name": "done"},
            {"id": "gate", "name": "gate", "type": "approval", "dependencies": ["done"]},
            {"id": "never", "name": "never", "dependencies": ["gate"]},
        ]
        execution_id = (
            await start_execution(client, operator, await create_definition(client, operator, tasks))
        )["id"]
        await waiting(client, operator, execution_id, "gate")
        cancelled = data_of(await gql(client, CANCEL, {"id": execution_id}, operator))[
            "cancelWorkflowExecution"
        ]
        assert cancelled["id"] == execution_id and cancelled["status"] == "CANCELLED" and cancelled["endTime"]
        assert task_of(cancelled, "done")["status"] == "COMPLETED"
        assert task_of(cancelled, "gate")["status"] == "CANCELLED"
        assert task_of(cancelled, "never") is None
        rest = (await client.get(f"/api/executions/{execution_id}", headers=operator)).json()
        assert rest["status"] == "CANCELLED" and rest["endTime"] == cancelled["endTime"]

        again = error_of(await gql(client, CANCEL, {"id": execution_id}, operator), "CONFLICT")
        assert "CANCELLED" in again["message"]
        assert again["extensions"]["status"] == 409

    async def test_reject_then_retry_then_complete(self, client, operator, worker):
        tasks = [
            {"id": "ok", "name": "ok", "type": "approval"},
            {"id": "next", "name": "next", "dependencies": ["ok"]},
        ]
        execution_id = (
            await start_execution(client, operator, await create_definition(client, operator, tasks))
        )["id"]
        approval = await waiting(client, operator, execution_id, "ok")

        rejected = data_of(
            await gql(client, REJECT, {"id": approval["id"], "reason": "over budget"}, operator)
        )["rejectTask"]
        assert (
            rejected["id"] == approval["id"]
            and rejected["status"] == "FAILED"
            and "over budget" in rejected["error"]
        )
        failed = await finished(client, operator, execution_id)
        assert failed["status"] == "FAILED" and task_of(failed, "next") is None

        retried = data_of(await gql(client, RETRY, {"id": approval["id"]}, operator))["retryTaskExecution"]
        assert retried["id"] == approval["id"] and retried["attempts"] == 2
        assert retried["status"] in ("PENDING", "RUNNING", "WAITING")
        again = await waiting(client, operator, execution_id, "ok")
        assert again["id"] == approval["id"]

        completed = data_of(
            await gql(client, COMPLETE, {"id": approval["id"], "output": {"by": "olivia"}}, operator)
        )["completeTask"]
        assert completed["status"] == "COMPLETED"
        final = await finished(client, operator, execution_id)
        assert final["id"] == execution_id and final["status"] == "COMPLETED" and final["error"] is None
        assert json.loads(final["context"]["data"])["ok-result"] == {"by": "olivia"}
        assert task_of(final, "next")["status"] == "COMPLETED"

        # CONFLICT: a task that is not FAILED cannot be retried; a decided approval takes no decision.
        conflict = error_of(await gql(client, RETRY, {"id": approval["id"]}, operator), "CONFLICT")
        assert "COMPLETED" in conflict["message"]
        error_of(await gql(client, COMPLETE, {"id": approval["id"], "output": 1}, operator), "CONFLICT")
        error_of(await gql(client, REJECT, {"id": approval["id"]}, operator), "CONFLICT")
        finished_ = error_of(await gql(client, CANCEL, {"id": execution_id}, operator), "CONFLICT")
        assert "COMPLETED" in finished_["message"]
        noop = task_of(final, "next")["id"]
        error_of(await gql(client, COMPLETE, {"id": noop}, operator), "CONFLICT")


# --- 2. one service layer ---------------------------------------------------------------------------


class TestSameAnswersAsRest:
    @pytest.mark.parametrize(
        "definition",
        [
            pytest.param(
                {
                    "name": "cycle",
                    "tasks": [
                        {"name": "a", "dependencies": ["task-3"]},
                        {"name": "b", "dependencies": ["task-1"]},
                        {"name": "c", "dependencies": ["task-2"]},
                    ],
                },
                id="cycle",
            ),
            pytest.param(
                {"name": "unknown", "tasks": [{"name": "a", "dependencies": ["ghost"]}]},
                id="unknown-dependency",
            ),
            pytest.param({"name": "timeout", "tasks": [{"name": "a", "timeout": -5}]}, id="negative-timeout"),
            pytest.param(
                {
                    "name": "many",
                    "tasks": [
                        {"name": "a", "dependencies": ["ghost", "task-1"]},
                        {"name": "b", "timeout": -1},
                        {"id": "task-1", "name": "dup"},
                    ],
                    "synchronizationPoints": [{"name": "s", "requiredTasks": ["nobody"], "timeout": 0}],
                },
                id="several-problems",
            ),
        ],
    )
    async def test_invalid_definition_gets_the_same_problems(self, client, operator, definition):
        rest = problem(await client.post("/api/workflows", json=definition, headers=operator), 422)
        error = error_of(await gql(client, CREATE, {"input": definition}, operator), "BAD_USER_INPUT")
        assert error["message"] == rest["detail"]
        assert error["extensions"]["errors"] == rest["errors"]
        assert error["extensions"]["status"] == 422
        assert all(set(e) == {"pointer", "detail"} for e in rest["errors"])
        # The same problems on update, and nothing stored either way.
        definition_id = await create_definition(client, operator, [{"name": "fine"}])
        rest_update = problem(
            await client.put(f"/api/workflows/{definition_id}", json=definition, headers=operator), 422
        )
        update = error_of(
            await gql(client, UPDATE, {"id": definition_id, "input": definition}, operator), "BAD_USER_INPUT"
        )
        assert update["extensions"]["errors"] == rest_update["errors"] == rest["errors"]
        assert (await client.get("/api/v2/workflows", headers=operator)).json()["total"] == 1
        assert (await client.get(f"/api/workflows/{definition_id}", headers=operator)).json()[
            "version"
        ] == "1.0.0"

    async def test_named_cycle(self, client, operator):
        definition = {
            "name": "cycle",
            "tasks": [{"name": "a", "dependencies": ["task-2"]}, {"name": "b", "dependencies": ["task-1"]}],
        }
        error = error_of(await gql(client, CREATE, {"input": definition}, operator), "BAD_USER_INPUT")
        assert error["extensions"]["errors"] == [
            {
                "pointer": "#/tasks/0/dependencies",
                "detail": "dependency cycle: task-1 -> task-2 -> task-1 (each depends on the next)",
            }
        ]

    @pytest.mark.parametrize(
        ("limit", "offset"),
        [
            (0, 0),
            (101, 0),
            (10, -1),
            (0, -1),
            (10, 1_000_000_001),
            (101, -1),
        ],
    )
    @pytest.mark.parametrize(
        ("rest_path", "field"),
        [("/api/v2/workflows", "workflowDefinitions"), ("/api/v2/executions", "workflowExecutions")],
    )
    async def test_bad_pagination_gets_the_same_problems(
        self, client, viewer, limit, offset, rest_path, field
    ):
        rest = problem(await client.get(f"{rest_path}?limit={limit}&offset={offset}", headers=viewer), 422)
        query = f"query($l: Int!, $o: Int!) {{ {field}(limit: $l, offset: $o) {{ total }} }}"
        error = error_of(await gql(client, query, {"l": limit, "o": offset}, viewer), "BAD_USER_INPUT")
        assert error["message"] == rest["detail"]
        assert error["extensions"]["errors"] == rest["errors"]

    @pytest.mark.parametrize("context", [[1, 2], "[1, 2]", '"text"', "5"])
    async def test_initial_context_that_is_not_an_object(self, client, operator, context):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        as_rest = json.loads(context) if isinstance(context, str) else context
        rest = problem(
            await client.post(
                "/api/executions",
                json={"workflowDefinitionId": definition_id, "initialContext": as_rest},
                headers=operator,
            ),
            422,
        )
        result = await gql(
            client,
            START,
            {"input": {"workflowDefinitionId": definition_id, "initialContext": context}},
            operator,
        )
        error = error_of(result, "BAD_USER_INPUT")
        assert (
            error["extensions"]["errors"]
            == rest["errors"]
            == [{"pointer": "#/initialContext", "detail": "Input should be a valid dictionary"}]
        )


# --- 3. auth -----------------------------------------------------------------------------------------


MUTATIONS = {
    "createWorkflowDefinition": (
        'mutation { createWorkflowDefinition(input: {name: "x", tasks: [{name: "a"}]}) { id } }',
        None,
    ),
    "updateWorkflowDefinition": (
        'mutation($id: ID!) { updateWorkflowDefinition(id: $id, input: {name: "y"}) { id } }',
        "definition",
    ),
    "deleteWorkflowDefinition": ("mutation($id: ID!) { deleteWorkflowDefinition(id: $id) }", "definition"),
    "startWorkflowExecution": (
        "mutation($id: ID!) { startWorkflowExecution(input: {workflowDefinitionId: $id}) { id } }",
        "definition",
    ),
    "cancelWorkflowExecution": ("mutation($id: ID!) { cancelWorkflowExecution(id: $id) { id } }", "unknown"),
    "reconcileWorkflowExecution": (
        "mutation($id: ID!) { reconcileWorkflowExecution(id: $id) { id } }",
        "unknown",
    ),
    "retryTaskExecution": ("mutation($id: ID!) { retryTaskExecution(id: $id) { id } }", "unknown"),
    "completeTask": ("mutation($id: ID!) { completeTask(id: $id, output: 1) { id } }", "unknown"),
    "rejectTask": ('mutation($id: ID!) { rejectTask(id: $id, reason: "x") { id } }', "unknown"),
    "registerWebhook": (
        'mutation { registerWebhook(input: {url: "https://example.com/h", events: ["*"], secret: "s3cr3t-s3cr3t"}) { id } }',
        None,
    ),
    "updateWebhook": (
        'mutation($id: ID!) { updateWebhook(id: $id, input: {url: "https://example.com/h", events: ["*"]}) { id } }',
        "unknown",
    ),
    "deleteWebhook": ("mutation($id: ID!) { deleteWebhook(id: $id) }", "unknown"),
    "redeliverWebhookDelivery": (
        'mutation($id: ID!) { redeliverWebhookDelivery(webhookId: $id, deliveryId: "1") { id } }',
        "unknown",
    ),
    "testWebhook": ('mutation { testWebhook(input: {url: "https://example.com/h"}) { success } }', None),
}


class TestAuth:
    @pytest.mark.parametrize("credentials", ["none", "garbage", "basic", "expired", "foreign"])
    @pytest.mark.parametrize(
        "document",
        [
            ME,
            "{ workflowDefinitions { total } }",
            'mutation { createWorkflowDefinition(input: {name: "x"}) { id } }',
        ],
        ids=["me", "list", "mutation"],
    )
    async def test_without_a_valid_token_is_unauthenticated(
        self, client, viewer, operator, credentials, document
    ):
        headers = {
            "none": {},
            "garbage": {"Authorization": "Bearer not-a-jwt"},
            "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
            "expired": bearer(expired_token(token_of(operator), JWT_SECRET)),
            "foreign": bearer(foreign_token(token_of(operator))),
        }[credentials]
        result = await gql(client, document, headers=headers)
        error = error_of(result, "UNAUTHENTICATED")
        assert result["data"] is None
        assert error["extensions"]["status"] == 401
        assert (await client.get("/api/v2/workflows", headers=viewer)).json()["total"] == 0

    @pytest.mark.parametrize("mutation", sorted(MUTATIONS))
    async def test_a_viewer_cannot_change_anything(self, client, operator, viewer, mutation):
        definition_id = await create_definition(client, operator, [{"name": "a"}], name="keep")
        document, target = MUTATIONS[mutation]
        variables = {"id": definition_id} if target == "definition" else {"id": "424242"} if target else None
        error = error_of(await gql(client, document, variables, viewer), "FORBIDDEN")
        assert error["extensions"]["status"] == 403
        stored = (await client.get("/api/v2/workflows", headers=viewer)).json()
        assert [(d["id"], d["name"], d["version"]) for d in stored["items"]] == [
            (definition_id, "keep", "1.0.0")
        ]
        assert (await client.get("/api/v2/executions", headers=viewer)).json()["total"] == 0

    async def test_a_viewer_reads_everything(self, client, operator, viewer):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        data = data_of(
            await gql(
                client,
                "query($id: ID!) { me { role } workflowDefinition(id: $id) { id } "
                "workflowDefinitions { total } workflowExecutions { total } "
                "workflowDefinitionVersions(id: $id) { total } }",
                {"id": definition_id},
                viewer,
            )
        )
        assert data["me"]["role"] == "viewer" and data["workflowDefinition"]["id"] == definition_id

    async def test_no_admin_only_operations_exist_yet(self, client, viewer):
        """Operators can do every mutation (above); if an admin-only one is added, it needs tests here."""
        schema = data_of(
            await gql(
                client,
                "{ __schema { mutationType { fields { name } } subscriptionType { fields { name } } } }",
                headers=viewer,
            )
        )
        assert {f["name"] for f in schema["__schema"]["mutationType"]["fields"]} == set(MUTATIONS)
        assert {f["name"] for f in schema["__schema"]["subscriptionType"]["fields"]} == {
            "workflowExecutionUpdated",
            "taskExecutionUpdated",
            "progressReportUpdated",
            "executionEvents",
        }


# --- 5. protection -----------------------------------------------------------------------------------


class TestDefaultProtection:
    async def test_too_many_aliases_are_refused(self, client, viewer, settings):
        limit = settings.graphql_max_aliases
        at_limit = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(limit)) + " }"
        assert len(data_of(await gql(client, at_limit, headers=viewer))) == limit
        over = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(limit + 1)) + " }"
        error = error_of(await gql(client, over, headers=viewer), "GRAPHQL_VALIDATION_FAILED")
        assert f"Allowed: {limit}" in error["message"]

    async def test_too_costly_query_is_refused(self, client, viewer, settings):
        costly = """{ workflowExecutions(limit: 100) { items {
            taskExecutions { id status attempts error }
            workflowDefinition { tasks { id name dependencies } synchronizationPoints { id name requiredTasks } } } } }"""
        result = await gql(client, costly, headers=viewer)
        error = error_of(result, "QUERY_TOO_COMPLEX")
        assert error["extensions"]["cost"] > error["extensions"]["limit"] == settings.graphql_max_cost
        assert result.get("data") is None
        cheap = costly.replace("limit: 100", "limit: 5")
        assert data_of(await gql(client, cheap, headers=viewer)) == {"workflowExecutions": {"items": []}}

    async def test_a_variable_limit_counts_as_its_value(self, client, viewer):
        costly = """query($n: Int) { workflowExecutions(limit: $n) { items {
            taskExecutions { id status attempts error }
            workflowDefinition { tasks { id name dependencies } synchronizationPoints { id name requiredTasks } } } } }"""
        error_of(await gql(client, costly, {"n": 100}, viewer), "QUERY_TOO_COMPLEX")
        assert data_of(await gql(client, costly, {"n": 5}, viewer)) == {"workflowExecutions": {"items": []}}
        # A variable not sent (or not a number) counts as the largest page.
        error_of(await gql(client, costly, {}, viewer), "QUERY_TOO_COMPLEX")

    async def test_fragments_are_counted(self, client, viewer):
        query = """
        fragment T on TaskExecution { id status attempts error startTime endTime }
        fragment D on WorkflowDefinition { tasks { id name dependencies } synchronizationPoints { id name requiredTasks } }
        { workflowExecutions(limit: 100) { items { taskExecutions { ...T } workflowDefinition { ...D } } } }"""
        error_of(await gql(client, query, headers=viewer), "QUERY_TOO_COMPLEX")

    async def test_batches_are_capped(self, client, operator, settings):
        cap = settings.graphql_max_batch
        create = {
            "query": 'mutation($n: String!) { createWorkflowDefinition(input: {name: $n, tasks: [{name: "a"}]}) { name } }'
        }
        over = [{**create, "variables": {"n": f"wf{i}"}} for i in range(cap + 1)]
        response = await client.post("/graphql", json=over, headers=operator)
        assert response.status_code == 400, response.text
        assert "Traceback" not in response.text
        assert (await client.get("/api/v2/workflows", headers=operator)).json()["total"] == 0, (
            "no operation of a refused batch runs"
        )

        at_cap = [{**create, "variables": {"n": f"wf{i}"}} for i in range(cap - 1)] + [
            {"query": "{ me { username } }"}
        ]
        response = await client.post("/graphql", json=at_cap, headers=operator)
        assert response.status_code == 200, response.text
        results = response.json()
        assert [r["data"]["createWorkflowDefinition"]["name"] for r in results[:-1]] == [
            f"wf{i}" for i in range(cap - 1)
        ]
        assert results[-1] == {"data": {"me": {"username": "olivia"}}}
        assert (await client.get("/api/v2/workflows", headers=operator)).json()["total"] == cap - 1

    async def test_each_operation_of_a_batch_is_checked_alone(self, client, viewer, operator):
        batch = [
            {"query": "{ me { username } }"},
            {"query": 'mutation { deleteWorkflowDefinition(id: "1") }'},
        ]
        response = await client.post("/graphql", json=batch, headers=viewer)
        first, second = response.json()
        assert first == {"data": {"me": {"username": "victor"}}}
        assert second["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        response = await client.post("/graphql", json=batch, headers={})
        assert [r["errors"][0]["extensions"]["code"] for r in response.json()] == [
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
        ]

    async def test_introspection_answers_when_on(self, client, viewer):
        data = data_of(
            await gql(
                client,
                '{ __schema { queryType { name } } __type(name: "WorkflowExecution") { name } }',
                headers=viewer,
            )
        )
        assert data == {"__schema": {"queryType": {"name": "Query"}}, "__type": {"name": "WorkflowExecution"}}


class TestConfiguredProtection:
    @pytest.fixture
    def settings(self, engine_settings):
        return engine_settings.model_copy(
            update={
                "graphql_max_depth": 3,
                "graphql_max_aliases": 2,
                "graphql_max_cost": 50,
                "graphql_max_batch": 2,
                "graphql_introspection": False,
                "api_docs": True,
                # Lists without a limit are priced at this many items.
                "max_tasks": 1,
            }
        )

    async def test_too_deep_query_is_refused(self, client, viewer):
        # Depth counts the levels below the root field: workflowDefinitions (0) > items > tasks > id (3).
        at_limit = "{ workflowDefinitions { items { tasks { id } } } }"
        assert data_of(await gql(client, at_limit, headers=viewer)) == {"workflowDefinitions": {"items": []}}
        too_deep = "{ workflowDefinitions { items { tasks { retryPolicy { maxAttempts } } } } }"
        error = error_of(await gql(client, too_deep, headers=viewer), "GRAPHQL_VALIDATION_FAILED")
        assert "exceeds maximum operation depth of 3" in error["message"]
        through_fragments = "fragment A on TaskDefinition { retryPolicy { maxAttempts } } { workflowDefinitions { items { tasks { ...A } } } }"
        error_of(await gql(client, through_fragments, headers=viewer), "GRAPHQL_VALIDATION_FAILED")

    async def test_limits_follow_the_settings(self, client, viewer, operator):
        error_of(
            await gql(client, "{ a: me { id } b: me { id } c: me { id } }", headers=viewer),
            "GRAPHQL_VALIDATION_FAILED",
        )
        assert data_of(await gql(client, "{ a: me { id } b: me { id } }", headers=viewer))["b"]
        error = error_of(
            await gql(
                client,
                "{ workflowExecutions(limit: 20) { items { taskExecutions { id } } } }",
                headers=viewer,
            ),
            "QUERY_TOO_COMPLEX",
        )
        assert error["extensions"]["limit"] == 50
        batch = [{"query": "{ me { id } }"}] * 3
        assert (await client.post("/graphql", json=batch, headers=viewer)).status_code == 400
        assert len((await client.post("/graphql", json=batch[:2], headers=viewer)).json()) == 2

    @pytest.mark.parametrize(
        "document",
        [
            "{ __schema { types { name } } }",
            '{ __type(name: "Query") { name } }',
            "{ me { id } __schema { queryType { name } } }",
        ],
    )
    async def test_introspection_can_be_switched_off(self, client, viewer, document):
        result = await gql(client, document, headers=viewer)
        assert result["data"] is None
        assert all("introspection has been disabled" in e["message"] for e in result["errors"])
        assert data_of(await gql(client, "{ me { __typename username } }", headers=viewer)) == {
            "me": {"__typename": "User", "username": "victor"}
        }
        # GraphiQL is still served (it simply cannot explore the schema).
        assert (await client.get("/graphql", headers={"Accept": "text/html"})).status_code == 200


# --- 5. DataLoaders -----------------------------------------------------------------------------------

PAGE_WITH_NESTED = (
    "{ workflowExecutions(limit: 20) { items { taskExecutions { id } workflowDefinition { id } } } }"
)


class TestDataLoaders:
    async def count_statements(self, app, client, headers) -> tuple[int, dict, list[str]]:
        """SQL statements run by one request for PAGE_WITH_NESTED (the event feed's poll left out)."""
        statements: list[str] = []

        def record(conn, cursor, statement, parameters, context, executemany):
            if "execution_events.id >" not in statement:  # EventFeed._poll, every 0.1 s, not this request
                statements.append(" ".join(statement.split()))

        engine = app.state.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            result = data_of(await gql(client, PAGE_WITH_NESTED, headers=headers))
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
        return len(statements), result, statements

    async def test_statement_count_does_not_grow_with_the_page(self, app, client, operator, worker):
        two_tasks = [{"id": "a", "name": "a"}, {"id": "b", "name": "b", "dependencies": ["a"]}]
        definitions = [await create_definition(client, operator, two_tasks, name=f"d{i}") for i in range(3)]
        first = (await start_execution(client, operator, definitions[0]))["id"]
        await finished(client, operator, first)
        await self.count_statements(app, client, operator)  # warm-up (first-use work is not per item)
        one, result, _ = await self.count_statements(app, client, operator)
        assert [len(e["taskExecutions"]) for e in result["workflowExecutions"]["items"]] == [2]

        ids = [(await start_execution(client, operator, definitions[i % 3]))["id"] for i in range(19)]
        for execution_id in ids:
            await finished(client, operator, execution_id)
        twenty, result, statements = await self.count_statements(app, client, operator)
        items = result["workflowExecutions"]["items"]
        assert len(items) == 20
        assert all(len(e["taskExecutions"]) == 2 for e in items)
        assert {e["workflowDefinition"]["id"] for e in items} == set(definitions)
        assert len({t["id"] for e in items for t in e["taskExecutions"]}) == 40
        assert twenty == one, "statements per request must not grow with the page:\n" + "\n".join(statements)
        assert twenty <= 6, "\n".join(statements)


# --- 6. error codes ------------------------------------------------------------------------------------


class TestErrorCodes:
    @pytest.mark.parametrize(
        ("document", "variables"),
        [
            ("query($id: ID!) { workflowDefinition(id: $id) { id } }", {"id": "404"}),
            ("query($id: ID!) { workflowDefinition(id: $id) { id } }", {"id": "not-a-number"}),
            ("query($id: ID!) { workflowDefinitionVersions(id: $id) { total } }", {"id": "404"}),
            (
                'query($id: ID!) { workflowDefinitionVersion(id: $id, version: "1.0.0") { id } }',
                {"id": "404"},
            ),
            ("query($id: ID!) { workflowExecution(id: $id) { id } }", {"id": "404"}),
            ("query($id: ID!) { workflowExecution(id: $id) { id } }", {"id": "99999999999999999999999999"}),
            ("query($id: ID!) { taskExecutions(workflowExecutionId: $id) { total } }", {"id": "404"}),
            ("query($id: ID!) { progressReport(workflowExecutionId: $id) { id } }", {"id": "404"}),
            (
                'mutation($id: ID!) { updateWorkflowDefinition(id: $id, input: {name: "x"}) { id } }',
                {"id": "404"},
            ),
            ("mutation($id: ID!) { deleteWorkflowDefinition(id: $id) }", {"id": "404"}),
            (
                "mutation($id: ID!) { startWorkflowExecution(input: {workflowDefinitionId: $id}) { id } }",
                {"id": "404"},
            ),
            ("mutation($id: ID!) { cancelWorkflowExecution(id: $id) { id } }", {"id": "404"}),
            ("mutation($id: ID!) { retryTaskExecution(id: $id) { id } }", {"id": "404"}),
            ("mutation($id: ID!) { completeTask(id: $id) { id } }", {"id": "404"}),
            ("mutation($id: ID!) { rejectTask(id: $id) { id } }", {"id": "404"}),
        ],
    )
    async def test_unknown_ids_are_not_found(self, client, operator, document, variables):
        error = error_of(await gql(client, document, variables, operator), "NOT_FOUND")
        assert error["extensions"]["status"] == 404
        assert variables["id"] in error["message"]

    @pytest.mark.parametrize("context", ["{bad", "", '{"a": }'])
    async def test_initial_context_that_is_not_json_is_bad_user_input(self, client, operator, context):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        result = await gql(
            client,
            START,
            {"input": {"workflowDefinitionId": definition_id, "initialContext": context}},
            operator,
        )
        error = error_of(result, "BAD_USER_INPUT")
        assert error["extensions"]["errors"][0]["pointer"] == "#/initialContext"
        assert error["extensions"]["errors"][0]["detail"].startswith("Not valid JSON")
        assert (await client.get("/api/v2/executions", headers=operator)).json()["total"] == 0

    async def test_bad_user_input_lists_every_problem(self, client, operator):
        result = await gql(
            client,
            CREATE,
            {"input": {"name": "", "tasks": [{"name": "a", "retryPolicy": {"maxAttempts": 0}}]}},
            operator,
        )
        error = error_of(result, "BAD_USER_INPUT")
        assert {e["pointer"] for e in error["extensions"]["errors"]} == {
            "#/name",
            "#/tasks/0/retryPolicy/maxAttempts",
        }

    async def test_unexpected_errors_are_masked(self, app, client, operator):
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        secret = "internal-detail-7f3a"
        async with app.state.engine.begin() as conn:  # a stored document this code cannot read
            await conn.execute(
                sa.text("UPDATE workflow_definitions SET document = :d WHERE id = :i"),
                {
                    "d": json.dumps({"tasks": [{"id": secret}], "synchronizationPoints": secret}),
                    "i": int(definition_id),
                },
            )
        for document in (GET_WORKFLOW_DEFINITION, "{ workflowDefinitions { items { id name } } }"):
            response = await client.post(
                "/graphql", json={"query": document, "variables": {"id": definition_id}}, headers=operator
            )
            assert response.status_code == 200
            body = response.json()
            assert body["data"] is None
            assert [(e["message"], e["extensions"]) for e in body["errors"]] == [
                ("An unexpected error occurred.", {"code": "INTERNAL_SERVER_ERROR"})
            ]
            for leak in (secret, "Traceback", "pydantic", "validation error", 'File "'):
                assert leak not in response.text
        problem(await client.get(f"/api/workflows/{definition_id}", headers=operator), 500)

    async def test_graphql_mistakes_are_validation_errors(self, client, viewer):
        for document in (
            "{ me { nope } }",
            "{ me { id ",
            "{ workflowExecutions(status: SLEEPING) { total } }",
        ):
            error_of(await gql(client, document, headers=viewer), "GRAPHQL_VALIDATION_FAILED")
