"""Workflow definitions over REST, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest

from tests.conftest import make_settings, problem

SPEC_CREATE = {
    "name": "Sample Workflow",
    "description": "A sample workflow definition",
    "tasks": [
        {"name": "Task 1", "description": "First task"},
        {"name": "Task 2", "description": "Second task", "dependencies": ["task-1"]},
    ],
    "synchronizationPoints": [
        {
            "name": "All Tasks Completed",
            "description": "Wait for all tasks to complete",
            "requiredTasks": ["task-1", "task-2"],
        }
    ],
}

SPEC_UPDATE = {
    "name": "Updated Workflow",
    "description": "An updated workflow definition",
    "tasks": [
        {"name": "Task 1", "description": "Updated first task"},
        {"name": "Task 2", "description": "Updated second task", "dependencies": ["task-1"]},
        {"name": "Task 3", "description": "New task", "dependencies": ["task-2"]},
    ],
    "synchronizationPoints": [
        {
            "name": "All Tasks Completed",
            "description": "Wait for all tasks to complete",
            "requiredTasks": ["task-1", "task-2", "task-3"],
        }
    ],
}

SPEC_TASK_KEYS = {
    "id",
    "name",
    "description",
    "resourceRequirements",
    "dependencies",
    "timeout",
    "retryPolicy",
}


def spec_task(task_id: str, name: str, description: str, dependencies: list[str]) -> dict:
    return {
        "id": task_id,
        "name": name,
        "description": description,
        "resourceRequirements": None,
        "dependencies": dependencies,
        "timeout": None,
        "retryPolicy": None,
        "type": "noop",
        "input": None,
    }


async def create(client: httpx.AsyncClient, headers: dict, body: dict | None = None) -> dict:
    response = await client.post("/api/workflows", json=body or SPEC_CREATE, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def errors_of(body: dict) -> dict[str, str]:
    return {e["pointer"]: e["detail"] for e in body["errors"]}


class TestCreateDefinition:
    async def test_spec_example_gives_spec_response(self, client, operator):
        response = await client.post("/api/workflows", json=SPEC_CREATE, headers=operator)
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v1+json"
        body = response.json()
        assert body["id"].isdecimal()
        assert body["version"] == "1.0.0"
        assert body["createdAt"] == body["updatedAt"]
        assert body["createdAt"].endswith("Z") and len(body["createdAt"]) == len("2025-05-21T21:26:58.211Z")
        assert body["tasks"] == [
            spec_task("task-1", "Task 1", "First task", []),
            spec_task("task-2", "Task 2", "Second task", ["task-1"]),
        ]
        assert set(body["tasks"][0]) >= SPEC_TASK_KEYS
        assert body["synchronizationPoints"] == [
            {
                "id": "sync-1",
                "name": "All Tasks Completed",
                "description": "Wait for all tasks to complete",
                "requiredTasks": ["task-1", "task-2"],
                "timeout": None,
            }
        ]

    async def test_given_ids_are_kept_and_missing_ones_assigned_by_position(self, client, operator):
        body = await create(
            client,
            operator,
            {
                "name": "ids",
                "tasks": [
                    {"name": "a", "id": "extract"},
                    {"name": "b"},
                    {"name": "c", "dependencies": ["extract", "task-2"]},
                ],
                "synchronizationPoints": [
                    {"name": "s", "requiredTasks": ["task-3"]},
                    {"id": "gate", "name": "g", "requiredTasks": ["extract"]},
                ],
            },
        )
        assert [t["id"] for t in body["tasks"]] == ["extract", "task-2", "task-3"]
        assert [s["id"] for s in body["synchronizationPoints"]] == ["sync-1", "gate"]

    async def test_extension_fields_are_stored_and_returned(self, client, operator):
        task = {
            "id": "fetch",
            "name": "Fetch",
            "type": "http",
            "input": {
                "url": "https://example.com",
                "method": "GET",
                "nested": {"list": [1, 2.5, None, True]},
            },
            "timeout": 30,
            "retryPolicy": {
                "maxAttempts": 5,
                "initialInterval": 1.5,
                "backoffCoefficient": 2,
                "maximumInterval": 60,
                "nonRetryableErrors": ["ValueError"],
            },
            "resourceRequirements": {
                "cpu": 2,
                "memory": 4096,
                "storage": 100,
                "gpu": 1,
                "custom": [{"name": "region", "value": "eu"}],
                "queue": "gpu-fleet",
            },
        }
        created = await create(
            client, operator, {"name": "ext", "tasks": [task, {"name": "after", "dependencies": ["fetch"]}]}
        )
        fetched = (await client.get(f"/api/workflows/{created['id']}", headers=operator)).json()
        for body in (created, fetched):
            stored = body["tasks"][0]
            assert stored["type"] == "http"
            assert stored["input"] == task["input"]
            assert stored["timeout"] == 30
            assert stored["retryPolicy"] == {**task["retryPolicy"], "backoffCoefficient": 2.0}
            assert stored["resourceRequirements"] == {**task["resourceRequirements"], "cpu": 2.0}

    async def test_legacy_retry_names_are_folded_into_temporal_ones(self, client, operator):
        body = await create(
            client,
            operator,
            {
                "name": "legacy",
                "tasks": [
                    {"name": "a", "retryPolicy": {"maxRetries": 2, "backoffMultiplier": 3, "maxBackoff": 60}}
                ],
            },
        )
        assert body["tasks"][0]["retryPolicy"] == {
            "maxAttempts": 3,
            "initialInterval": None,
            "backoffCoefficient": 3.0,
            "maximumInterval": 60,
            "nonRetryableErrors": None,
        }

    async def test_empty_definition_is_allowed(self, client, operator):
        body = await create(client, operator, {"name": "empty"})
        assert body["tasks"] == [] and body["synchronizationPoints"] == [] and body["description"] is None

    async def test_task_may_depend_on_a_sync_point(self, client, operator):
        body = await create(
            client,
            operator,
            {
                "name": "gated",
                "tasks": [{"name": "a"}, {"name": "b"}, {"name": "c", "dependencies": ["sync-1"]}],
                "synchronizationPoints": [{"name": "ab", "requiredTasks": ["task-1", "task-2"]}],
            },
        )
        assert body["tasks"][2]["dependencies"] == ["sync-1"]

    async def test_viewer_cannot_create(self, client, viewer):
        body = problem(await client.post("/api/workflows", json=SPEC_CREATE, headers=viewer), 403)
        assert "operator" in body["detail"]

    async def test_without_token_is_401(self, client):
        response = await client.post("/api/workflows", json=SPEC_CREATE)
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


class TestDefinitionValidation:
    async def assert_invalid(self, client, headers, body) -> dict[str, str]:
        result = problem(await client.post("/api/workflows", json=body, headers=headers), 422)
        listed = await client.get("/api/v2/workflows", headers=headers)
        assert listed.json()["total"] == 0, "nothing may be stored from an invalid request"
        return errors_of(result)

    async def test_cycle_is_named_task_by_task(self, client, operator):
        errors = await self.assert_invalid(
            client,
            operator,
            {
                "name": "cycle",
                "tasks": [
                    {"name": "a", "dependencies": ["task-3"]},
                    {"name": "b", "dependencies": ["task-1"]},
                    {"name": "c", "dependencies": ["task-2"]},
                ],
            },
        )
        assert errors == {
            "#/tasks/0/dependencies": "dependency cycle: task-1 -> task-3 -> task-2 -> task-1 (each depends on the next)"
        }

    async def test_cycle_through_a_sync_point(self, client, operator):
        errors = await self.assert_invalid(
            client,
            operator,
            {
                "name": "cycle",
                "tasks": [{"name": "a", "dependencies": ["sync-1"]}, {"name": "b"}],
                "synchronizationPoints": [{"name": "s", "requiredTasks": ["task-1", "task-2"]}],
            },
        )
        assert list(errors.values()) == [
            "dependency cycle: task-1 -> sync-1 -> task-1 (each depends on the next)"
        ]

    async def test_self_dependency_and_two_separate_cycles_are_all_listed(self, client, operator):
        errors = await self.assert_invalid(
            client,
            operator,
            {
                "name": "cycles",
                "tasks": [
                    {"id": "a", "name": "a", "dependencies": ["a"]},
                    {"id": "b", "name": "b", "dependencies": ["c"]},
                    {"id": "c", "name": "c", "dependencies": ["b"]},
                ],
            },
        )
        assert errors == {
            "#/tasks/0/dependencies": "task 'a' depends on itself",
            "#/tasks/1/dependencies": "dependency cycle: b -> c -> b (each depends on the next)",
        }

    async def test_every_problem_is_listed_at_once(self, client, operator):
        errors = await self.assert_invalid(
            client,
            operator,
            {
                "name": "many",
                "tasks": [
                    {"name": "a", "dependencies": ["ghost", "task-2", "task-2"]},
                    {"name": "b", "timeout": -5},
                    {"id": "task-1", "name": "dup"},
                    {"name": "d", "retryPolicy": {"maxAttempts": 0, "backoffCoefficient": 0.5}},
                ],
                "synchronizationPoints": [{"name": "s", "requiredTasks": ["nobody", "sync-1"], "timeout": 0}],
            },
        )
        assert errors == {
            "#/tasks/0/dependencies/0": "unknown dependency 'ghost': no task or synchronization point has this id",
            "#/tasks/0/dependencies/2": "'task-2' is listed twice",
            "#/tasks/1/timeout": "Input should be greater than 0",
            "#/tasks/2/id": "duplicate id 'task-1': tasks[0] has it already",
            "#/tasks/3/retryPolicy/maxAttempts": "Input should be greater than or equal to 1",
            "#/tasks/3/retryPolicy/backoffCoefficient": "Input should be greater than or equal to 1",
            "#/synchronizationPoints/0/requiredTasks/0": "unknown required task 'nobody': no task has this id",
            "#/synchronizationPoints/0/requiredTasks/1": "unknown required task 'sync-1': a synchronization point, not a task",
            "#/synchronizationPoints/0/timeout": "Input should be greater than 0",
        }

    @pytest.mark.parametrize(
        ("policy", "pointer", "detail"),
        [
            ({"maxAttempts": 1001}, "#/tasks/0/retryPolicy/maxAttempts", "less than or equal to 1000"),
            ({"initialInterval": 0}, "#/tasks/0/retryPolicy/initialInterval", "greater than 0"),
            (
                {"backoffCoefficient": 101},
                "#/tasks/0/retryPolicy/backoffCoefficient",
                "less than or equal to 100",
            ),
            ({"maxRetries": -1}, "#/tasks/0/retryPolicy/maxRetries", "greater than or equal to 0"),
            (
                {"initialInterval": 10, "maximumInterval": 5},
                "#/tasks/0/retryPolicy",
                "maximumInterval must not be shorter",
            ),
            (
                {"maxAttempts": 3, "maxRetries": 5},
                "#/tasks/0/retryPolicy",
                "maxAttempts and maxRetries disagree",
            ),
            ({"maxAttempts": "three"}, "#/tasks/0/retryPolicy/maxAttempts", "valid integer"),
            ({"jitter": 1}, "#/tasks/0/retryPolicy/jitter", "Unknown field"),
        ],
    )
    async def test_retry_values_out_of_range(self, client, operator, policy, pointer, detail):
        errors = await self.assert_invalid(
            client, operator, {"name": "r", "tasks": [{"name": "a", "retryPolicy": policy}]}
        )
        assert pointer in errors and detail in errors[pointer], errors

    @pytest.mark.parametrize(
        ("body", "pointer", "detail"),
        [
            ({"tasks": []}, "#/name", "Field required"),
            ({"name": ""}, "#/name", "at least 1 character"),
            ({"name": 7}, "#/name", "valid string"),
            ({"name": "x", "tasks": {"name": "a"}}, "#/tasks", "valid list"),
            ({"name": "x", "tasks": ["a"]}, "#/tasks/0", "valid dictionary"),
            (
                {"name": "x", "tasks": [{"name": "a", "dependencies": "b"}]},
                "#/tasks/0/dependencies",
                "valid list",
            ),
            ({"name": "x", "tasks": [{"name": "a", "timeout": "soon"}]}, "#/tasks/0/timeout", "valid number"),
            (
                {"name": "x", "tasks": [{"name": "a", "id": "has space"}]},
                "#/tasks/0/id",
                "should match pattern",
            ),
            ({"name": "x", "tasks": [{"name": "a", "input": [1]}]}, "#/tasks/0/input", "valid dictionary"),
            ({"name": "x", "tasks": [{"name": "a", "colour": "red"}]}, "#/tasks/0/colour", "Unknown field"),
            ({"name": "x", "owner": "me"}, "#/owner", "Unknown field"),
            (
                {"name": "x", "synchronizationPoints": [{"name": "s", "requiredTasks": []}]},
                "#/synchronizationPoints/0/requiredTasks",
                "at least 1 item",
            ),
            (
                {"name": "x", "tasks": [{"name": "a", "resourceRequirements": {"gpu": -1}}]},
                "#/tasks/0/resourceRequirements/gpu",
                "greater than or equal to 0",
            ),
            (
                {"name": "x", "tasks": [{"name": "a", "resourceRequirements": {"queue": "bad queue"}}]},
                "#/tasks/0/resourceRequirements/queue",
                "pattern",
            ),
            ({"name": "x", "tasks": [{"name": "a\u0000"}]}, "#/tasks/0/name", "NUL"),
            (
                {"name": "x", "tasks": [{"name": "a", "input": {"k": ["ok", "b\u0000d"]}}]},
                "#/tasks/0/input/k/1",
                "NUL",
            ),
        ],
    )
    async def test_wrong_shapes_and_types(self, client, operator, body, pointer, detail):
        errors = await self.assert_invalid(client, operator, body)
        assert pointer in errors and detail in errors[pointer], errors

    async def test_body_that_is_not_an_object(self, client, operator):
        body = problem(await client.post("/api/workflows", json=["a"], headers=operator), 422)
        assert body["errors"][0]["pointer"] == "#"

    async def test_malformed_json(self, client, operator):
        response = await client.post(
            "/api/workflows",
            content=b'{"name": "x",',
            headers={**operator, "Content-Type": "application/json"},
        )
        body = problem(response, 422)
        assert body["detail"].startswith("Request body is not valid JSON")

    async def test_more_tasks_than_the_maximum(self, database_url, tmp_path):
        from api.app import create_app
        from tests.conftest import ADMIN_PASSWORD, login

        app = create_app(make_settings(database_url, tmp_path, max_tasks=3))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = await login(client, "admin", ADMIN_PASSWORD)
                body = {"name": "big", "tasks": [{"name": f"t{i}"} for i in range(4)]}
                result = problem(await client.post("/api/workflows", json=body, headers=headers), 422)
                assert errors_of(result) == {"#/tasks": "4 tasks exceed the maximum of 3"}
                body["tasks"].pop()
                assert (await client.post("/api/workflows", json=body, headers=headers)).status_code == 201

    async def test_default_maximum_is_ten_thousand(self, client, operator):
        chain = [{"name": f"t{i}", "dependencies": [f"task-{i}"] if i else []} for i in range(10_001)]
        result = problem(
            await client.post("/api/workflows", json={"name": "huge", "tasks": chain}, headers=operator), 422
        )
        assert errors_of(result) == {"#/tasks": "10001 tasks exceed the maximum of 10000"}
        created = await create(client, operator, {"name": "huge", "tasks": chain[:10_000]})
        assert len(created["tasks"]) == 10_000


class TestReadDefinitions:
    async def test_get_by_id(self, client, operator, viewer):
        created = await create(client, operator)
        response = await client.get(f"/api/workflows/{created['id']}", headers=viewer)
        assert response.status_code == 200
        assert response.json() == created

    @pytest.mark.parametrize("missing", ["999", "abc", "1.5", "-1", "99999999999999999999999"])
    async def test_unknown_id_is_404(self, client, viewer, missing):
        body = problem(await client.get(f"/api/workflows/{missing}", headers=viewer), 404)
        assert missing in body["detail"]

    async def test_list_is_an_array_in_v1_and_paginates(self, client, operator):
        ids = [(await create(client, operator, {"name": f"wf{i}"}))["id"] for i in range(12)]
        first = await client.get("/api/workflows", headers=operator)
        assert first.status_code == 200
        assert [d["id"] for d in first.json()] == ids[:10], "default limit is 10"
        page = await client.get("/api/workflows?limit=5&offset=10", headers=operator)
        assert [d["id"] for d in page.json()] == ids[10:]
        beyond = await client.get("/api/workflows?offset=50", headers=operator)
        assert beyond.json() == []

    async def test_list_is_an_envelope_in_v2(self, client, operator):
        ids = [(await create(client, operator, {"name": f"wf{i}"}))["id"] for i in range(3)]
        response = await client.get("/api/v2/workflows?limit=2&offset=1", headers=operator)
        assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v2+json"
        body = response.json()
        assert body["total"] == 3 and body["limit"] == 2 and body["offset"] == 1
        assert [d["id"] for d in body["items"]] == ids[1:]

    @pytest.mark.parametrize(
        ("query", "parameter", "detail"),
        [
            ("limit=0", "limit", "greater than or equal to 1"),
            ("limit=-3", "limit", "greater than or equal to 1"),
            ("limit=abc", "limit", "valid integer"),
            ("limit=101", "limit", "at most 100"),
            ("offset=-1", "offset", "greater than or equal to 0"),
            ("offset=1e3", "offset", "valid integer"),
            ("offset=99999999999999999999", "offset", "less than or equal to"),
        ],
    )
    async def test_bad_pagination_is_422(self, client, viewer, query, parameter, detail):
        body = problem(await client.get(f"/api/workflows?{query}", headers=viewer), 422)
        entry = next(e for e in body["errors"] if e["parameter"] == parameter)
        assert entry["in"] == "query" and detail in entry["detail"], body


class TestUpdateDefinition:
    async def test_spec_update_bumps_the_patch_version(self, client, operator):
        created = await create(client, operator)
        response = await client.put(f"/api/workflows/{created['id']}", json=SPEC_UPDATE, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == created["id"]
        assert body["version"] == "1.0.1"
        assert body["name"] == "Updated Workflow"
        assert body["createdAt"] == created["createdAt"]
        assert body["updatedAt"] >= created["updatedAt"]
        assert [t["id"] for t in body["tasks"]] == ["task-1", "task-2", "task-3"]
        assert body["tasks"][2] == spec_task("task-3", "Task 3", "New task", ["task-2"])
        assert body["synchronizationPoints"][0]["requiredTasks"] == ["task-1", "task-2", "task-3"]

    async def test_every_version_is_kept(self, client, operator, viewer):
        created = await create(client, operator)
        definition_id = created["id"]
        for i in range(11):
            body = {**SPEC_CREATE, "name": f"rev {i + 1}"}
            assert (
                await client.put(f"/api/workflows/{definition_id}", json=body, headers=operator)
            ).status_code == 200
        current = (await client.get(f"/api/workflows/{definition_id}", headers=viewer)).json()
        assert current["version"] == "1.0.11" and current["name"] == "rev 11"

        versions = (
            await client.get(f"/api/v2/workflows/{definition_id}/versions?limit=100", headers=viewer)
        ).json()
        assert versions["total"] == 12
        assert [v["version"] for v in versions["items"]] == [f"1.0.{i}" for i in range(12)]
        assert versions["items"][0]["name"] == "Sample Workflow" and versions["items"][0]["taskCount"] == 2

        v1 = await client.get(f"/api/workflows/{definition_id}/versions", headers=viewer)
        assert isinstance(v1.json(), list) and len(v1.json()) == 10

        old = (await client.get(f"/api/workflows/{definition_id}/versions/1.0.0", headers=viewer)).json()
        assert old == created
        problem(await client.get(f"/api/workflows/{definition_id}/versions/9.9.9", headers=viewer), 404)

    async def test_put_what_get_returned_is_accepted_and_read_only_fields_are_ignored(self, client, operator):
        created = await create(client, operator)
        echoed = copy.deepcopy(created)
        echoed["version"] = "7.7.7"
        echoed["createdAt"] = "1999-01-01T00:00:00.000Z"
        echoed["updatedAt"] = "1999-01-01T00:00:00.000Z"
        echoed["id"] = "12345"
        response = await client.put(f"/api/workflows/{created['id']}", json=echoed, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == created["id"]
        assert body["version"] == "1.0.1"
        assert body["createdAt"] == created["createdAt"]
        assert body["tasks"] == created["tasks"]
        assert body["synchronizationPoints"] == created["synchronizationPoints"]

    async def test_invalid_update_changes_nothing(self, client, operator):
        created = await create(client, operator)
        bad = {**SPEC_UPDATE, "tasks": [{"name": "a", "dependencies": ["task-1"]}]}
        problem(await client.put(f"/api/workflows/{created['id']}", json=bad, headers=operator), 422)
        current = (await client.get(f"/api/workflows/{created['id']}", headers=operator)).json()
        assert current == created
        versions = (await client.get(f"/api/workflows/{created['id']}/versions", headers=operator)).json()
        assert [v["version"] for v in versions] == ["1.0.0"]

    async def test_unknown_id_is_404(self, client, operator):
        problem(await client.put("/api/workflows/424242", json=SPEC_UPDATE, headers=operator), 404)

    async def test_viewer_cannot_update(self, client, operator, viewer):
        created = await create(client, operator)
        problem(await client.put(f"/api/workflows/{created['id']}", json=SPEC_UPDATE, headers=viewer), 403)

    async def test_concurrent_updates_never_lose_a_version(self, client, operator):
        created = await create(client, operator)
        bodies = [{**SPEC_CREATE, "name": f"writer {i}"} for i in range(5)]
        responses = await asyncio.gather(
            *(client.put(f"/api/workflows/{created['id']}", json=b, headers=operator) for b in bodies)
        )
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 409}, statuses
        for r in responses:
            if r.status_code == 409:
                problem(r, 409)
        succeeded = [r.json() for r in responses if r.status_code == 200]
        versions = (await client.get(f"/api/workflows/{created['id']}/versions", headers=operator)).json()
        assert len(versions) == 1 + len(succeeded)
        assert sorted(v["version"] for v in versions[1:]) == sorted(s["version"] for s in succeeded)


class TestDeleteDefinition:
    async def test_delete_then_404(self, client, operator):
        created = await create(client, operator)
        response = await client.delete(f"/api/workflows/{created['id']}", headers=operator)
        assert response.status_code == 204 and response.content == b""
        problem(await client.get(f"/api/workflows/{created['id']}", headers=operator), 404)
        problem(await client.get(f"/api/workflows/{created['id']}/versions", headers=operator), 404)
        problem(await client.put(f"/api/workflows/{created['id']}", json=SPEC_UPDATE, headers=operator), 404)
        problem(await client.delete(f"/api/workflows/{created['id']}", headers=operator), 404)
        assert (await client.get("/api/workflows", headers=operator)).json() == []

    async def test_viewer_cannot_delete(self, client, operator, viewer):
        created = await create(client, operator)
        problem(await client.delete(f"/api/workflows/{created['id']}", headers=viewer), 403)
        assert (await client.get(f"/api/workflows/{created['id']}", headers=viewer)).status_code == 200
