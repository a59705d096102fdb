"""Versioning, problem+json for every error, body limits, media types, OpenAPI."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from tests.conftest import ADMIN_PASSWORD, login, make_settings, problem

V1 = "application/vnd.workflow-orchestration.v1+json"
V2 = "application/vnd.workflow-orchestration.v2+json"


class TestVersioning:
    @pytest.mark.parametrize(
        ("path", "accept", "served"),
        [
            ("/api/workflows", None, V1),
            ("/api/workflows", "application/json", V1),
            ("/api/workflows", "*/*", V1),
            ("/api/workflows", V1, V1),
            ("/api/workflows", V2, V2),
            ("/api/workflows", f"{V1};q=0.5, {V2};q=0.9", V2),
            ("/api/workflows", "application/vnd.workflow-orchestration.v9+json, application/json;q=0.1", V1),
            ("/api/v1/workflows", None, V1),
            ("/api/v2/workflows", None, V2),
            ("/api/v1/workflows", V2, V1),  # the URL wins
            ("/api/v2/workflows", V1, V2),
        ],
    )
    async def test_version_served(self, client, viewer, path, accept, served):
        headers = {**viewer, **({"Accept": accept} if accept else {})}
        response = await client.get(path, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"] == served
        assert isinstance(response.json(), list if served == V1 else dict)

    @pytest.mark.parametrize("path", ["/api/v3/workflows", "/api/v0/workflows", "/api/v99"])
    async def test_unknown_version_in_url_is_406(self, client, viewer, path):
        body = problem(await client.get(path, headers=viewer), 406)
        assert "/api/v1" in body["detail"] and "/api/v2" in body["detail"]

    async def test_unknown_version_in_accept_is_406(self, client, viewer):
        headers = {**viewer, "Accept": "application/vnd.workflow-orchestration.v3+json"}
        body = problem(await client.get("/api/workflows", headers=headers), 406)
        assert "v3" in body["detail"]

    async def test_version_applies_to_every_route(self, client, admin):
        for path in ("/api/v2/users", "/api/v2/workflows"):
            response = await client.get(path, headers=admin)
            assert response.headers["content-type"] == V2
            assert set(response.json()) == {"items", "total", "limit", "offset"}

    async def test_problem_keeps_its_media_type_and_names_the_path_sent(self, client, viewer):
        body = problem(await client.get("/api/v2/workflows/123", headers=viewer), 404)
        assert body["instance"] == "/api/v2/workflows/123"

    async def test_login_works_under_each_version(self, client):
        for prefix in ("/api", "/api/v1", "/api/v2"):
            response = await client.post(
                f"{prefix}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert response.status_code == 200 and "accessToken" in response.json()


class TestProblems:
    async def test_unknown_route_is_404(self, client, viewer):
        body = problem(await client.get("/api/nowhere", headers=viewer), 404)
        assert body["instance"] == "/api/nowhere"
        problem(await client.get("/nowhere"), 404)

    async def test_wrong_method_is_405(self, client, viewer):
        response = await client.patch("/api/workflows", headers=viewer)
        body = problem(response, 405)
        assert "PATCH" in body["detail"]
        assert "GET" in response.headers["allow"]

    async def test_oversized_body_is_413(self, database_url, tmp_path):
        app = create_app(make_settings(database_url, tmp_path, max_body_bytes=2048))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = await login(client, "admin", ADMIN_PASSWORD)
                big = {"name": "x", "description": "d" * 4000}
                body = problem(await client.post("/api/workflows", json=big, headers=headers), 413)
                assert "2048" in body["detail"]

                async def stream():  # no Content-Length: counted while it arrives
                    for _ in range(10):
                        yield b" " * 500

                chunked = await client.post(
                    "/api/workflows",
                    content=stream(),
                    headers={**headers, "Content-Type": "application/json"},
                )
                problem(chunked, 413)
                assert (await client.get("/api/v2/workflows", headers=headers)).json()["total"] == 0

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""]
    )
    async def test_non_json_body_is_415(self, client, operator, content_type):
        headers = {**operator, "Content-Type": content_type}
        body = problem(await client.post("/api/workflows", content=b'{"name": "x"}', headers=headers), 415)
        assert "application/json" in body["detail"]

    async def test_json_variants_are_accepted(self, client, operator):
        for content_type in ("application/json; charset=utf-8", V1):
            headers = {**operator, "Content-Type": content_type}
            response = await client.post("/api/workflows", content=b'{"name": "x"}', headers=headers)
            assert response.status_code == 201, response.text

    @pytest.mark.parametrize(
        ("content", "detail"),
        [
            (b'{"name": "' + b"\xff\xfe" + b'"}', "not valid JSON"),
            (
                b'{"name": "x", "tasks": [{"name": "a", "input": {"k": '
                + b"[" * 100_000
                + b"]" * 100_000
                + b"}}]}",
                "not valid JSON",
            ),
            (b'{"name": NaN}', "finite"),
            (b'{"name": "x", "tasks": [{"name": "a", "input": {"x": Infinity}}]}', "finite"),
            (b'{"name": "x", "tasks": [{"name": "a", "timeout": 1e400}]}', "finite"),
        ],
    )
    async def test_json_no_database_can_store_is_422(self, client, operator, content, detail):
        headers = {**operator, "Content-Type": "application/json"}
        body = problem(await client.post("/api/workflows", content=content, headers=headers), 422)
        assert detail in body["detail"] or any(detail in e["detail"] for e in body["errors"]), body
        assert (await client.get("/api/v2/workflows", headers=operator)).json()["total"] == 0

    async def test_unexpected_error_is_a_bare_500(self, app: FastAPI, client, caplog):
        async def explode() -> None:
            raise RuntimeError("secret internals: password=hunter2")

        app.add_api_route("/api/explode", explode)
        response = await client.get("/api/explode")
        body = problem(response, 500)
        assert body["detail"] == "An unexpected error occurred."
        assert "hunter2" not in response.text and "RuntimeError" not in response.text
        assert "secret internals" in caplog.text, "the cause goes to the log"

    async def test_database_down_is_503(self, settings, tmp_path):
        if not settings.sqlalchemy_url.startswith("postgresql"):
            pytest.skip("a PostgreSQL database can be taken away under a running app")
        import psycopg

        from tests.conftest import POSTGRES_ADMIN_URL

        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = await login(client, "admin", ADMIN_PASSWORD)
                name = settings.sqlalchemy_url.rsplit("/", 1)[1]
                with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                response = await client.get("/api/workflows", headers=headers)
                body = problem(response, 503)
                assert "database" in body["detail"].lower()
                assert response.headers["retry-after"]
                ready = problem(await client.get("/readyz"), 503)
                assert ready["checks"]["database"] == "unavailable"


class TestHealth:
    async def test_healthz_needs_no_token(self, client):
        response = await client.get("/healthz")
        assert response.status_code == 200 and response.json() == {"status": "ok"}

    async def test_readyz_names_temporal_when_it_is_down(self, client):
        body = problem(await client.get("/readyz"), 503)
        assert body["checks"] == {"database": "ok", "temporal": "unavailable"}
        assert "temporal" in body["detail"]

    async def test_readyz_is_ready_with_database_and_temporal(self, temporal_env, database_url, tmp_path):
        address = temporal_env.client.service_client.config.target_host
        app = create_app(make_settings(database_url, tmp_path, temporal_address=address))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/readyz")
                assert response.status_code == 200, response.text
                assert response.json() == {
                    "status": "ready",
                    "checks": {"database": "ok", "temporal": "ok"},
                    "reconciler": {"backlog": 0, "unchecked": 0, "lastPassAt": None},  # no pass yet
                }


class TestOpenAPI:
    @pytest.fixture
    def settings(self, settings):
        # Swagger UI is served in dev mode or when asked (tests/test_hardening_graphql.py checks the default).
        return settings.model_copy(update={"api_docs": True})

    async def test_describes_every_endpoint_and_the_bearer_scheme(self, app: FastAPI, client):
        schema = (await client.get("/openapi.json")).json()
        paths = schema["paths"]
        expected = {
            "/api/auth/login": {"post"},
            "/api/auth/me": {"get"},
            "/api/users": {"get", "post"},
            "/api/users/{user_id}": {"get", "patch"},
            "/api/users/{user_id}/disable": {"post"},
            "/api/users/{user_id}/enable": {"post"},
            "/api/users/{user_id}/password": {"post"},
            "/api/workflows": {"get", "post"},
            "/api/workflows/{definition_id}": {"get", "put", "delete"},
            "/api/workflows/{definition_id}/versions": {"get"},
            "/api/workflows/{definition_id}/versions/{version}": {"get"},
            "/healthz": {"get"},
            "/readyz": {"get"},
        }
        for path, methods in expected.items():
            assert path in paths, path
            assert methods <= set(paths[path]), (path, set(paths[path]))
            for method in methods:
                assert paths[path][method].get("description") or paths[path][method].get("summary"), (
                    path,
                    method,
                )
        assert schema["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from POST /api/auth/login.",
        }
        assert paths["/api/workflows"]["post"]["security"] == [{"bearerAuth": []}]
        assert "401" in paths["/api/workflows"]["post"]["responses"]
        assert "security" not in paths["/api/auth/login"]["post"]

    async def test_documents_extension_fields_and_problems(self, client):
        schema = (await client.get("/openapi.json")).json()
        components = schema["components"]["schemas"]
        task = components["TaskIn"]["properties"]
        assert {"type", "input", "timeout", "retryPolicy", "resourceRequirements", "dependencies"} <= set(
            task
        )
        retry = components["RetryPolicyIn"]["properties"]
        assert {
            "maxAttempts",
            "initialInterval",
            "backoffCoefficient",
            "maximumInterval",
            "nonRetryableErrors",
        } <= set(retry)
        assert {"maxRetries", "backoffMultiplier", "maxBackoff"} <= set(retry)
        resources = components["ResourceRequirementsIn"]["properties"]
        assert {"cpu", "memory", "storage", "gpu", "custom", "queue"} <= set(resources)
        assert "Problem" in components and "HTTPValidationError" not in components
        created = schema["paths"]["/api/workflows"]["post"]["responses"]["422"]["content"]
        assert created["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"

    async def test_docs_page_is_served(self, client):
        response = await client.get("/docs")
        assert response.status_code == 200 and "swagger" in response.text.lower()
