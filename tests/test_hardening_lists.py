"""Issue 10, item 5a: a page of GET /api/executions embeds every task execution of every execution
on it; big executions must not make one answer unbounded. Real engine, both databases."""

from __future__ import annotations

import re

import httpx
import pytest

from api.settings import Settings
from tests.test_executions import define, finished, start

MAX_ROWS = 100
MAX_BYTES = 64 * 1024


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    return engine_settings.model_copy(
        update={"execution_list_max_task_rows": MAX_ROWS, "execution_list_max_bytes": MAX_BYTES}
    )


def parallel(count: int) -> list[dict]:
    return [{"id": f"t{i}", "name": f"t{i}"} for i in range(count)]


def next_link(response: httpx.Response) -> str | None:
    found = re.fullmatch(r'<([^>]+)>; rel="next"', response.headers.get("link", ""))
    return found.group(1) if found else None


async def walk(client: httpx.AsyncClient, headers: dict, url: str) -> list[httpx.Response]:
    """Every page from `url` on, following Link rel=next."""
    pages: list[httpx.Response] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response)
        next_url = next_link(response)
        assert len(pages) < 50, "paging does not end"
    return pages


class TestListExecutionsBudget:
    async def test_big_executions_shrink_the_page_and_paging_reaches_every_one(
        self, client, operator, viewer, worker
    ):
        big = await start(client, operator, await define(client, operator, parallel(150)))
        forty = await define(client, operator, parallel(40))
        ids = [big["id"]] + [(await start(client, operator, forty))["id"] for _ in range(5)]
        for execution_id in ids:
            assert (await finished(client, operator, execution_id, timeout=120))["status"] == "COMPLETED"

        pages = await walk(client, viewer, "/api/executions?limit=100")
        bodies = [p.json() for p in pages]
        # Newest first: 40+40 | 40+40 | 40 (a third 40 or the 150 would pass 100 rows) | the 150 alone.
        assert [[e["id"] for e in body] for body in bodies] == [
            [ids[5], ids[4]],
            [ids[3], ids[2]],
            [ids[1]],
            [ids[0]],
        ]
        for body in bodies[:-1]:
            assert sum(len(e["taskExecutions"]) for e in body) <= MAX_ROWS
        # One execution larger than the budget is still shown whole (as GET /api/executions/{id} would).
        assert len(bodies[-1][0]["taskExecutions"]) == 150
        assert all(len(p.content) <= MAX_BYTES for p in pages)
        # The spec's shape, untouched.
        assert set(bodies[0][0]) == {
            "id",
            "workflowDefinitionId",
            "status",
            "startTime",
            "endTime",
            "taskExecutions",
            "context",
        }
        assert next_link(pages[0]) == "/api/executions?offset=2&limit=100"

        # v2 says so in its envelope: limit is the page's size, offset + limit the next page.
        v2 = (await client.get("/api/v2/executions?limit=100&offset=2", headers=viewer)).json()
        assert (v2["total"], v2["limit"], v2["offset"]) == (6, 2, 2)
        assert [e["id"] for e in v2["items"]] == [ids[3], ids[2]]
        # Filters carry over to the next page.
        filtered = await walk(client, viewer, f"/api/executions?limit=100&workflowDefinitionId={forty}")
        assert [e["id"] for p in filtered for e in p.json()] == list(reversed(ids[1:]))

    async def test_big_contexts_shrink_the_page_by_bytes(self, client, operator, viewer, worker):
        definition_id = await define(client, operator, parallel(1))
        ids = [
            (await start(client, operator, definition_id, {"blob": f"{n}" * 25_000}))["id"] for n in range(4)
        ]
        for execution_id in ids:
            await finished(client, operator, execution_id)
        for path in ("/api/executions?limit=100", "/api/v2/executions?limit=100"):
            pages = await walk(client, viewer, path)
            assert all(len(p.content) <= MAX_BYTES for p in pages), [len(p.content) for p in pages]
            listed = [e["id"] for p in pages for e in (p.json()["items"] if "/v2/" in path else p.json())]
            assert listed == list(reversed(ids))
            assert len(pages) == 2

    async def test_small_pages_are_unchanged(self, client, operator, viewer, worker):
        definition_id = await define(client, operator, parallel(3))
        ids = [(await start(client, operator, definition_id))["id"] for _ in range(3)]
        for execution_id in ids:
            await finished(client, operator, execution_id)
        whole = await client.get("/api/executions", headers=viewer)
        assert [e["id"] for e in whole.json()] == list(reversed(ids)) and "link" not in whole.headers
        first = await client.get("/api/executions?limit=2", headers=viewer)
        assert len(first.json()) == 2 and next_link(first) == "/api/executions?offset=2&limit=2"
        v2 = (await client.get("/api/v2/executions?limit=2", headers=viewer)).json()
        assert (v2["total"], v2["limit"], len(v2["items"])) == (3, 2, 2)
