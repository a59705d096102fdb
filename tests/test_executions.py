"""Executions over REST against the real Temporal dev server, a real worker and both databases."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.conftest import problem, running_worker


@pytest.fixture
def settings(engine_settings):
    return engine_settings


FINISHED = ("COMPLETED", "FAILED", "CANCELLED")


async def define(
    client: httpx.AsyncClient, headers: dict, tasks: list[dict], sync_points: list[dict] | None = None
) -> str:
    body = {"name": "test", "tasks": tasks, "synchronizationPoints": sync_points or []}
    response = await client.post("/api/workflows", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def start(
    client: httpx.AsyncClient, headers: dict, definition_id: str, context: dict | None = None
) -> dict:
    body = {
        "workflowDefinitionId": definition_id,
        **({"initialContext": context} if context is not None else {}),
    }
    response = await client.post("/api/executions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def wait_for(client, headers, execution_id, predicate, timeout: float = 30, path: str = "") -> dict:
    body: dict = {}
    for _ in range(int(timeout * 20)):
        body = (await client.get(f"/api/v2/executions/{execution_id}{path}", headers=headers)).json()
        if predicate(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out; last state: {json.dumps(body, indent=1)}")


async def finished(client, headers, execution_id, timeout: float = 30) -> dict:
    return await wait_for(client, headers, execution_id, lambda b: b["status"] in FINISHED, timeout)


def task(body: dict, task_id: str) -> dict:
    return next(t for t in body["taskExecutions"] if t["taskDefinitionId"] == task_id)


class TestStartExecution:
    async def test_spec_shape_and_completion(self, client, operator, worker):
        definition_id = await define(
            client, operator, [{"name": "Task 1"}, {"name": "Task 2", "dependencies": ["task-1"]}]
        )
        response = await client.post(
            "/api/executions",
            json={"workflowDefinitionId": definition_id, "initialContext": {"key": "value"}},
            headers=operator,
        )
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/vnd.workflow-orchestration.v1+json"
        body = response.json()
        assert set(body) == {
            "id",
            "workflowDefinitionId",
            "status",
            "startTime",
            "endTime",
            "taskExecutions",
            "context",
        }
        assert body["workflowDefinitionId"] == definition_id
        assert body["status"] == "RUNNING" and body["endTime"] is None and body["taskExecutions"] == []
        assert body["context"]["data"] == '{"key":"value"}' and body["context"]["version"] == 1
        assert body["context"]["id"] == body["id"]

        final = await finished(client, operator, body["id"])
        assert final["status"] == "COMPLETED" and final["endTime"] >= final["startTime"]
        assert [t["taskDefinitionId"] for t in final["taskExecutions"]] == ["task-1", "task-2"]
        first, second = final["taskExecutions"]
        assert first["status"] == second["status"] == "COMPLETED"
        assert first["attempts"] == 1 and first["error"] is None
        assert first["endTime"] <= second["startTime"], "task-2 starts after task-1 ends"
        assert final["context"]["data"] == {
            "key": "value",
            "task-1-result": "success",
            "task-2-result": "success",
        }
        assert final["context"]["version"] == 3

        v1 = (await client.get(f"/api/executions/{body['id']}", headers=operator)).json()
        assert json.loads(v1["context"]["data"]) == final["context"]["data"]
        assert set(v1["taskExecutions"][0]) == {
            "id",
            "taskDefinitionId",
            "status",
            "startTime",
            "endTime",
            "attempts",
            "error",
            "resources",
        }

    async def test_unknown_definition_is_404(self, client, operator):
        body = problem(
            await client.post("/api/executions", json={"workflowDefinitionId": "999"}, headers=operator), 404
        )
        assert "999" in body["detail"]
        assert (await client.get("/api/v2/executions", headers=operator)).json()["total"] == 0

    async def test_viewer_cannot_start(self, client, operator, viewer):
        definition_id = await define(client, operator, [{"name": "a"}])
        problem(
            await client.post(
                "/api/executions", json={"workflowDefinitionId": definition_id}, headers=viewer
            ),
            403,
        )

    @pytest.mark.parametrize(
        ("body", "pointer"),
        [
            ({}, "#/workflowDefinitionId"),
            ({"workflowDefinitionId": "1", "initialContext": "text"}, "#/initialContext"),
            ({"workflowDefinitionId": "1", "extra": 1}, "#/extra"),
        ],
    )
    async def test_bad_body_is_422(self, client, operator, body, pointer):
        result = problem(await client.post("/api/executions", json=body, headers=operator), 422)
        assert pointer in {e.get("pointer") for e in result["errors"]}

    async def test_idempotency_key_returns_the_first_execution(self, client, operator, worker):
        definition_id = await define(client, operator, [{"name": "a"}])
        key = {"Idempotency-Key": "order-42"}
        first = await start(client, {**operator, **key}, definition_id, {"n": 1})
        again = await start(client, {**operator, **key}, definition_id, {"n": 1})
        assert again["id"] == first["id"]
        listed = (await client.get("/api/v2/executions", headers=operator)).json()
        assert listed["total"] == 1
        other = await client.post(
            "/api/executions",
            json={"workflowDefinitionId": definition_id, "initialContext": {"n": 2}},
            headers={**operator, **key},
        )
        assert "different request" in problem(other, 422)["detail"]
        await finished(client, operator, first["id"])

    async def test_concurrent_starts_with_one_key_start_once(self, client, operator, worker):
        definition_id = await define(client, operator, [{"name": "a"}])
        headers = {**operator, "Idempotency-Key": "burst"}
        responses = await asyncio.gather(
            *(
                client.post("/api/executions", json={"workflowDefinitionId": definition_id}, headers=headers)
                for _ in range(5)
            )
        )
        assert {r.status_code for r in responses} == {201}
        assert len({r.json()["id"] for r in responses}) == 1

    async def test_temporal_down_is_503_and_stores_nothing(self, database_url, tmp_path):
        from api.app import create_app
        from tests.conftest import ADMIN_PASSWORD, login, make_settings

        app = create_app(make_settings(database_url, tmp_path))  # nothing listens at its Temporal address
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = await login(client, "admin", ADMIN_PASSWORD)
                definition_id = await define(client, headers, [{"name": "a"}])
                response = await client.post(
                    "/api/executions", json={"workflowDefinitionId": definition_id}, headers=headers
                )
                assert "Temporal" in problem(response, 503)["detail"]
                assert (await client.get("/api/v2/executions", headers=headers)).json()["total"] == 0

    async def test_oversized_initial_context_is_422(self, client, operator):
        definition_id = await define(client, operator, [{"name": "a"}])
        big = {"blob": "x" * (1024 * 1024)}
        result = problem(
            await client.post(
                "/api/executions",
                json={"workflowDefinitionId": definition_id, "initialContext": big},
                headers=operator,
            ),
            422,
        )
        assert result["errors"][0]["pointer"] == "#/initialContext"


class TestEngine:
    async def test_fan_out_fan_in_with_a_sync_point(self, client, operator, worker):
        tasks = [{"id": "split", "name": "split"}]
        tasks += [{"id": f"w{i}", "name": f"w{i}", "dependencies": ["split"]} for i in range(5)]
        tasks += [{"id": "join", "name": "join", "dependencies": ["gate"]}]
        gate = [{"id": "gate", "name": "All workers done", "requiredTasks": [f"w{i}" for i in range(5)]}]
        execution = await start(client, operator, await define(client, operator, tasks, gate))
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED"
        split, join = task(final, "split"), task(final, "join")
        workers = [task(final, f"w{i}") for i in range(5)]
        assert all(w["startTime"] >= split["endTime"] for w in workers)
        assert join["startTime"] >= max(w["endTime"] for w in workers)
        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        names = [m["name"] for m in progress["milestones"]]
        assert names == ["Initialization", "All workers done", "Completion"]
        assert all(m["achieved"] and m["achievedAt"] for m in progress["milestones"])
        assert progress["completedTasks"] == progress["totalTasks"] == 7

    async def test_failed_task_blocks_dependents_while_other_branches_go_on(
        self, client, operator, worker, loopback
    ):
        loopback.route("/broken", status=404, json={"error": "nope"})
        tasks = [
            {"id": "call", "name": "call", "type": "http", "input": {"url": loopback.url_for("/broken")}},
            {"id": "after", "name": "after", "dependencies": ["call"]},
            {"id": "other", "name": "other"},
            {"id": "other2", "name": "other2", "dependencies": ["other"]},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "FAILED"
        assert "call" in final["error"]
        call = task(final, "call")
        assert call["status"] == "FAILED" and call["attempts"] == 1, "a 4xx is not retried"
        assert "404" in call["error"]
        assert call["resources"]["worker"] == "test-worker"
        assert task(final, "other2")["status"] == "COMPLETED"
        assert all(t["taskDefinitionId"] != "after" for t in final["taskExecutions"]), (
            "a blocked task never starts"
        )
        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        assert progress["completedTasks"] == 2 and progress["totalTasks"] == 4
        assert len(progress["blockers"]) == 1
        blocker = progress["blockers"][0]
        assert blocker["taskExecutionId"] == call["id"] and blocker["resolvedAt"] is None
        assert "call" in blocker["description"] and "404" in blocker["description"]
        assert progress["estimatedCompletion"] is None

    async def test_server_errors_are_retried_per_the_policy(self, client, operator, worker, loopback):
        loopback.route("/flaky", status=[503, 502, 200], json={"ok": True})
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": loopback.url_for("/flaky")},
                "retryPolicy": {"maxAttempts": 5, "initialInterval": 0.1, "backoffCoefficient": 1},
            }
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED"
        assert task(final, "call")["attempts"] == 3
        assert final["context"]["data"]["call-result"]["body"] == {"ok": True}
        assert len(loopback.requests_to("/flaky")) == 3

    async def test_unknown_task_type_fails_clearly_after_its_attempts(self, client, operator, worker):
        # Retried: another worker of the queue may have the type (tests/test_custom_workers.py).
        retry = {"maxAttempts": 2, "initialInterval": 0.1}
        tasks = [{"id": "t", "name": "t", "type": "teleport", "retryPolicy": retry}]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        failed = task(final, "t")
        assert failed["status"] == "FAILED" and failed["attempts"] == 2
        assert "UnknownTaskType" in failed["error"] and "'teleport'" in failed["error"]

    async def test_context_reaches_tasks_through_templates(self, client, operator, worker, loopback):
        loopback.route("/first", json={"orderId": 17})
        loopback.route("/orders/17", method="POST", json={"shipped": True})
        tasks = [
            {"id": "get", "name": "get", "type": "http", "input": {"url": loopback.url_for("/first")}},
            {
                "id": "post",
                "name": "post",
                "type": "http",
                "dependencies": ["get"],
                "input": {
                    "method": "POST",
                    "url": loopback.url + "/orders/${get-result.body.orderId}",
                    "body": {"customer": "${customer}"},
                },
            },
        ]
        execution = await start(client, operator, await define(client, operator, tasks), {"customer": "ACME"})
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED", final
        assert loopback.requests_to("/orders/17")[0].json() == {"customer": "ACME"}

    async def test_python_task_runs_a_registered_function(self, client, operator, worker):
        tasks = [
            {
                "id": "count",
                "name": "count",
                "type": "python",
                "input": {"function": "word_count", "text": "a b c\nd"},
            }
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED", final
        assert final["context"]["data"]["count-result"]["words"] == 4

    async def test_task_routed_to_its_queue_records_where_it_ran(
        self, client, operator, worker, temporal_env, settings
    ):
        requirements = {"gpu": 1, "memory": 512, "queue": f"{settings.default_task_queue}-gpu"}
        tasks = [{"id": "train", "name": "train", "resourceRequirements": requirements}]
        execution = await start(client, operator, await define(client, operator, tasks))
        # Nobody serves the GPU queue yet: the engine notices and says so.
        blocked = await wait_for(
            client, operator, execution["id"], lambda p: p["blockers"], timeout=20, path="/progress"
        )
        assert "No worker polls task queue" in blocked["blockers"][0]["description"]
        async with running_worker(
            temporal_env.client,
            settings,
            "--queue",
            requirements["queue"],
            "--gpu",
            "2",
            identity="gpu-worker",
        ):
            final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED"
        assert task(final, "train")["resources"] == {
            "worker": "gpu-worker",
            "queue": requirements["queue"],
            "requirements": {
                "cpu": None,
                "memory": 512,
                "storage": None,
                "gpu": 1,
                "custom": None,
                "queue": requirements["queue"],
            },
        }
        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        assert progress["blockers"][0]["resolvedAt"] is not None

    async def test_operators_find_the_execution_in_temporal(
        self, client, operator, worker, temporal_env, settings
    ):
        definition_id = await define(client, operator, [{"name": "a"}])
        execution = await start(client, operator, definition_id)
        await finished(client, operator, execution["id"])
        workflow_id = f"{settings.workflow_id_prefix}-{definition_id}-{execution['id']}"
        description = await temporal_env.client.get_workflow_handle(workflow_id).describe()
        assert description.workflow_type == "Interpreter"
        assert (await description.memo())["executionId"] == execution["id"]
        found: list[str] = []
        for _ in range(50):  # visibility is eventually consistent
            query = f'WfoExecutionId="{execution["id"]}" AND WfoDefinitionId="{definition_id}"'
            found = [w.id async for w in temporal_env.client.list_workflows(query)]
            if workflow_id in found:
                break
            await asyncio.sleep(0.1)
        assert workflow_id in found


class TestListExecutions:
    async def test_filters_and_pagination(self, client, operator, viewer, worker, loopback):
        loopback.route("/bad", status=400, json={})
        ok = await define(client, operator, [{"name": "a"}])
        bad = await define(
            client, operator, [{"name": "a", "type": "http", "input": {"url": loopback.url_for("/bad")}}]
        )
        ids = [(await start(client, operator, ok))["id"] for _ in range(3)] + [
            (await start(client, operator, bad))["id"]
        ]
        for execution_id in ids:
            await finished(client, operator, execution_id)
        listed = (await client.get("/api/executions", headers=viewer)).json()
        assert [e["id"] for e in listed] == list(reversed(ids)), "newest first"
        failed = (await client.get("/api/executions?status=FAILED", headers=viewer)).json()
        assert [e["id"] for e in failed] == [ids[3]]
        of_ok = (
            await client.get(f"/api/v2/executions?workflowDefinitionId={ok}&limit=2", headers=viewer)
        ).json()
        assert of_ok["total"] == 3 and len(of_ok["items"]) == 2
        assert (await client.get("/api/v2/executions?workflowDefinitionId=nope", headers=viewer)).json()[
            "total"
        ] == 0
        body = problem(await client.get("/api/executions?status=SLEEPING", headers=viewer), 422)
        assert body["errors"][0]["parameter"] == "status"


class TestTasksOfAnExecution:
    async def test_status_filter_and_pagination(self, client, operator, worker, loopback):
        loopback.route("/bad", status=400, json={})
        tasks = [{"id": f"t{i}", "name": f"t{i}"} for i in range(4)]
        tasks.append({"id": "bad", "name": "bad", "type": "http", "input": {"url": loopback.url_for("/bad")}})
        execution = await start(client, operator, await define(client, operator, tasks))
        await finished(client, operator, execution["id"])
        everything = (
            await client.get(f"/api/executions/{execution['id']}/tasks?limit=100", headers=operator)
        ).json()
        assert len(everything) == 5
        failed = (
            await client.get(f"/api/executions/{execution['id']}/tasks?status=FAILED", headers=operator)
        ).json()
        assert [t["taskDefinitionId"] for t in failed] == ["bad"]
        page = (
            await client.get(f"/api/v2/executions/{execution['id']}/tasks?limit=2&offset=1", headers=operator)
        ).json()
        assert page["total"] == 5 and len(page["items"]) == 2
        problem(
            await client.get(f"/api/executions/{execution['id']}/tasks?status=DONE", headers=operator), 422
        )
        problem(await client.get("/api/executions/424242/tasks", headers=operator), 404)

    async def test_unknown_execution_is_404(self, client, viewer, operator):
        for path in ("/api/executions/77", "/api/executions/x/progress", "/api/executions/77/tasks"):
            problem(await client.get(path, headers=viewer), 404)
        problem(await client.post("/api/executions/77/cancel", headers=operator), 404)
        problem(await client.post("/api/executions/77/cancel", headers=viewer), 403)


class TestRetryTask:
    async def test_reopens_a_failed_execution_and_never_reruns_completed_tasks(
        self, client, operator, worker, loopback
    ):
        loopback.route("/once", json={"n": 1})
        loopback.route("/flaky", status=[500, 200], json={"ok": True})
        tasks = [
            {"id": "first", "name": "first", "type": "http", "input": {"url": loopback.url_for("/once")}},
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "dependencies": ["first"],
                "input": {"url": loopback.url_for("/flaky")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "after", "name": "after", "dependencies": ["call"]},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        failed = await finished(client, operator, execution["id"])
        assert failed["status"] == "FAILED"
        call = task(failed, "call")

        response = await client.post(f"/api/tasks/{call['id']}/retry", headers=operator)
        assert response.status_code == 200, response.text
        retried = response.json()
        assert retried["id"] == call["id"] and retried["attempts"] == 2
        assert retried["status"] in ("RUNNING", "COMPLETED")

        final = await finished(client, operator, execution["id"])
        assert final["id"] == execution["id"] and final["status"] == "COMPLETED" and final["error"] is None
        assert task(final, "call")["attempts"] == 2
        assert task(final, "first")["attempts"] == 1
        assert len(loopback.requests_to("/once")) == 1, "completed tasks never run again"
        assert final["context"]["data"]["first-result"]["body"] == {"n": 1}
        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        assert progress["blockers"][0]["resolvedAt"] is not None
        assert progress["milestones"][-1]["achieved"]

    async def test_a_reopened_run_says_who_started_and_who_reopened_it(
        self, client, operator, admin, worker, loopback, temporal_env, settings
    ):
        loopback.route("/flaky", status=[500, 200], json={"ok": True})
        tasks = [
            {"id": "call", "name": "call", "type": "http", "input": {"url": loopback.url_for("/flaky")}, "retryPolicy": {"maxAttempts": 1}}
        ]  # fmt: skip
        definition_id = await define(client, operator, tasks)
        execution = await start(client, operator, definition_id)
        failed = await finished(client, operator, execution["id"])
        response = await client.post(f"/api/tasks/{task(failed, 'call')['id']}/retry", headers=admin)
        assert response.status_code == 200, response.text
        await finished(client, operator, execution["id"])
        workflow_id = f"{settings.workflow_id_prefix}-{definition_id}-{execution['id']}"
        memo = await (await temporal_env.client.get_workflow_handle(workflow_id).describe()).memo()
        me = (await client.get("/api/auth/me", headers=operator)).json()["username"]
        assert memo["executionId"] == execution["id"] and memo["definitionName"]
        assert memo["startedBy"] == me and memo["reopenedBy"] == "admin" and memo["reopenedFor"] == "call"

    async def test_retries_in_place_while_other_branches_run(self, client, operator, worker, loopback):
        loopback.route("/flaky", status=[500, 200], json={"ok": True})
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": loopback.url_for("/flaky")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "after", "name": "after", "dependencies": ["call"]},
            {"id": "gate", "name": "gate", "type": "approval"},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        running = await wait_for(
            client,
            operator,
            execution["id"],
            lambda b: any(t["status"] == "FAILED" for t in b["taskExecutions"]),
        )
        assert running["status"] == "RUNNING"
        call = task(running, "call")
        retried = (await client.post(f"/api/tasks/{call['id']}/retry", headers=operator)).json()
        assert retried["attempts"] == 2
        await wait_for(
            client,
            operator,
            execution["id"],
            lambda b: any(
                t["taskDefinitionId"] == "after" and t["status"] == "COMPLETED" for t in b["taskExecutions"]
            ),
        )
        gate = task(
            (await client.get(f"/api/v2/executions/{execution['id']}", headers=operator)).json(), "gate"
        )
        await client.post(f"/api/tasks/{gate['id']}/complete", json={"output": "ok"}, headers=operator)
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED"

    async def test_only_a_failed_task_can_be_retried(self, client, operator, viewer, worker):
        execution = await start(client, operator, await define(client, operator, [{"name": "a"}]))
        final = await finished(client, operator, execution["id"])
        done = final["taskExecutions"][0]
        body = problem(await client.post(f"/api/tasks/{done['id']}/retry", headers=operator), 409)
        assert "COMPLETED" in body["detail"]
        problem(await client.post(f"/api/tasks/{done['id']}/retry", headers=viewer), 403)
        problem(await client.post("/api/tasks/999999/retry", headers=operator), 404)


class TestCancelExecution:
    async def test_cancel_answers_with_the_cancelled_state(self, client, operator, worker, loopback):
        loopback.route("/slow", delay=60, json={})
        tasks = [
            {"id": "done", "name": "done"},
            {
                "id": "slow",
                "name": "slow",
                "type": "http",
                "dependencies": ["done"],
                "input": {"url": loopback.url_for("/slow")},
            },
            {"id": "never", "name": "never", "dependencies": ["slow"]},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        await wait_for(
            client,
            operator,
            execution["id"],
            lambda b: any(
                t["taskDefinitionId"] == "slow" and t["status"] == "RUNNING" for t in b["taskExecutions"]
            ),
        )
        await loopback.wait_for_requests_async(1, "/slow")
        response = await client.post(f"/api/executions/{execution['id']}/cancel", headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "CANCELLED" and body["endTime"] is not None
        assert task(body, "done")["status"] == "COMPLETED"
        slow = task(body, "slow")
        assert slow["status"] == "CANCELLED" and slow["endTime"] is not None
        assert json.loads(body["context"]["data"]) == {"done-result": "success"}
        again = problem(await client.post(f"/api/executions/{execution['id']}/cancel", headers=operator), 409)
        assert "CANCELLED" in again["detail"]

    async def test_cancelled_execution_cannot_be_reopened(self, client, operator, worker, loopback):
        loopback.route("/bad", status=400, json={})
        tasks = [
            {"id": "bad", "name": "bad", "type": "http", "input": {"url": loopback.url_for("/bad")}},
            {"id": "gate", "name": "gate", "type": "approval"},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        running = await wait_for(
            client,
            operator,
            execution["id"],
            lambda b: any(t["status"] == "FAILED" for t in b["taskExecutions"]),
        )
        await client.post(f"/api/executions/{execution['id']}/cancel", headers=operator)
        problem(await client.post(f"/api/tasks/{task(running, 'bad')['id']}/retry", headers=operator), 409)


class TestApproval:
    async def test_complete_with_output(self, client, operator, viewer, worker):
        tasks = [
            {"id": "ok", "name": "ok", "type": "approval"},
            {"id": "next", "name": "next", "dependencies": ["ok"]},
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        waiting = await wait_for(client, operator, execution["id"], lambda b: bool(b["taskExecutions"]))
        approval = task(waiting, "ok")
        assert approval["status"] == "WAITING"
        progress = (await client.get(f"/api/executions/{execution['id']}/progress", headers=operator)).json()
        assert progress["blockers"][0]["taskExecutionId"] == approval["id"]
        assert "approval" in progress["blockers"][0]["description"]
        problem(
            await client.post(f"/api/tasks/{approval['id']}/complete", json={"output": 1}, headers=viewer),
            403,
        )
        response = await client.post(
            f"/api/tasks/{approval['id']}/complete", json={"output": {"by": "olivia"}}, headers=operator
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "COMPLETED"
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED"
        assert final["context"]["data"]["ok-result"] == {"by": "olivia"}
        problem(await client.post(f"/api/tasks/{approval['id']}/complete", json={}, headers=operator), 409)

    async def test_reject_fails_the_task(self, client, operator, worker):
        execution = await start(
            client, operator, await define(client, operator, [{"id": "ok", "name": "ok", "type": "approval"}])
        )
        waiting = await wait_for(client, operator, execution["id"], lambda b: bool(b["taskExecutions"]))
        response = await client.post(
            f"/api/tasks/{task(waiting, 'ok')['id']}/reject", json={"reason": "budget"}, headers=operator
        )
        assert response.json()["status"] == "FAILED" and "budget" in response.json()["error"]
        assert (await finished(client, operator, execution["id"]))["status"] == "FAILED"

    async def test_only_waiting_approvals_take_a_decision(self, client, operator, worker):
        execution = await start(client, operator, await define(client, operator, [{"id": "n", "name": "n"}]))
        final = await finished(client, operator, execution["id"])
        problem(
            await client.post(
                f"/api/tasks/{task(final, 'n')['id']}/complete", json={"output": 1}, headers=operator
            ),
            409,
        )


class TestSleep:
    async def test_sleep_task_waits_durably(self, client, operator, worker):
        tasks = [{"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1.5}}]
        execution = await start(client, operator, await define(client, operator, tasks))
        waiting = await wait_for(client, operator, execution["id"], lambda b: bool(b["taskExecutions"]))
        assert task(waiting, "nap")["status"] == "WAITING"
        final = await finished(client, operator, execution["id"])
        nap = task(final, "nap")
        assert nap["status"] == "COMPLETED"
        assert final["context"]["data"]["nap-result"] == {"sleptSeconds": 1.5}


class TestProgress:
    async def test_estimate_from_earlier_executions(self, client, operator, worker):
        tasks = [
            {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}},
            {"id": "b", "name": "b", "dependencies": ["nap"]},
        ]
        definition_id = await define(client, operator, tasks)
        first = await start(client, operator, definition_id)
        progress = (await client.get(f"/api/executions/{first['id']}/progress", headers=operator)).json()
        assert progress["estimatedCompletion"] is None, "no history and nothing finished yet"
        await finished(client, operator, first["id"])
        second = await start(client, operator, definition_id)
        estimate = (await client.get(f"/api/executions/{second['id']}/progress", headers=operator)).json()
        assert estimate["estimatedCompletion"] is not None
        assert estimate["estimatedCompletion"] >= second["startTime"]
        final = await finished(client, operator, second["id"])
        done = (await client.get(f"/api/executions/{second['id']}/progress", headers=operator)).json()
        assert done["estimatedCompletion"] == final["endTime"]


class TestLargeValues:
    async def test_result_over_the_limit_fails_the_task_clearly(self, client, operator, worker, loopback):
        loopback.route("/huge", text="x" * 300_000)
        tasks = [{"id": "big", "name": "big", "type": "http", "input": {"url": loopback.url_for("/huge")}}]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        big = task(final, "big")
        assert big["status"] == "FAILED" and big["attempts"] == 1
        assert "limit" in big["error"]


async def test_everything_runs_on_the_dev_server(temporal_env: WorkflowEnvironment):
    assert temporal_env.supports_time_skipping is False


class TestContextLimit:
    @pytest.fixture
    def settings(self, engine_settings):
        return engine_settings.model_copy(update={"max_context_bytes": 2048})

    async def test_a_result_that_would_overgrow_the_context_fails_its_task(
        self, client, operator, worker, loopback
    ):
        loopback.route("/chunk", text="y" * 800)
        tasks = [
            {
                "id": f"c{i}",
                "name": f"c{i}",
                "type": "http",
                "input": {"url": loopback.url_for("/chunk"), "responseHeaders": []},
                "dependencies": [f"c{i - 1}"] if i else [],
            }
            for i in range(3)
        ]
        execution = await start(client, operator, await define(client, operator, tasks))
        final = await finished(client, operator, execution["id"])
        assert [task(final, f"c{i}")["status"] for i in range(3)] == ["COMPLETED", "COMPLETED", "FAILED"]
        assert "over the limit of 2048 bytes" in task(final, "c2")["error"]
        assert len(json.dumps(final["context"]["data"], separators=(",", ":"))) <= 2048
        assert set(final["context"]["data"]) == {"c0-result", "c1-result"}
