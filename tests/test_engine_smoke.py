import asyncio
import json

import pytest

from tests.conftest import problem


@pytest.fixture
def settings(engine_settings):
    return engine_settings


async def wait_status(client, headers, execution_id, statuses=("COMPLETED", "FAILED", "CANCELLED"), timeout=30):
    for _ in range(int(timeout * 10)):
        body = (await client.get(f"/api/executions/{execution_id}", headers=headers)).json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"execution {execution_id} still {body['status']}: {body}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_chain_completes(client, operator, worker):
    definition = (await client.post("/api/workflows", json={
        "name": "chain", "tasks": [{"name": "a"}, {"name": "b", "dependencies": ["task-1"]}, {"name": "c", "dependencies": ["task-2"]}],
        "synchronizationPoints": [{"name": "ab", "requiredTasks": ["task-1", "task-2"]}]}, headers=operator)).json()
    started = await client.post("/api/executions", json={"workflowDefinitionId": definition["id"], "initialContext": {"key": "value"}}, headers=operator)
    assert started.status_code == 201, started.text
    body = started.json()
    print(body)
    final = await wait_status(client, operator, body["id"])
    print(json.dumps(final, indent=1))
    progress = (await client.get(f"/api/executions/{body['id']}/progress", headers=operator)).json()
    print(json.dumps(progress, indent=1))
    assert final["status"] == "COMPLETED"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_fail_retry_cancel_approval(client, operator, worker, loopback):
    loopback.route("/flaky", status=[500, 200], json={"ok": True})
    loopback.route("/slow", delay=30, json={})
    d = (await client.post("/api/workflows", json={
        "name": "f", "tasks": [
            {"id": "call", "name": "call", "type": "http", "input": {"url": loopback.url_for("/flaky")}, "retryPolicy": {"maxAttempts": 1}},
            {"id": "after", "name": "after", "dependencies": ["call"]},
            {"id": "side", "name": "side"},
        ]}, headers=operator)).json()
    e = (await client.post("/api/executions", json={"workflowDefinitionId": d["id"]}, headers=operator)).json()
    final = await wait_status(client, operator, e["id"])
    print(json.dumps(final, indent=1))
    assert final["status"] == "FAILED"
    failed = [t for t in final["taskExecutions"] if t["status"] == "FAILED"][0]
    progress = (await client.get(f"/api/executions/{e['id']}/progress", headers=operator)).json()
    print(json.dumps(progress, indent=1))
    r = await client.post(f"/api/tasks/{failed['id']}/retry", headers=operator)
    print(r.status_code, r.text)
    final = await wait_status(client, operator, e["id"])
    print(json.dumps(final, indent=1))
    assert final["status"] == "COMPLETED"
    progress = (await client.get(f"/api/executions/{e['id']}/progress", headers=operator)).json()
    print(json.dumps(progress, indent=1))

    d2 = (await client.post("/api/workflows", json={
        "name": "slow", "tasks": [{"id": "slow", "name": "slow", "type": "http", "input": {"url": loopback.url_for("/slow")}},
                                  {"id": "ok", "name": "ok"}]}, headers=operator)).json()
    e2 = (await client.post("/api/executions", json={"workflowDefinitionId": d2["id"]}, headers=operator)).json()
    await asyncio.sleep(1)
    r = await client.post(f"/api/executions/{e2['id']}/cancel", headers=operator)
    print(r.status_code, json.dumps(r.json(), indent=1))
    assert r.json()["status"] == "CANCELLED"
    r = await client.post(f"/api/executions/{e2['id']}/cancel", headers=operator)
    problem(r, 409)

    d3 = (await client.post("/api/workflows", json={
        "name": "appr", "tasks": [{"id": "ask", "name": "ask", "type": "approval"}, {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}}, {"id": "x", "name": "x", "type": "nosuchtype"}]}, headers=operator)).json()
    e3 = (await client.post("/api/executions", json={"workflowDefinitionId": d3["id"]}, headers=operator)).json()
    await asyncio.sleep(1)
    body = (await client.get(f"/api/executions/{e3['id']}", headers=operator)).json()
    print(json.dumps(body, indent=1))
    ask = [t for t in body["taskExecutions"] if t["taskDefinitionId"] == "ask"][0]
    r = await client.post(f"/api/tasks/{ask['id']}/complete", json={"output": {"approved": "yes"}}, headers=operator)
    print(r.status_code, r.text)
    final = await wait_status(client, operator, e3["id"])
    print(json.dumps(final, indent=1))
