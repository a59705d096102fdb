"""Secret references `${secret:NAME}`: resolved on the worker just before the request, never
stored, never in Temporal's history, never in a result or an error; credentials never follow a
redirect to another origin. Real loopback servers, the real activity, the real engine."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.capacity import configure_worker
from activities.registry import registry
from activities.secrets import configure_secrets
from activities.templating import references, render, secret_references
from tests.loopback import LoopbackServer, RecordedRequest, Reply, echo
from tests.test_executions import define, finished, start, task
from workflows.inputs import TaskInput

TOKEN = "tok-4f1c9a7e-very-secret"
BEARER = {"Authorization": "Bearer ${secret:API_TOKEN}"}


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """WFO_SECRET_API_TOKEN on this (worker) process; no secrets directory unless a test sets one."""
    monkeypatch.setenv("WFO_SECRET_API_TOKEN", TOKEN)
    configure_secrets(directory=None)
    yield
    configure_secrets(directory=None)


async def run_http(url: str, context: dict[str, Any] | None = None, **input: Any) -> Any:
    configure_worker("test-worker@loopback")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="http", task_queue="wfo-tasks")
    task = TaskInput(
        execution_id="exec-1",
        task_id="call",
        task_type="http",
        input={"url": url, **input},
        context=context or {},
    )
    return await env.run(registry.activity("http"), task)


def echo_with(status: int) -> Any:
    """A handler that answers `status` with the request's headers in its body (as some APIs do)."""

    def handler(request: RecordedRequest) -> Reply:
        return Reply(status, json={"youSent": request.headers})

    return handler


class TestResolution:
    async def test_the_header_arrives_and_the_result_does_not_hold_the_value(self, loopback: LoopbackServer):
        loopback.route("/api", handler=echo)
        outcome = await run_http(loopback.url_for("/api"), headers=BEARER)
        assert loopback.requests_to("/api")[0].headers["authorization"] == f"Bearer {TOKEN}"
        # The server echoed the header; the result carries the reference's name instead.
        result = json.dumps(outcome.result)
        assert TOKEN not in result
        assert outcome.result["body"]["headers"]["authorization"] == "Bearer [secret:API_TOKEN]"

    async def test_a_file_in_the_secrets_directory_wins_over_the_environment(
        self, loopback: LoopbackServer, tmp_path: Path
    ):
        (tmp_path / "API_TOKEN").write_text("from-the-file\n")
        configure_secrets(directory=tmp_path)
        loopback.route("/api", handler=echo)
        await run_http(
            loopback.url_for("/api"),
            headers={"X-Api-Key": "${secret:API_TOKEN}"},
            body={"key": "${ secret:API_TOKEN }"},
        )
        (received,) = loopback.requests_to("/api")
        assert received.headers["x-api-key"] == "from-the-file"  # one trailing newline dropped
        assert received.json() == {"key": "from-the-file"}

    async def test_an_unknown_secret_fails_naming_it_and_sends_nothing(self, loopback: LoopbackServer):
        loopback.route("/api", handler=echo)
        with pytest.raises(ApplicationError) as caught:
            await run_http(
                loopback.url_for("/api"), headers={"Authorization": "Bearer ${secret:NO_SUCH_TOKEN}"}
            )
        error = caught.value
        assert error.type == "UnknownSecret" and error.non_retryable
        assert (
            "unknown secret 'NO_SUCH_TOKEN'" in error.message and "WFO_SECRET_NO_SUCH_TOKEN" in error.message
        )
        assert loopback.requests == []

    async def test_an_invalid_name_is_refused(self, loopback: LoopbackServer):
        with pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/api"), headers={"X-Key": "${secret:../etc/passwd}"})
        assert caught.value.type == "InvalidSecret" and caught.value.non_retryable
        assert loopback.requests == []

    async def test_errors_never_echo_the_value(self, loopback: LoopbackServer):
        loopback.route("/denied", handler=echo_with(401))
        with pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/denied"), headers=BEARER)
        error = caught.value
        assert error.type == "HttpClientError"
        assert "[secret:API_TOKEN]" in json.dumps(error.details)
        assert TOKEN not in error.message and TOKEN not in json.dumps(error.details)
        assert error.__cause__ is None

    async def test_a_context_value_cannot_name_a_secret(self, loopback: LoopbackServer):
        # Text from elsewhere (a previous task's response, say) is substituted as text, never expanded.
        loopback.route("/api", handler=echo)
        await run_http(
            loopback.url_for("/api"),
            {"note": "${secret:API_TOKEN}"},
            headers={"X-Note": "${note}"},
            body="${note}",
        )
        (received,) = loopback.requests_to("/api")
        assert received.headers["x-note"] == "${secret:API_TOKEN}" and received.text == "${secret:API_TOKEN}"

    def test_rendering_keeps_references_unless_told_to_resolve(self):
        value = {"h": "Bearer ${secret:A}", "x": "${secret:A}", "e": "$${secret:A}", "c": "${c}"}
        assert render(value, {"c": 1}) == {
            "h": "Bearer ${secret:A}",
            "x": "${secret:A}",
            "e": "${secret:A}",
            "c": 1,
        }
        resolved = render(value, {"c": 1}, secrets=lambda name: f"<{name}>")
        assert resolved == {"h": "Bearer <A>", "x": "<A>", "e": "${secret:A}", "c": 1}
        # The interpreter sends http tasks only the context keys they reference: secrets are none.
        assert references(value) == ["c"] and secret_references(value) == ["A", "A"]


#: Credentials (one plain, two secret) and a header that may follow a redirect anywhere.
REDIRECTED_HEADERS = {
    **BEARER,
    "Cookie": "session=abc",
    "X-Api-Key": "${secret:API_TOKEN}",
    "X-Trace": "keep-me",
}


class TestRedirects:
    async def test_a_redirect_to_another_origin_drops_credentials(self, loopback: LoopbackServer):
        with LoopbackServer() as other:
            other.route("/landing", handler=echo)
            loopback.route("/start", status=302, headers={"Location": other.url_for("/landing")})
            outcome = await run_http(loopback.url_for("/start"), headers=REDIRECTED_HEADERS)
        assert outcome.result["status"] == 200
        assert loopback.requests_to("/start")[0].headers["authorization"] == f"Bearer {TOKEN}"
        (landed,) = other.requests_to("/landing")
        assert not {"authorization", "cookie", "x-api-key"} & set(landed.headers), landed.headers
        assert landed.headers["x-trace"] == "keep-me"

    async def test_plain_credentials_are_dropped_too(self, loopback: LoopbackServer):
        with LoopbackServer() as other:
            other.route("/landing", handler=echo)
            loopback.route("/start", status=307, headers={"Location": other.url_for("/landing")})
            await run_http(loopback.url_for("/start"), headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert "authorization" not in other.requests_to("/landing")[0].headers

    async def test_a_same_origin_redirect_keeps_them(self, loopback: LoopbackServer):
        loopback.route("/start", status=302, headers={"Location": "/landing"})
        loopback.route("/landing", handler=echo)
        await run_http(loopback.url_for("/start"), headers=REDIRECTED_HEADERS)
        (landed,) = loopback.requests_to("/landing")
        assert landed.headers["authorization"] == f"Bearer {TOKEN}" and landed.headers["x-api-key"] == TOKEN
        assert landed.headers["cookie"] == "session=abc"

    async def test_once_dropped_they_stay_dropped(self, loopback: LoopbackServer):
        # Away and back again: the second origin could have sent the request anywhere.
        with LoopbackServer() as other:
            other.route("/bounce", status=302, headers={"Location": loopback.url_for("/landing")})
            loopback.route("/start", status=302, headers={"Location": other.url_for("/bounce")})
            loopback.route("/landing", handler=echo)
            await run_http(loopback.url_for("/start"), headers=REDIRECTED_HEADERS)
        assert "authorization" not in loopback.requests_to("/landing")[0].headers


class TestEndToEnd:
    @pytest.fixture
    def settings(self, engine_settings):
        return engine_settings

    async def test_the_value_is_nowhere_but_on_the_wire(
        self, client, operator, viewer, worker, loopback, temporal_env: WorkflowEnvironment, settings
    ):
        loopback.route("/api", handler=echo)
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": loopback.url_for("/api"), "headers": BEARER},
            }
        ]
        definition_id = await define(client, operator, tasks)
        execution = await start(client, operator, definition_id)
        final = await finished(client, operator, execution["id"])
        assert final["status"] == "COMPLETED", final
        assert loopback.requests_to("/api")[0].headers["authorization"] == f"Bearer {TOKEN}"

        # The read model, as any viewer sees it: the definition shows the reference, nothing the value.
        for path in (
            f"/api/executions/{execution['id']}",
            f"/api/v2/executions/{execution['id']}",
            f"/api/workflows/{definition_id}",
        ):
            response = await client.get(path, headers=viewer)
            assert response.status_code == 200 and TOKEN not in response.text, path
        shown = (await client.get(f"/api/v2/executions/{execution['id']}", headers=viewer)).json()
        assert (
            shown["context"]["data"]["call-result"]["body"]["headers"]["authorization"]
            == "Bearer [secret:API_TOKEN]"
        )

        # Temporal's history: the reference travels, the value does not (payloads checked as sent).
        workflow_id = f"{settings.workflow_id_prefix}-{definition_id}-{execution['id']}"
        history = await temporal_env.client.get_workflow_handle(workflow_id).fetch_history()
        wire = b"".join(event.SerializeToString() for event in history.events)
        assert b"${secret:API_TOKEN}" in wire
        assert TOKEN.encode() not in wire

    async def test_an_unknown_secret_fails_the_task_at_once(self, client, operator, worker, loopback):
        loopback.route("/api", handler=echo)
        headers = {"Authorization": "Bearer ${secret:NOT_ON_THIS_WORKER}"}
        tasks = [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": loopback.url_for("/api"), "headers": headers},
            }
        ]
        final = await finished(
            client, operator, (await start(client, operator, await define(client, operator, tasks)))["id"]
        )
        call = task(final, "call")
        assert final["status"] == "FAILED" and call["status"] == "FAILED" and call["attempts"] == 1, final
        assert "unknown secret 'NOT_ON_THIS_WORKER'" in call["error"]
        assert loopback.requests == []
