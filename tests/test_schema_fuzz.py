"""Schemathesis against the API's own OpenAPI document, on the real server (a process of its own,
the session's Temporal dev server, SQLite): generated requests for every REST operation, as an
admin, on a short budget. No answer may be a server error, and every answer must match what the
document says (status codes, media types, bodies, headers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import ADMIN_PASSWORD, make_settings, temporal_address
from tests.processes import free_port, running_processes, server_client, wait_http_ready

pytestmark = pytest.mark.slow

#: Generated cases per operation: enough to find a 500, short enough for every CI run.
EXAMPLES = 8


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live_api(temporal_env, tmp_path_factory) -> AsyncIterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = make_settings(
        f"sqlite:///{tmp / 'wfo.db'}",
        tmp,
        temporal_address=temporal_address(temporal_env),
        log_level="WARNING",
    )
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        api = procs.start_api(config, port)
        base_url = f"http://127.0.0.1:{port}"
        await wait_http_ready(api, f"{base_url}/healthz")
        async with server_client(base_url) as http:
            login = await http.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            token = login.json()["accessToken"]
            document = (await http.get("/openapi.json")).json()
        yield {"base_url": base_url, "token": token, "document": document, "process": api}


def test_no_server_error_and_every_answer_as_documented(live_api: dict[str, Any]) -> None:
    loaded = schemathesis.openapi.from_dict(live_api["document"])
    failures: list[str] = []
    for result in loaded.get_all_operations():
        operation = result.ok()
        if operation.path == "/graphql":
            continue  # GraphQL's own document and limits are tested in test_graphql*.py
        try:
            fuzz(operation, live_api)
        except BaseException as exc:  # collected: every operation gets its turn, all failures are shown
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
        live_api["process"].check_alive()
    assert not failures, "\n\n".join(failures)


def fuzz(operation: Any, live_api: dict[str, Any]) -> None:
    """EXAMPLES generated requests to one operation, each checked against the document."""
    headers = {} if operation.path == "/api/auth/login" else {"Authorization": f"Bearer {live_api['token']}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call(case: Any) -> None:
        # Semantic validation (a DAG's cycles, known event names) goes beyond what JSON Schema
        # says, so a schema-valid body may rightly get 422: that one check is left out.
        response = case.call_and_validate(
            base_url=live_api["base_url"],
            headers=headers,
            excluded_checks=[schemathesis.checks.positive_data_acceptance],
        )
        assert response.status_code < 500, response.text

    call()
