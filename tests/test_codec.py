"""Payload encryption in Temporal history (api/codec.py), against the real dev server, a real
worker and the API: the history holds ciphertext only, the API and read model show the values,
keys rotate, and a process without the right key fails clearly (and recovers once given it)."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.codec import ENCODING, KEY_ID_METADATA
from api.settings import Settings
from api.temporal import connect
from tests.conftest import make_settings, running_worker
from tests.test_executions import define, finished, start, task, wait_for

MARKER_CONTEXT = "zebra-context-5b1e"
MARKER_INPUT = "zebra-input-9c4d"
MARKER_RESULT = "zebra-result-7f3a"
MARKER_UPDATE = "zebra-update-2a8e"
MARKERS = (MARKER_CONTEXT, MARKER_INPUT, MARKER_RESULT, MARKER_UPDATE)


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


OLD, NEW, OTHER = new_key(), new_key(), new_key()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # The codec works on Temporal's side of the service; one database is enough here.
    return f"sqlite:///{tmp_path / 'wfo.db'}"


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    return engine_settings.model_copy(update={"payload_keys": _secret(f"old:{OLD}")})


def _secret(text: str) -> SecretStr | None:
    """`text` as the setting holds it, validated as the environment's would be."""
    return Settings.model_validate({"payload_keys": text}).payload_keys


def with_keys(settings: Settings, keys: str | None) -> Settings:
    return settings.model_copy(update={"payload_keys": _secret(keys) if keys else None})


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app of `settings` (its own Temporal client), over ASGI."""
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@contextlib.asynccontextmanager
async def worker_of(settings: Settings, identity: str = "codec-worker", *args: str) -> AsyncIterator[Client]:
    """worker.py's workers on a client built as worker.py builds it (api.temporal.connect)."""
    temporal = await connect(settings, identity=identity)
    async with running_worker(temporal, settings, *args, identity=identity):
        yield temporal


async def raw_history(
    env: WorkflowEnvironment, settings: Settings, definition_id: str, execution_id: str
) -> bytes:
    """Every event of the execution's runs, as Temporal stores them, read by a client WITHOUT the codec."""
    handle = env.client.get_workflow_handle(f"{settings.workflow_id_prefix}-{definition_id}-{execution_id}")
    history = await handle.fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


def plain_handle(
    env: WorkflowEnvironment, settings: Settings, definition_id: str, execution_id: str
) -> WorkflowHandle:
    return env.client.get_workflow_handle(f"{settings.workflow_id_prefix}-{definition_id}-{execution_id}")


async def run_with_markers(http: httpx.AsyncClient, headers: dict, loopback) -> tuple[str, dict]:
    """An execution whose workflow input, activity input, activity result and update argument each
    carry a marker: (definition id, final execution as v2 shows it)."""
    loopback.route("/echo", json={"answer": MARKER_RESULT})
    tasks = [
        {
            "id": "fetch",
            "name": "fetch",
            "type": "http",
            "input": {"url": loopback.url_for("/echo"), "headers": {"X-Token": MARKER_INPUT}},
        },
        {"id": "ok", "name": "ok", "type": "approval", "dependencies": ["fetch"]},
    ]
    definition_id = await define(http, headers, tasks)
    execution = await start(http, headers, definition_id, {"note": MARKER_CONTEXT})
    waiting = await wait_for(
        http, headers, execution["id"], lambda b: any(t["status"] == "WAITING" for t in b["taskExecutions"])
    )
    response = await http.post(
        f"/api/tasks/{task(waiting, 'ok')['id']}/complete",
        json={"output": {"by": MARKER_UPDATE}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return definition_id, await finished(http, headers, execution["id"])


async def encrypted_key_ids(
    env: WorkflowEnvironment, settings: Settings, definition_id: str, execution_id: str
) -> set[str]:
    """The key ids under which the execution's history payloads are encrypted (raw, no codec)."""
    history = await plain_handle(env, settings, definition_id, execution_id).fetch_history()
    found: set[str] = set()
    for event in history.events:
        for attributes in (
            event.workflow_execution_started_event_attributes.input,
            event.activity_task_scheduled_event_attributes.input,
            event.activity_task_completed_event_attributes.result,
            event.workflow_execution_update_accepted_event_attributes.accepted_request.input.args,
        ):
            for payload in attributes.payloads:
                assert payload.metadata["encoding"] == ENCODING, payload.metadata
                found.add(payload.metadata[KEY_ID_METADATA].decode())
    return found


class TestEncryptedHistory:
    async def test_history_holds_no_plain_input_result_or_update(
        self, client, operator, viewer, settings, temporal_env, loopback
    ):
        async with worker_of(settings):
            definition_id, final = await run_with_markers(client, operator, loopback)
        assert final["status"] == "COMPLETED", final
        history = await raw_history(temporal_env, settings, definition_id, final["id"])
        assert ENCODING in history
        for marker in MARKERS:
            assert marker.encode() not in history, f"{marker} stored in plain text in Temporal history"
        assert await encrypted_key_ids(temporal_env, settings, definition_id, final["id"]) == {"old"}

        # The API and its read model show the decoded values, on both versions.
        data = final["context"]["data"]
        assert data["note"] == MARKER_CONTEXT
        assert data["fetch-result"]["body"] == {"answer": MARKER_RESULT}
        assert data["ok-result"] == {"by": MARKER_UPDATE}
        v1 = (await client.get(f"/api/executions/{final['id']}", headers=viewer)).json()
        assert MARKER_RESULT in v1["context"]["data"] and MARKER_UPDATE in v1["context"]["data"]
        events = (await client.get(f"/api/v2/executions/{final['id']}/tasks", headers=viewer)).json()
        assert [t["status"] for t in events["items"]] == ["COMPLETED", "COMPLETED"]

    async def test_without_keys_the_history_is_plain(
        self, client, operator, settings, temporal_env, loopback
    ):
        """The detector above sees plain text where there is some (the default: encryption off)."""
        plain = with_keys(settings, None)
        async with api(plain) as http, worker_of(plain):
            definition_id, final = await run_with_markers(http, operator, loopback)
        assert final["status"] == "COMPLETED", final
        history = await raw_history(temporal_env, settings, definition_id, final["id"])
        assert ENCODING not in history
        for marker in MARKERS:
            assert marker.encode() in history


class TestKeyRotation:
    async def test_old_key_decrypts_new_key_encrypts(self, client, operator, settings, temporal_env):
        """A run started under the old key is finished, after a rotation, by a worker that replays its
        history and runs its scheduled task (old key) and writes on with the new key; a new run uses
        only the new key."""
        later = f"{settings.default_task_queue}-later"
        tasks = [
            {
                "id": "later",
                "name": "later",
                "input": {"note": MARKER_INPUT},
                "resourceRequirements": {"queue": later},
            }
        ]
        async with worker_of(settings, "old-worker"):
            definition_id = await define(client, operator, tasks)
            before = await start(client, operator, definition_id, {"note": MARKER_CONTEXT})
            # Scheduled (its input encrypted with the old key); nobody serves its queue yet.
            await wait_for(client, operator, before["id"], lambda p: p["blockers"], path="/progress")

        rotated = with_keys(settings, f"new:{NEW},old:{OLD}")
        queues = (
            "--queue",
            settings.system_task_queue,
            "--queue",
            settings.default_task_queue,
            "--queue",
            later,
        )
        async with api(rotated) as http, worker_of(rotated, "new-worker", *queues):
            final = await finished(http, operator, before["id"])
            assert final["status"] == "COMPLETED", final
            assert final["context"]["data"] == {"note": MARKER_CONTEXT, "later-result": "success"}
            assert await encrypted_key_ids(temporal_env, settings, definition_id, before["id"]) == {
                "old",
                "new",
            }

            simple = await define(http, operator, [{"id": "n", "name": "n"}])
            after = await finished(
                http, operator, (await start(http, operator, simple, {"note": MARKER_CONTEXT}))["id"]
            )
            assert after["status"] == "COMPLETED", after
        assert await encrypted_key_ids(temporal_env, settings, simple, after["id"]) == {"new"}


class TestWrongKey:
    @pytest.mark.parametrize(
        ("keys", "message"),
        [
            (f"other:{OTHER}", "encrypted with key id 'old', which this process does not hold"),
            (f"old:{OTHER}", "does not decrypt with this process's key of that id"),
        ],
        ids=["missing-key-id", "different-key-same-id"],
    )
    async def test_worker_fails_the_workflow_task_clearly_then_recovers(
        self, client, operator, settings, temporal_env, keys, message
    ):
        definition_id = await define(client, operator, [{"id": "n", "name": "n"}])
        execution = await start(client, operator, definition_id)
        handle = plain_handle(temporal_env, settings, definition_id, execution["id"])
        async with worker_of(with_keys(settings, keys), "keyless-worker"):
            failure = await _first_workflow_task_failure(handle)
        assert message in failure
        assert OLD not in failure and OTHER not in failure, "no key material in the failure"
        # The run waited, nothing lost: given the right key, it goes on.
        async with worker_of(settings, "keyed-worker"):
            assert (await finished(client, operator, execution["id"]))["status"] == "COMPLETED"

    async def test_a_client_without_the_codec_cannot_read_values(
        self, client, operator, settings, temporal_env
    ):
        definition_id = await define(client, operator, [{"id": "n", "name": "n"}])
        async with worker_of(settings):
            execution = await finished(client, operator, (await start(client, operator, definition_id))["id"])
        with pytest.raises(Exception, match="binary/encrypted"):
            await plain_handle(temporal_env, settings, definition_id, execution["id"]).result()
        keyed = await connect(settings)
        handle = keyed.get_workflow_handle(
            plain_handle(temporal_env, settings, definition_id, execution["id"]).id
        )
        assert (await handle.result()) is not None


async def _first_workflow_task_failure(handle: WorkflowHandle) -> str:
    """The message of the run's first failed workflow task, once Temporal records one."""
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return event.workflow_task_failed_event_attributes.failure.message
    raise AssertionError("the run ended without a failed workflow task")


class TestSettings:
    def _settings(self, tmp_path: Path, **values: object) -> Settings:
        return make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, **values)

    def test_off_by_default(self, tmp_path):
        assert self._settings(tmp_path).payload_codec_keys() is None

    def test_keys_in_order_from_the_environment_or_a_file(self, tmp_path):
        keys = self._settings(tmp_path, payload_keys=f"new:{NEW}, old:{OLD}").payload_codec_keys()
        assert [k for k, _ in keys] == ["new", "old"] and keys[0][1] == base64.b64decode(NEW)
        file = tmp_path / "keys"
        file.write_text(f"# rotated {uuid.uuid4()}\nnew:{NEW}\nold:{OLD}\n")
        assert self._settings(tmp_path, payload_key_file=file).payload_codec_keys() == keys

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("justakey", "must be 'id:base64key'"),
            (f"a:{base64.b64encode(b'short').decode()}", "must be 32 random bytes"),
            ("a:!!!not-base64!!!", "is not base64"),
            (f"a:{NEW},a:{OLD}", "appears twice"),
            (" , ", "holds no key"),
        ],
        # Fixed ids: the keys are random per process, and pytest-xdist needs the same ids everywhere.
        ids=["no-id", "short-key", "not-base64", "id-twice", "empty"],
    )
    def test_unusable_keys_are_refused_without_echoing_them(self, tmp_path, text, message):
        with pytest.raises(ValidationError) as caught:
            self._settings(tmp_path, payload_keys=text)
        errors = " ".join(str(e["msg"]) for e in caught.value.errors())
        assert message in errors
        assert NEW not in errors and OLD not in errors

    def test_keys_and_key_file_together_are_refused(self, tmp_path):
        file = tmp_path / "keys"
        file.write_text(f"a:{NEW}\n")
        with pytest.raises(ValidationError, match="not both"):
            self._settings(tmp_path, payload_keys=f"a:{NEW}", payload_key_file=file)

    def test_unreadable_key_file_is_refused(self, tmp_path):
        with pytest.raises(ValidationError, match="cannot be read"):
            self._settings(tmp_path, payload_key_file=tmp_path / "missing")
