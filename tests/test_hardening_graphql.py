"""GraphQL documents built to be expensive are refused cheaply, before login, against a real server.

The server is `python -m server` (a subprocess): a document whose validation ran on the event loop
for minutes would stop every other request, so each attack is sent while /healthz is asked again
and again, and every one of those checks must be answered. Bounds are generous (seconds, not
milliseconds): what they catch is validation that grows exponentially, not a slow machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
import uvicorn

from tests.conftest import ADMIN_PASSWORD, login, make_settings
from tests.graphql_client import (
    PROTOCOLS,
    TRANSPORT_WS,
    GraphQLWebSocket,
    SubscriptionError,
    bearer,
    data_of,
    error_of,
    gql,
)
from tests.processes import ApiClient, free_port, running_processes, server_client, wait_http_ready
from tests.test_graphql import REJECT, START, create_definition, start_execution, waiting

pytestmark = pytest.mark.slow

T = TypeVar("T")

#: Fragments in the attack documents: each spreads the next one twice, so a walk that follows
#: every spread visits 2**ATTACK_FRAGMENTS selections.
ATTACK_FRAGMENTS = 30
#: How long an attack may take to be answered: a busy 2-core machine does it in well under a second.
ANSWER_WITHIN = 30.0
#: How long /healthz may take while an attack is handled: only a blocked event loop misses it.
HEALTHZ_WITHIN = 5.0


def doubling(root: str, on: str, *, leaf: str = "id", alias: bool = False) -> str:
    """`root` spreading F0, where each fragment F<i> spreads F<i+1> twice (2**n paths, n fragments)."""
    fragments = []
    for i in range(ATTACK_FRAGMENTS):
        extra = f"a{i}: {leaf} " if alias else ""
        fragments.append(f"fragment F{i} on {on} {{ {extra}...F{i + 1} ...F{i + 1} }}")
    fragments.append(f"fragment F{ATTACK_FRAGMENTS} on {on} {{ {leaf} }}")
    return root + "\n" + "\n".join(fragments)


QUERY_ATTACK = doubling("{ me { ...F0 } }", "User")
ALIAS_ATTACK = doubling("{ me { ...F0 } }", "User", alias=True)
SUBSCRIPTION_ATTACK = doubling(
    'subscription { workflowExecutionUpdated(id: "1") { ...F0 } }', "WorkflowExecution"
)
#: The doubling chain closed into a cycle: refused for the cycle, at no extra cost.
CYCLE_ATTACK = QUERY_ATTACK.replace(
    f"fragment F{ATTACK_FRAGMENTS} on User {{ id }}", f"fragment F{ATTACK_FRAGMENTS} on User {{ id ...F0 }}"
)


@dataclass
class Server:
    url: str
    http: httpx.AsyncClient
    tokens: dict[str, str]
    settings: Any

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One API process (SQLite, no Temporal: nothing here runs an execution) and a viewer."""
    tmp = tmp_path_factory.mktemp("hardening-graphql")
    settings = make_settings(f"sqlite:///{tmp / 'wfo.db'}", tmp, log_level="WARNING")
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        api = procs.start_api(settings, port)
        url = f"http://127.0.0.1:{port}"
        await wait_http_ready(api, f"{url}/healthz")
        async with server_client(url, timeout=ANSWER_WITHIN * 2) as http:
            admin = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
            response = await http.post(
                "/api/users",
                json={"username": "victor", "password": "victor-password-123", "role": "viewer"},
                headers=admin.headers,
            )
            assert response.status_code == 201, response.text
            viewer = await ApiClient.login(http, "victor", "victor-password-123")
            tokens = {"viewer": viewer.headers["Authorization"].removeprefix("Bearer ")}
            yield Server(url, http, tokens, settings)
        api.check_alive()


async def while_healthy(server: Server, work: Awaitable[T]) -> T:
    """Await `work` (within ANSWER_WITHIN) while /healthz is asked over and over; each ask must be
    answered within HEALTHZ_WITHIN, or the event loop was blocked by what `work` sent."""
    task = asyncio.ensure_future(asyncio.wait_for(work, ANSWER_WITHIN))
    asked = 0
    try:
        async with server_client(server.url, timeout=HEALTHZ_WITHIN) as health:
            while True:
                await asyncio.sleep(0.05)
                started = time.monotonic()
                try:
                    response = await health.get("/healthz")
                except httpx.TimeoutException:
                    pytest.fail(f"/healthz unanswered for {HEALTHZ_WITHIN}s while the document was handled")
                assert response.status_code == 200, response.text
                asked += 1
                if task.done():
                    break
                assert time.monotonic() - started < HEALTHZ_WITHIN
        return await task
    finally:
        task.cancel()


class TestFragmentExplosionOverHttp:
    async def test_doubling_fragments_are_refused_before_login(self, server: Server) -> None:
        result = await while_healthy(server, gql(server.http, QUERY_ATTACK))
        error = error_of(result, "QUERY_TOO_COMPLEX")
        assert error["extensions"]["cost"] > error["extensions"]["limit"] == server.settings.graphql_max_cost

    async def test_aliases_counted_through_fragments_are_refused(self, server: Server) -> None:
        result = await while_healthy(server, gql(server.http, ALIAS_ATTACK))
        codes = {e["extensions"]["code"] for e in result["errors"]}
        assert codes == {"GRAPHQL_VALIDATION_FAILED", "QUERY_TOO_COMPLEX"}, result
        assert any(
            f"Allowed: {server.settings.graphql_max_aliases}" in e["message"] for e in result["errors"]
        )
        assert result.get("data") is None

    async def test_a_fragment_cycle_is_refused_for_the_cycle_alone(self, server: Server) -> None:
        result = await while_healthy(server, gql(server.http, CYCLE_ATTACK))
        error = error_of(result, "GRAPHQL_VALIDATION_FAILED")
        assert "Cannot spread fragment 'F0' within itself" in error["message"]

    async def test_an_unknown_fragment_is_a_validation_error(self, server: Server) -> None:
        result = await gql(server.http, "{ me { ...Missing } }")
        assert "Unknown fragment 'Missing'" in error_of(result, "GRAPHQL_VALIDATION_FAILED")["message"]

    async def test_a_batch_of_attacks_is_refused_operation_by_operation(self, server: Server) -> None:
        batch = [{"query": QUERY_ATTACK}] * server.settings.graphql_max_batch

        async def send() -> httpx.Response:
            return await server.http.post("/graphql", json=batch)

        response = await while_healthy(server, send())
        assert response.status_code == 200, response.text
        assert [r["errors"][0]["extensions"]["code"] for r in response.json()] == ["QUERY_TOO_COMPLEX"] * len(
            batch
        )

    async def test_a_fair_query_through_fragments_still_works(self, server: Server) -> None:
        fair = "fragment U on User { id ...N } fragment N on User { username role } { me { ...U ...N } }"
        data = data_of(await gql(server.http, fair, headers=bearer(server.tokens["viewer"])))
        assert data["me"]["username"] == "victor" and data["me"]["role"] == "viewer"


class TestDocumentSize:
    async def test_a_document_over_the_token_limit_is_refused(self, server: Server) -> None:
        limit = server.settings.graphql_max_tokens
        document = "{ me { " + "id " * (limit + 10) + "} }"
        assert len(document.encode()) < server.settings.graphql_max_body_bytes
        error = error_of(await gql(server.http, document), "GRAPHQL_VALIDATION_FAILED")
        assert f"more than {limit} tokens" in error["message"]
        # `... on User { id }` is 6 tokens (graphql-core gives up on ~900 fields of one name in a selection).
        at_limit = "{ me { " + "... on User { id } " * ((limit - 10) // 6) + "} }"
        assert data_of(await gql(server.http, at_limit, headers=bearer(server.tokens["viewer"])))["me"]["id"]

    async def test_a_body_over_the_graphql_cap_is_413(self, server: Server) -> None:
        cap = server.settings.graphql_max_body_bytes
        padded = {"query": "{ me { id } }", "variables": {"pad": "x" * cap}}
        response = await server.http.post("/graphql", json=padded)
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert str(cap) in response.json()["detail"]


class TestFragmentExplosionOverWebSocket:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_a_doubling_subscription_is_refused(self, server: Server, protocol: str) -> None:
        async def attack() -> list[dict[str, Any]]:
            async with GraphQLWebSocket.open(server.ws_url, protocol, token=server.tokens["viewer"]) as ws:
                op = await ws.subscribe(SUBSCRIPTION_ATTACK)
                with pytest.raises(SubscriptionError) as refused:
                    await ws.next_data(op, timeout=ANSWER_WITHIN)
                return refused.value.errors

        errors = await while_healthy(server, attack())
        assert [e["extensions"]["code"] for e in errors] == ["QUERY_TOO_COMPLEX"], errors

    async def test_a_doubling_query_over_graphql_transport_ws_is_refused(self, server: Server) -> None:
        async def attack() -> list[dict[str, Any]]:
            async with GraphQLWebSocket.open(
                server.ws_url, TRANSPORT_WS, token=server.tokens["viewer"]
            ) as ws:
                op = await ws.subscribe(QUERY_ATTACK)
                with pytest.raises(SubscriptionError) as refused:
                    await ws.next_data(op, timeout=ANSWER_WITHIN)
                return refused.value.errors

        errors = await while_healthy(server, attack())
        assert [e["extensions"]["code"] for e in errors] == ["QUERY_TOO_COMPLEX"], errors

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_a_frame_over_the_graphql_cap_closes_the_socket_unparsed(
        self, server: Server, protocol: str
    ) -> None:
        # Anonymous: connection_init is the first frame, read before anyone is authenticated.
        cap = server.settings.graphql_max_body_bytes
        async with GraphQLWebSocket.open(server.ws_url, protocol, init=False) as ws:
            await ws.send({"type": "connection_init", "payload": {"pad": [[]] * cap}})
            code, _ = await ws.wait_closed()
        assert code == 1009, f"closed with {code}: 1009 (message too big) expected"


class TestWebSocketCapInTheApp:
    """`python -m server` has uvicorn refuse big frames itself; the app refuses them too, under a
    server left at uvicorn's default (16 MB), such as a gunicorn worker."""

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_a_big_message_closes_the_socket_under_any_server(self, tmp_path, protocol: str) -> None:
        from api.app import create_app

        settings = make_settings(f"sqlite:///{tmp_path / 'wfo.db'}", tmp_path, log_level="WARNING")
        port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                assert not serving.done(), "uvicorn did not start"
                await asyncio.sleep(0.05)
            async with GraphQLWebSocket.open(f"ws://127.0.0.1:{port}/graphql", protocol, init=False) as ws:
                await ws.send(
                    {"type": "connection_init", "payload": {"pad": "x" * settings.graphql_max_body_bytes}}
                )
                code, reason = await ws.wait_closed()
            assert code == 1009, f"closed with {code}: 1009 (message too big) expected"
            assert str(settings.graphql_max_body_bytes) in reason
        finally:
            server.should_exit = True
            await serving


#: Every field of a task execution.
TASK_EXECUTION_FIELDS = "id taskDefinitionId status startTime endTime attempts error resources sequence"


class TestListPricing:
    """An execution may hold WFO_MAX_TASKS task executions: a list without a `limit` is priced at that."""

    @pytest.mark.parametrize("fields", [TASK_EXECUTION_FIELDS, "id status attempts error"])
    async def test_the_tasks_of_a_hundred_executions_are_too_many(self, server: Server, fields: str) -> None:
        query = f"{{ workflowExecutions(limit: 100) {{ items {{ taskExecutions {{ {fields} }} }} }} }}"
        error = error_of(
            await gql(server.http, query, headers=bearer(server.tokens["viewer"])), "QUERY_TOO_COMPLEX"
        )
        assert error["extensions"]["cost"] > 100 * server.settings.max_tasks

    @pytest.mark.parametrize(
        "query",
        [
            f'{{ workflowExecution(id: "1") {{ id status taskExecutions {{ {TASK_EXECUTION_FIELDS} }} }} }}',
            f"{{ workflowExecutions(limit: 10) {{ items {{ id taskExecutions {{ {TASK_EXECUTION_FIELDS} }} }} }} }}",
            "{ workflowDefinitions(limit: 10) { items { id tasks { id name dependencies } } } }",
        ],
    )
    async def test_every_task_of_a_few_executions_is_fine(self, server: Server, query: str) -> None:
        result = await gql(server.http, query, headers=bearer(server.tokens["viewer"]))
        assert not result.get("errors") or result["errors"][0]["extensions"]["code"] == "NOT_FOUND", result


class TestMutationBounds:
    """Inputs GraphQL takes outside a REST body model get the same bounds as REST (422 there)."""

    @pytest.fixture
    def settings(self, engine_settings):
        return engine_settings

    async def test_an_idempotency_key_over_255_characters_is_bad_input(self, client, operator) -> None:
        definition_id = await create_definition(client, operator, [{"name": "a"}])
        for key in ("k" * 256, "nul\x00key"):
            variables = {"input": {"workflowDefinitionId": definition_id, "idempotencyKey": key}}
            error = error_of(await gql(client, START, variables, operator), "BAD_USER_INPUT")
            assert [e["pointer"] for e in error["extensions"]["errors"]] == ["#/idempotencyKey"], error
        executions = await gql(client, "{ workflowExecutions { total } }", headers=operator)
        assert data_of(executions)["workflowExecutions"]["total"] == 0, "nothing was started"

    async def test_a_rejection_reason_is_bounded_like_rest(self, client, operator, worker) -> None:
        definition_id = await create_definition(
            client, operator, [{"id": "gate", "name": "gate", "type": "approval"}]
        )
        execution_id = (await start_execution(client, operator, definition_id))["id"]
        approval = await waiting(client, operator, execution_id, "gate")
        for reason in ("r" * 2001, "nul\x00reason"):
            error = error_of(
                await gql(client, REJECT, {"id": approval["id"], "reason": reason}, operator),
                "BAD_USER_INPUT",
            )
            assert [e["pointer"] for e in error["extensions"]["errors"]] == ["#/reason"], error
        assert (await waiting(client, operator, execution_id, "gate"))["status"] == "WAITING"
        rejected = data_of(await gql(client, REJECT, {"id": approval["id"], "reason": "r" * 2000}, operator))
        assert rejected["rejectTask"]["status"] == "FAILED"


class TestConsolesInProduction:
    """Outside dev mode Swagger UI, GraphiQL and introspection are off unless switched on (ReDoc is
    never served: api/pages.pages_router says why)."""

    async def test_off_by_default(self, client, viewer) -> None:
        for path in ("/docs", "/redoc"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/graphql", headers={"Accept": "text/html"})).status_code == 404
        result = await gql(client, "{ __schema { queryType { name } } }", headers=viewer)
        assert result["data"] is None
        assert all("introspection has been disabled" in e["message"] for e in result["errors"])
        # The REST contract stays published: clients and tools generate code from it.
        assert (await client.get("/openapi.json")).status_code == 200

    @pytest.mark.parametrize(
        "switch", [{"dev_mode": True}, {"api_docs": True, "graphql_introspection": True}]
    )
    async def test_on_in_dev_mode_or_when_asked(self, database_url, tmp_path, switch) -> None:
        from api.app import create_app

        app = create_app(make_settings(database_url, tmp_path, **switch))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert "swagger" in (await http.get("/docs")).text.lower()
                assert (await http.get("/redoc")).status_code == 404
                graphiql = await http.get("/graphql", headers={"Accept": "text/html"})
                assert graphiql.status_code == 200 and "graphiql" in graphiql.text.lower()
                headers = await login(http, "admin", ADMIN_PASSWORD)
                schema = data_of(await gql(http, "{ __schema { queryType { name } } }", headers=headers))
                assert schema == {"__schema": {"queryType": {"name": "Query"}}}
