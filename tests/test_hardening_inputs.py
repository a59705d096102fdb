"""Inputs that cost the service more than they are worth: definition sizes (sizes checked first,
lists capped, at most ~100 problems listed), reserved names, and `${...}` expansion."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.capacity import configure_worker
from activities.registry import registry
from activities.templating import render
from api.app import create_app
from api.models.definitions import MAX_LISTED_PROBLEMS
from tests.conftest import ADMIN_PASSWORD, login, make_settings, problem
from tests.loopback import LoopbackServer, echo
from workflows.inputs import TaskInput


@pytest_asyncio.fixture
async def small_api(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """An API with WFO_MAX_TASKS=5 and its own queue names, and an admin's headers."""
    settings = make_settings(
        database_url, tmp_path, max_tasks=5, system_task_queue="sys-queue", webhook_task_queue="hook-queue"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, await login(client, "admin", ADMIN_PASSWORD)


def pointers(body: dict[str, Any]) -> list[str]:
    return [e["pointer"] for e in body["errors"]]


class TestDefinitionSizes:
    async def test_one_task_with_a_million_dependencies_is_one_problem(self, client, operator):
        # 1.5M copies of the same id: before, every one was a problem of its own (a response of
        # hundreds of MB, tens of seconds of CPU); the list is refused by its length alone.
        body = {"name": "wide", "tasks": [{"name": "a", "dependencies": ["a"] * 1_500_000}]}
        response = await client.post("/api/workflows", json=body, headers=operator)
        result = problem(response, 422)
        assert len(response.content) < 10_000, len(response.content)
        assert result["errors"] == [
            {
                "pointer": "#/tasks/0/dependencies",
                "detail": "1500000 dependencies, more than the 1 tasks and synchronization points a task can depend on",
            }
        ]

    async def test_required_tasks_are_capped_by_the_number_of_tasks(self, client, operator):
        body = {
            "name": "barrier",
            "tasks": [{"name": "a"}, {"name": "b"}],
            "synchronizationPoints": [{"name": "all", "requiredTasks": ["task-1", "task-2", "task-1"]}],
        }
        result = problem(await client.post("/api/workflows", json=body, headers=operator), 422)
        assert result["errors"] == [
            {
                "pointer": "#/synchronizationPoints/0/requiredTasks",
                "detail": "3 required tasks, more than the 2 tasks of the definition",
            }
        ]

    async def test_the_size_is_checked_before_the_graph(self, small_api):
        client, admin = small_api
        # Six tasks in a cycle, each with an unknown dependency: before, the graph was checked first
        # and every graph problem listed, while the one that matters is the size.
        tasks = [{"name": f"t{i}", "dependencies": [f"task-{(i + 1) % 6 + 1}", "nowhere"]} for i in range(6)]
        result = problem(
            await client.post("/api/workflows", json={"name": "big", "tasks": tasks}, headers=admin), 422
        )
        assert result["errors"] == [{"pointer": "#/tasks", "detail": "6 tasks exceed the maximum of 5"}]

    async def test_too_many_synchronization_points(self, small_api):
        client, admin = small_api
        points = [{"name": f"p{i}", "requiredTasks": ["task-1"]} for i in range(6)]
        body = {"name": "points", "tasks": [{"name": "a"}], "synchronizationPoints": points}
        result = problem(await client.post("/api/workflows", json=body, headers=admin), 422)
        assert result["errors"] == [
            {
                "pointer": "#/synchronizationPoints",
                "detail": "6 synchronization points exceed the maximum of 5",
            }
        ]

    async def test_at_most_a_hundred_problems_are_listed_and_the_rest_counted(self, client, operator):
        tasks = [{"name": f"t{i}", "dependencies": ["nowhere"]} for i in range(500)]
        response = await client.post(
            "/api/workflows", json={"name": "broken", "tasks": tasks}, headers=operator
        )
        result = problem(response, 422)
        assert result["detail"] == "The request has 500 problems."
        assert len(result["errors"]) == MAX_LISTED_PROBLEMS + 1
        assert pointers(result)[:3] == [
            "#/tasks/0/dependencies/0",
            "#/tasks/1/dependencies/0",
            "#/tasks/2/dependencies/0",
        ]
        assert result["errors"][-1] == {
            "pointer": "#",
            "detail": f"{500 - MAX_LISTED_PROBLEMS} more problems are not listed (only the first {MAX_LISTED_PROBLEMS} are)",
        }

    async def test_shape_problems_are_capped_too(self, client, operator):
        tasks = [{"name": ""} for _ in range(300)]
        result = problem(
            await client.post("/api/workflows", json={"name": "blank", "tasks": tasks}, headers=operator), 422
        )
        assert result["detail"] == "The request has 300 problems."
        assert len(result["errors"]) == MAX_LISTED_PROBLEMS + 1

    async def test_graphql_gets_the_same_caps(self, client, operator):
        mutation = "mutation($input: CreateWorkflowDefinitionInput!) { createWorkflowDefinition(input: $input) { id } }"
        tasks = [{"name": "a", "dependencies": ["task-1"] * 1000}]
        response = await client.post(
            "/graphql",
            json={"query": mutation, "variables": {"input": {"name": "wide", "tasks": tasks}}},
            headers=operator,
        )
        text = json.dumps(response.json())
        assert "1000 dependencies, more than the 1 tasks and synchronization points" in text
        assert text.count("listed twice") == 0


class TestReservedNames:
    @pytest.mark.parametrize(
        "task_type", ["wfo.publish_events", "wfo.reconcile_executions", "WFO.deliver_webhook"]
    )
    async def test_system_activity_types_are_refused(self, client, operator, task_type):
        body = {"name": "sneaky", "tasks": [{"name": "a", "type": task_type}]}
        result = problem(await client.post("/api/workflows", json=body, headers=operator), 422)
        assert result["errors"] == [
            {
                "pointer": "#/tasks/0/type",
                "detail": "Task types starting with 'wfo.' are reserved for the system",
            }
        ]

    @pytest.mark.parametrize("queue", ["sys-queue", "hook-queue"])
    async def test_the_system_queues_are_refused(self, small_api, queue):
        client, admin = small_api
        body = {"name": "sneaky", "tasks": [{"name": "a", "resourceRequirements": {"queue": queue}}]}
        result = problem(await client.post("/api/workflows", json=body, headers=admin), 422)
        assert result["errors"] == [
            {
                "pointer": "#/tasks/0/resourceRequirements/queue",
                "detail": f"{queue!r} is a system queue; tasks cannot run there",
            }
        ]

    async def test_the_default_system_queues_are_refused_too(self, client, operator):
        tasks = [{"name": "a", "resourceRequirements": {"queue": "wfo-system"}}]
        result = problem(
            await client.post("/api/workflows", json={"name": "x", "tasks": tasks}, headers=operator), 422
        )
        assert pointers(result) == ["#/tasks/0/resourceRequirements/queue"]

    async def test_updates_are_checked_too(self, small_api):
        client, admin = small_api
        created = await client.post(
            "/api/workflows", json={"name": "ok", "tasks": [{"name": "a"}]}, headers=admin
        )
        assert created.status_code == 201
        body = {"name": "ok", "tasks": [{"name": "a", "resourceRequirements": {"queue": "sys-queue"}}]}
        response = await client.put(f"/api/workflows/{created.json()['id']}", json=body, headers=admin)
        assert pointers(problem(response, 422)) == ["#/tasks/0/resourceRequirements/queue"]

    async def test_other_queues_and_types_are_fine(self, client, operator):
        tasks = [{"name": "a", "type": "wfox.custom", "resourceRequirements": {"queue": "wfo-tasks"}}]
        response = await client.post(
            "/api/workflows", json={"name": "fine", "tasks": tasks}, headers=operator
        )
        assert response.status_code == 201, response.text


# --- ${...} expansion ---------------------------------------------------------------------------


def http_task(
    url: str, context: dict[str, Any], max_result_bytes: int = 256 * 1024, **input: Any
) -> TaskInput:
    return TaskInput(
        execution_id="exec-1",
        task_id="task-1",
        task_type="http",
        input={"url": url, **input},
        context=context,
        max_result_bytes=max_result_bytes,
    )


async def run_http(task: TaskInput) -> Any:
    configure_worker("test-worker@loopback")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="http", task_queue="wfo-tasks")
    return await env.run(registry.activity("http"), task)


class TestExpansionSize:
    async def test_many_references_to_a_large_value_fail_the_task(self, loopback: LoopbackServer):
        loopback.route("/sink", handler=echo)
        context = {"big": "x" * 1_000_000}
        # 200k references to 1 MB would be 200 GB of text; before, the worker tried to build it.
        body = "${big}" * 200_000
        with pytest.raises(ApplicationError) as caught:
            await run_http(http_task(loopback.url_for("/sink"), context, method="POST", body=body))
        error = caught.value
        assert error.type == "InputTooLarge" and error.non_retryable
        assert "rendered input" in error.message and "over the limit" in error.message
        assert loopback.requests == []

    async def test_exact_references_count_too(self, loopback: LoopbackServer):
        loopback.route("/sink", handler=echo)
        context = {"big": {"items": ["y" * 1000] * 1000}}  # about 1 MB of JSON
        body = {"copies": ["${big}"] * 10_000}
        with pytest.raises(ApplicationError) as caught:
            await run_http(http_task(loopback.url_for("/sink"), context, method="POST", body=body))
        assert caught.value.type == "InputTooLarge"
        assert loopback.requests == []

    async def test_a_large_result_can_still_be_passed_on_once(self, loopback: LoopbackServer):
        loopback.route("/sink", handler=echo)
        context = {"task-0-result": {"body": "z" * 200_000}}
        outcome = await run_http(
            http_task(
                loopback.url_for("/sink"),
                context,
                max_result_bytes=1024 * 1024,
                method="POST",
                body="${task-0-result.body}",
            )
        )
        assert outcome.result["body"]["body"] == "z" * 200_000

    def test_the_limit_is_a_parameter_of_render(self):
        with pytest.raises(ApplicationError) as caught:
            render({"a": "${v}${v}${v}"}, {"v": "x" * 400}, limit=1000)
        assert caught.value.type == "InputTooLarge"
        assert render({"a": "${v}${v}"}, {"v": "x" * 400}, limit=1000) == {"a": "x" * 800}
