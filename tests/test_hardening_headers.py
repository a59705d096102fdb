"""Security headers on every answer of a real server (`python -m server`): JSON, problems (the
body middleware's early refusals included), GraphQL, and the HTML consoles, which load everything
from this service and carry a policy that allows nothing else (tests/test_pages.py drives them in
a browser).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from tests.conftest import ADMIN_PASSWORD, make_settings
from tests.processes import ApiClient, free_port, running_processes, server_client, wait_http_ready

pytestmark = pytest.mark.slow

EVERY_ANSWER = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"


@dataclass
class Server:
    http: httpx.AsyncClient
    admin: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One API process (SQLite, no Temporal) serving its consoles, as in dev mode."""
    tmp = tmp_path_factory.mktemp("hardening-headers")
    settings = make_settings(f"sqlite:///{tmp / 'wfo.db'}", tmp, log_level="WARNING", api_docs=True)
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        api = procs.start_api(settings, port)
        url = f"http://127.0.0.1:{port}"
        await wait_http_ready(api, f"{url}/healthz")
        async with server_client(url, timeout=30) as http:
            admin = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
            yield Server(http, admin.headers)
        api.check_alive()


def assert_secured(response: httpx.Response, csp: str = STRICT_CSP) -> None:
    for name, value in EVERY_ANSWER.items():
        assert response.headers.get(name) == value, (response.request.url, name, dict(response.headers))
    assert response.headers.get("content-security-policy") == csp, (
        response.request.url,
        dict(response.headers),
    )


class TestJsonAnswers:
    @pytest.mark.parametrize(
        "path", ["/api/workflows", "/api/v2/workflows", "/api/v1/executions", "/api/users"]
    )
    async def test_api_answers_load_nothing(self, server: Server, path: str) -> None:
        response = await server.http.get(path, headers=server.admin)
        assert response.status_code == 200, response.text
        assert_secured(response)

    @pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
    async def test_service_documents_load_nothing(self, server: Server, path: str) -> None:
        response = await server.http.get(path)
        assert response.status_code == 200, response.text
        assert_secured(response)

    async def test_graphql_answers_load_nothing(self, server: Server) -> None:
        response = await server.http.post("/graphql", json={"query": "{ me { id } }"}, headers=server.admin)
        assert response.status_code == 200 and response.json()["data"]["me"]["id"]
        assert_secured(response)


class TestProblems:
    async def test_a_route_refusal_carries_the_headers(self, server: Server) -> None:
        for response in (await server.http.get("/api/workflows"), await server.http.get("/api/nowhere")):
            assert response.headers["content-type"] == "application/problem+json", response.text
            assert_secured(response)

    async def test_a_refusal_before_the_body_carries_the_headers(self, server: Server) -> None:
        # Answered by the body middleware, before routing: the headers are added outside it.
        response = await server.http.post("/api/auth/login", content=b"{" + b" " * 64 * 1024 + b"}")
        assert response.status_code == 413, response.text
        assert_secured(response)


class TestConsoles:
    @pytest.mark.parametrize("path", ["/docs", "/graphql"])
    async def test_pages_allow_only_this_service_and_are_not_framed(self, server: Server, path: str) -> None:
        response = await server.http.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "https://" not in response.text and "//cdn" not in response.text
        policy = response.headers["content-security-policy"]
        assert (
            "default-src 'none'" in policy
            and "script-src 'self';" in policy
            and "style-src 'self';" in policy
        )
        assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
        assert_secured(response, csp=policy)
