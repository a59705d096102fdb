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
