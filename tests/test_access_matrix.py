"""Who may call what, decided on purpose and checked everywhere.

* Every REST route (from the OpenAPI document) against anonymous callers and each role, under
  `/api`, `/api/v1` and `/api/v2`: below its role a caller gets 401 or 403, at or above it
  anything but those. A route missing from ROUTES fails the test, so a new route must be placed.
* Every GraphQL root field (from the schema) the same way, over HTTP and over both WebSocket
  protocols (a WebSocket refuses anonymous callers at connection_init).
* Objects owned by a user (webhooks and their deliveries) are invisible and untouchable to
  another operator, under every version and on both transports; an admin sees them all.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
)

from api.graphql.schema import build_schema
from tests.conftest import ADMIN_PASSWORD, create_user, make_settings
from tests.graphql_client import LEGACY_WS, PROTOCOLS, TRANSPORT_WS, ConnectionRejected, GraphQLWebSocket, gql
from tests.processes import free_port, running_processes, wait_http_ready

ROLES = ["viewer", "operator", "admin"]
RANK = {"anonymous": 0, "viewer": 1, "operator": 2, "admin": 3}
VERSIONS = ["/api", "/api/v1", "/api/v2"]

#: Every REST route (method, path under /api) and the least role it needs; None: public.
ROUTES: dict[tuple[str, str], str | None] = {
    ("POST", "/api/auth/login"): None,
    ("GET", "/api/auth/me"): "viewer",
    ("GET", "/api/users"): "admin",
    ("POST", "/api/users"): "admin",
    ("GET", "/api/users/{user_id}"): "admin",
    ("PATCH", "/api/users/{user_id}"): "admin",
    ("POST", "/api/users/{user_id}/disable"): "admin",
    ("POST", "/api/users/{user_id}/enable"): "admin",
    ("POST", "/api/users/{user_id}/password"): "admin",
    ("GET", "/api/workflows"): "viewer",
    ("POST", "/api/workflows"): "operator",
    ("GET", "/api/workflows/{definition_id}"): "viewer",
    ("PUT", "/api/workflows/{definition_id}"): "operator",
    ("DELETE", "/api/workflows/{definition_id}"): "operator",
    ("GET", "/api/workflows/{definition_id}/versions"): "viewer",
    ("GET", "/api/workflows/{definition_id}/versions/{version}"): "viewer",
    ("POST", "/api/executions"): "operator",
    ("GET", "/api/executions"): "viewer",
    ("GET", "/api/executions/{execution_id}"): "viewer",
    ("POST", "/api/executions/{execution_id}/cancel"): "operator",
    ("POST", "/api/executions/{execution_id}/reconcile"): "operator",
    ("GET", "/api/executions/{execution_id}/tasks"): "viewer",
    ("GET", "/api/executions/{execution_id}/progress"): "viewer",
    ("POST", "/api/tasks/{task_execution_id}/retry"): "operator",
    ("POST", "/api/tasks/{task_execution_id}/complete"): "operator",
    ("POST", "/api/tasks/{task_execution_id}/reject"): "operator",
    ("GET", "/api/webhooks"): "viewer",
    ("POST", "/api/webhooks"): "operator",
    ("POST", "/api/webhooks/test"): "operator",
    ("GET", "/api/webhooks/{webhook_id}"): "viewer",
    ("PUT", "/api/webhooks/{webhook_id}"): "operator",
    ("DELETE", "/api/webhooks/{webhook_id}"): "operator",
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): "viewer",
    ("POST", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "operator",
}
#: Routes outside /api: probes and the GraphQL endpoint (whose fields are checked below).
OUTSIDE_API = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/graphql"), ("POST", "/graphql")}

#: Every GraphQL root field and the least role it needs.
FIELDS: dict[str, str] = {
    "Query.me": "viewer",
    "Query.workflowDefinition": "viewer",
    "Query.workflowDefinitions": "viewer",
    "Query.workflowDefinitionVersions": "viewer",
    "Query.workflowDefinitionVersion": "viewer",
    "Query.workflowExecution": "viewer",
    "Query.workflowExecutions": "viewer",
    "Query.taskExecutions": "viewer",
    "Query.webhooks": "viewer",
    "Query.webhook": "viewer",
    "Query.webhookDeliveries": "viewer",
    "Query.progressReport": "viewer",
    "Mutation.createWorkflowDefinition": "operator",
    "Mutation.updateWorkflowDefinition": "operator",
    "Mutation.deleteWorkflowDefinition": "operator",
    "Mutation.startWorkflowExecution": "operator",
    "Mutation.cancelWorkflowExecution": "operator",
    "Mutation.reconcileWorkflowExecution": "operator",
    "Mutation.retryTaskExecution": "operator",
    "Mutation.completeTask": "operator",
    "Mutation.rejectTask": "operator",
    "Mutation.registerWebhook": "operator",
    "Mutation.updateWebhook": "operator",
    "Mutation.deleteWebhook": "operator",
    "Mutation.redeliverWebhookDelivery": "operator",
    "Mutation.testWebhook": "operator",
    "Subscription.workflowExecutionUpdated": "viewer",
    "Subscription.progressReportUpdated": "viewer",
    "Subscription.taskExecutionUpdated": "viewer",
    "Subscription.executionEvents": "viewer",
}
DENIED = {"UNAUTHENTICATED", "FORBIDDEN"}
#: The legacy WebSocket protocol (subscriptions-transport-ws): subscriptions only.
LEGACY = LEGACY_WS


def allowed(role: str, needed: str | None) -> bool:
    return needed is None or RANK[role] >= RANK[needed]


# --- REST ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """Access control does not depend on the database: SQLite only, for speed."""
    return f"sqlite:///{tmp_path / 'wfo.db'}"


@pytest_asyncio.fixture
async def headers(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "anonymous": {},
        "viewer": await create_user(client, admin, "victor", "viewer"),
        "operator": await create_user(client, admin, "olivia", "operator"),
        "admin": admin,
    }


def _fill(path: str) -> str:
    """A path with its parameters filled in (ids nobody has)."""
    parts = []
    for part in path.split("/"):
        if part.startswith("{"):
            part = "9.9.9" if part == "{version}" else "424242"
        parts.append(part)
    return "/".join(parts)


class TestRestRoutes:
    async def test_every_route_is_in_the_table(self, app) -> None:
        documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
        assert documented - OUTSIDE_API == set(ROUTES), "place new routes in ROUTES (and remove gone ones)"

    @pytest.mark.parametrize("version", VERSIONS)
    async def test_each_role_gets_what_the_table_says(self, client, headers, version: str) -> None:
        wrong = []
        for (method, path), needed in ROUTES.items():
            url = version + _fill(path).removeprefix("/api")
            body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
            for role in ["anonymous", *ROLES]:
                response = await client.request(method, url, headers=headers[role], **body)
                if allowed(role, needed):
                    ok = response.status_code not in (401, 403)
                else:
                    ok = response.status_code == (401 if role == "anonymous" else 403)
                    ok = ok and response.headers["content-type"] == "application/problem+json"
                if not ok:
                    wrong.append(f"{role} {method} {url}: {response.status_code} (needs {needed})")
        assert not wrong, "\n".join(wrong)


# --- GraphQL -------------------------------------------------------------------------------------


def root_fields(schema: GraphQLSchema) -> dict[str, tuple[str, str]]:
    """'Type.field' -> (operation keyword, a document calling it with placeholder arguments)."""
    fields = {}
    for keyword, root in (
        ("query", schema.query_type),
        ("mutation", schema.mutation_type),
        ("subscription", schema.subscription_type),
    ):
        if root is None:
            continue
        for name, field in root.fields.items():
            arguments = ", ".join(
                f"{arg}: {_value(a.type)}"
                for arg, a in field.args.items()
                if isinstance(a.type, GraphQLNonNull)
            )
            call = f"{name}({arguments})" if arguments else name
            fields[f"{root.name}.{name}"] = (keyword, f"{keyword} {{ {call}{_selection(field.type)} }}")
    return fields


def _value(kind: Any) -> str:
    """A literal of the type, for a placeholder argument (ids nobody has, minimal inputs)."""
    if isinstance(kind, GraphQLNonNull):
        return _value(kind.of_type)
    if isinstance(kind, GraphQLList):
        return "[]"
    if isinstance(kind, GraphQLEnumType):
        return next(iter(kind.values))
    if isinstance(kind, GraphQLInputObjectType):
        required = [
            f"{n}: {_value(f.type)}" for n, f in kind.fields.items() if isinstance(f.type, GraphQLNonNull)
        ]
        return "{" + ", ".join(required) + "}"
    assert isinstance(kind, GraphQLScalarType), kind
    return {"Int": "1", "Float": "1.0", "Boolean": "false", "ID": '"424242"'}.get(kind.name, '"x"')


def _selection(kind: Any) -> str:
    while isinstance(kind, GraphQLNonNull | GraphQLList):
        kind = kind.of_type
    return (
        " { __typename }"
        if isinstance(kind, GraphQLObjectType | GraphQLUnionType | GraphQLInterfaceType)
        else ""
    )


def codes(errors: list[dict[str, Any]] | None) -> set[str]:
    return {e.get("extensions", {}).get("code") for e in errors or []}


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict[str, tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("schema")
    return root_fields(build_schema(make_settings(f"sqlite:///{tmp / 'wfo.db'}", tmp))._schema)


class TestGraphQLFields:
    def test_every_field_is_in_the_table(self, fields) -> None:
        assert set(fields) == set(FIELDS), "place new fields in FIELDS (and remove gone ones)"

    async def test_each_role_gets_what_the_table_says_over_http(self, client, headers, fields) -> None:
        wrong = []
        for name, (keyword, document) in fields.items():
            if keyword == "subscription":
                continue  # over WebSocket only (below)
            for role in ["anonymous", *ROLES]:
                got = codes((await gql(client, document, headers=headers[role])).get("errors"))
                expected = (
                    set()
                    if allowed(role, FIELDS[name])
                    else {"UNAUTHENTICATED" if role == "anonymous" else "FORBIDDEN"}
                )
                if got & DENIED != expected:
                    wrong.append(f"{role} {name}: {sorted(c for c in got if c)} (needs {FIELDS[name]})")
        assert not wrong, "\n".join(wrong)


# --- over WebSocket, and owned objects, on a real server -------------------------------------------


@dataclass
class Server:
    url: str
    ws: str
    tokens: dict[str, str]
    http: httpx.AsyncClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory) -> AsyncIterator[Server]:
    """The API as a process of its own (SQLite; Temporal is not needed for access checks)."""
    tmp = tmp_path_factory.mktemp("access")
    settings = make_settings(f"sqlite:///{tmp / 'wfo.db'}", tmp, log_level="WARNING")
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        api = procs.start_api(settings, port)
        await wait_http_ready(api, f"http://127.0.0.1:{port}/healthz")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False
        ) as http:
            login = await http.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            tokens = {"admin": login.json()["accessToken"]}
            admin = {"Authorization": f"Bearer {tokens['admin']}"}
            for username, role in (("victor", "viewer"), ("olivia", "operator"), ("oscar", "operator")):
                password = f"{username}-password-123"
                created = await http.post(
                    "/api/users",
                    json={"username": username, "password": password, "role": role},
                    headers=admin,
                )
                assert created.status_code == 201, created.text
                answer = await http.post("/api/auth/login", json={"username": username, "password": password})
                tokens[username if username == "oscar" else role] = answer.json()["accessToken"]
            yield Server(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", tokens, http)


class TestGraphQLOverWebSocket:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_anonymous_connections_are_refused(self, server: Server, protocol: str) -> None:
        with pytest.raises(ConnectionRejected):
            async with GraphQLWebSocket.open(server.ws, protocol):
                pass

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    @pytest.mark.parametrize("role", ROLES)
    async def test_each_role_gets_what_the_table_says(
        self, server: Server, fields, protocol: str, role: str
    ) -> None:
        wrong = []
        async with GraphQLWebSocket.open(server.ws, protocol, token=server.tokens[role]) as ws:
            for name, (keyword, document) in fields.items():
                if protocol == LEGACY and keyword != "subscription":
                    continue  # refused alike for everyone (TestLegacyProtocol)
                op = await ws.subscribe(document)
                message = await ws.receive(op)
                payload = message.payload
                errors = payload if isinstance(payload, list) else (payload or {}).get("errors")
                got = codes(errors)
                expected = set() if allowed(role, FIELDS[name]) else {"FORBIDDEN"}
                if got & DENIED != expected:
                    wrong.append(
                        f"{role} {name}: {message.kind} {sorted(c for c in got if c)} (needs {FIELDS[name]})"
                    )
                if message.kind == "next":
                    await ws.stop(op)
        assert not wrong, "\n".join(wrong)


class TestLegacyProtocol:
    async def test_queries_and_mutations_are_refused_clearly(self, server: Server) -> None:
        """graphql-ws (the legacy protocol) carries subscriptions only: anything else is a clear
        BAD_REQUEST, not an internal error."""
        async with GraphQLWebSocket.open(server.ws, LEGACY, token=server.tokens["admin"]) as ws:
            for document in (
                "query { me { username } }",
                'mutation { deleteWebhook(id: "424242") { __typename } }',
            ):
                message = await ws.receive(await ws.subscribe(document))
                errors = (
                    message.payload
                    if isinstance(message.payload, list)
                    else (message.payload or {}).get("errors")
                )
                assert codes(errors) == {"BAD_REQUEST"}, message
                assert "graphql-transport-ws" in errors[0]["message"]


class TestOwnedObjects:
    """Two operators: Olivia's webhook and its deliveries are hers alone (and the admins')."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def hook(self, server: Server) -> str:
        response = await server.http.post(
            "/api/webhooks",
            json={
                "url": "https://hooks.example.com/" + uuid.uuid4().hex,
                "events": ["*"],
                "secret": "s" * 24,
            },
            headers={"Authorization": f"Bearer {server.tokens['operator']}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    @pytest.mark.parametrize("version", VERSIONS)
    async def test_another_operator_neither_sees_nor_touches_it(
        self, server: Server, hook: str, version: str
    ) -> None:
        oscar = {"Authorization": f"Bearer {server.tokens['oscar']}"}
        base = f"{version}/webhooks"
        listed = (await server.http.get(base, headers=oscar)).json()
        items = listed["items"] if isinstance(listed, dict) else listed
        assert hook not in {str(w["id"]) for w in items}
        attempts = [
            ("GET", f"{base}/{hook}", None),
            ("PUT", f"{base}/{hook}", {"url": "https://evil.example.com/", "events": ["*"]}),
            ("DELETE", f"{base}/{hook}", None),
            ("GET", f"{base}/{hook}/deliveries", None),
            ("POST", f"{base}/{hook}/deliveries/1/redeliver", None),
        ]
        for method, url, body in attempts:
            response = await server.http.request(
                method, url, headers=oscar, **({"json": body} if body else {})
            )
            assert response.status_code == 404, f"{method} {url}: {response.status_code} {response.text}"
        olivia = {"Authorization": f"Bearer {server.tokens['operator']}"}
        assert (await server.http.get(f"{base}/{hook}", headers=olivia)).status_code == 200
        admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
        assert (await server.http.get(f"{base}/{hook}", headers=admin)).status_code == 200

    @pytest.mark.parametrize("protocol", ["http", TRANSPORT_WS])
    async def test_the_same_over_graphql(self, server: Server, hook: str, protocol: str) -> None:
        queries = {
            "webhook": ("query($id: ID!) { webhook(id: $id) { id } }", {"id": hook}),
            "webhooks": ("query { webhooks { items { id } } }", None),
            "deliveries": (
                "query($id: ID!) { webhookDeliveries(webhookId: $id) { items { id } } }",
                {"id": hook},
            ),
            "delete": ("mutation($id: ID!) { deleteWebhook(id: $id) { __typename } }", {"id": hook}),
        }
        results: dict[str, Any] = {}
        if protocol == "http":
            oscar = {"Authorization": f"Bearer {server.tokens['oscar']}"}
            for key, (document, variables) in queries.items():
                results[key] = await gql(server.http, document, variables, oscar)
        else:
            async with GraphQLWebSocket.open(server.ws, protocol, token=server.tokens["oscar"]) as ws:
                for key, (document, variables) in queries.items():
                    op = await ws.subscribe(document, variables)
                    message = await ws.receive(op)
                    results[key] = (
                        message.payload if isinstance(message.payload, dict) else {"errors": message.payload}
                    )
        text = repr(results)
        assert f"'id': '{hook}'" not in text, results
        assert "NOT_FOUND" in repr(results["webhook"]) and "NOT_FOUND" in repr(results["deliveries"])
        olivia = {"Authorization": f"Bearer {server.tokens['operator']}"}
        assert (await server.http.get(f"/api/webhooks/{hook}", headers=olivia)).status_code == 200, (
            "still there"
        )
