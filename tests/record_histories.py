"""Record the interpreter histories that tests/test_replay.py replays.

    .venv/bin/python -m tests.record_histories            # writes tests/histories/*.json
    .venv/bin/python -m tests.record_histories --out DIR  # somewhere else (to compare first)
    .venv/bin/python -m tests.record_histories chain cancel   # only these scenarios

Run by hand, from the repository root, never in CI. It starts a Temporal dev server of its own
(the `temporal` CLI of this venv, with the service's search attributes), a SQLite database and a
loopback HTTP server in a temporary directory, the API app in this process and worker.py's
workers, then drives each scenario below through the REST API exactly as a client would and
saves each Temporal run's history as `handle.fetch_history().to_json()`, one file per run.

When to run it: after a change to workflows/ that is *meant* to alter what the interpreter
schedules. Executions already running keep their old histories, so such a change must also stay
compatible with them (`workflow.patched(...)`, or a field of the input that old runs lack) until
they have closed: re-recording makes CI pass again but does not make running executions safe.
Keep the old files next to the new ones while old runs may still exist: tests/histories/ holds
the runs whose events the worker's read model runner writes, tests/histories/local-activity/ the
runs started before it (they publish with a local activity per workflow task, and the replay
test keeps them working). A new scenario is a new entry in SCENARIOS here and
in EXPECTED in tests/test_replay.py (which fails when the two disagree with the files).

Scenarios (file names):
  chain               a -> b -> c, with an initial context
  fan_out_fan_in      one task, three parallel branches (noop, http, python), one join
  sync_point          two tasks and a 1 s sleep behind a synchronization point (with a deadline
                      it meets), a task that depends on the point
  retry_in_place      an http task fails (no retries) while an approval keeps the execution running;
                      the task is retried in place (Update retry_task), then the approval completes
  reopen_failed_run   an http task fails and the execution FAILS ...
  reopen_second_run   ... then a retry of that task reopens it as a new run of the same workflow id
  cancel              cancelled while an http task waits for a slow answer and a sleep runs
  approval            one approval completed with an output, a dependent task uses it
  sync_point_missed   a synchronization point with a 2 s deadline on an approval nobody decides
  continue_as_new_first_run   30 tasks, a sleep and a waiting approval, 100 events to a run: the first
                      run drains and continues as new ...
  continue_as_new_last_run    ... and the last one gets the approval and completes
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, SEARCH_ATTRIBUTE_KEYS, make_settings, running_worker, temporal_cli
from tests.loopback import LoopbackServer, RecordedRequest, Reply
from tests.processes import ApiClient, task_of
from workflows.constants import workflow_id

log = logging.getLogger("record_histories")

HISTORIES = Path(__file__).parent / "histories"

#: What a scenario gets: the API, the Temporal client, the settings and the loopback server.
Scenario = Callable[["Recorder"], Awaitable[dict[str, WorkflowHistory]]]


class Recorder:
    def __init__(self, api: ApiClient, client: Client, settings: Settings, loopback: LoopbackServer) -> None:
        self.api = api
        self.client = client
        self.settings = settings
        self.loopback = loopback

    def workflow_id(self, definition_id: str, execution_id: str) -> str:
        return workflow_id(self.settings.workflow_id_prefix, definition_id, execution_id)

    async def history(
        self, definition_id: str, execution_id: str, run_id: str | None = None
    ) -> WorkflowHistory:
        handle = self.client.get_workflow_handle(self.workflow_id(definition_id, execution_id), run_id=run_id)
        return await handle.fetch_history()

    async def run_ids(self, definition_id: str, execution_id: str) -> list[str]:
        """The runs of an execution's workflow id, oldest first."""
        wid = self.workflow_id(definition_id, execution_id)
        runs = [w async for w in self.client.list_workflows(f'WorkflowId = "{wid}"')]
        return [w.run_id for w in sorted(runs, key=lambda w: w.start_time)]

    async def finish(self, definition: str, execution: dict[str, Any], expect: str) -> WorkflowHistory:
        final = await self.api.wait_status(execution["id"], timeout=60)
        if final["status"] != expect:
            raise RuntimeError(f"expected {expect}, got {final['status']}: {final}")
        return await self.history(definition, execution["id"])

    async def task_id(self, execution_id: str, task: str, statuses: tuple[str, ...]) -> str:
        body = await self.api.wait_task(execution_id, task, statuses, timeout=60)
        found = task_of(body, task)
        assert found is not None
        return found["id"]

    async def post(self, path: str, body: Any = None) -> dict[str, Any]:
        response = await self.api.http.post(path, json=body, headers=self.api.headers)
        if response.status_code != 200:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
        return response.json()


# --- scenarios -------------------------------------------------------------------------------


async def chain(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "chain",
        [
            {"id": "a", "name": "a"},
            {"id": "b", "name": "b", "dependencies": ["a"]},
            {"id": "c", "name": "c", "dependencies": ["b"]},
        ],
    )
    execution = await r.api.start(definition, {"key": "value"})
    return {"chain": await r.finish(definition, execution, "COMPLETED")}


async def fan_out_fan_in(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "fan-out-fan-in",
        [
            {"id": "split", "name": "split"},
            {"id": "left", "name": "left", "dependencies": ["split"]},
            {
                "id": "middle",
                "name": "middle",
                "type": "http",
                "input": {"url": r.loopback.url_for("/ok"), "method": "POST", "body": {"from": "${key}"}},
                "dependencies": ["split"],
            },
            {
                "id": "right",
                "name": "right",
                "type": "python",
                "input": {"function": "word_count", "text": "to be or not to be"},
                "dependencies": ["split"],
            },
            {"id": "join", "name": "join", "dependencies": ["left", "middle", "right"]},
        ],
    )
    execution = await r.api.start(definition, {"key": "fan"})
    return {"fan_out_fan_in": await r.finish(definition, execution, "COMPLETED")}


async def sync_point(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "sync-point",
        [
            {"id": "a", "name": "a"},
            {"id": "b", "name": "b"},
            {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 1}},
            {"id": "after", "name": "after", "dependencies": ["gate"]},
        ],
        [{"id": "gate", "name": "Gate", "requiredTasks": ["a", "b", "nap"], "timeout": 600}],
    )
    execution = await r.api.start(definition)
    return {"sync_point": await r.finish(definition, execution, "COMPLETED")}


async def retry_in_place(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "retry-in-place",
        [
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": r.loopback.url_for("/flaky-in-place")},
                "retryPolicy": {"maxAttempts": 1},
            },
            {"id": "after", "name": "after", "dependencies": ["call"]},
            {"id": "hold", "name": "hold", "type": "approval"},
        ],
    )
    execution = await r.api.start(definition)
    failed = await r.task_id(execution["id"], "call", ("FAILED",))
    hold = await r.task_id(execution["id"], "hold", ("WAITING",))
    await r.post(f"/api/tasks/{failed}/retry")
    await r.api.wait_task(execution["id"], "after", ("COMPLETED",))
    await r.post(f"/api/tasks/{hold}/complete", {"output": {"ok": True}})
    return {"retry_in_place": await r.finish(definition, execution, "COMPLETED")}


async def reopen(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "reopen",
        [
            {"id": "first", "name": "first"},
            {
                "id": "call",
                "name": "call",
                "type": "http",
                "input": {"url": r.loopback.url_for("/flaky-reopen")},
                "retryPolicy": {"maxAttempts": 1},
                "dependencies": ["first"],
            },
            {"id": "after", "name": "after", "dependencies": ["call"]},
        ],
    )
    execution = await r.api.start(definition, {"attempt": "reopen"})
    await r.finish(definition, execution, "FAILED")
    failed = await r.task_id(execution["id"], "call", ("FAILED",))
    await r.post(f"/api/tasks/{failed}/retry")
    await r.finish(definition, execution, "COMPLETED")
    first_run, second_run = await r.run_ids(definition, execution["id"])
    return {
        "reopen_failed_run": await r.history(definition, execution["id"], first_run),
        "reopen_second_run": await r.history(definition, execution["id"], second_run),
    }


async def cancel(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "cancel",
        [
            {"id": "slow", "name": "slow", "type": "http", "input": {"url": r.loopback.url_for("/slow")}},
            {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 60}},
            {"id": "done", "name": "done"},
            {"id": "after", "name": "after", "dependencies": ["slow", "nap"]},
        ],
    )
    execution = await r.api.start(definition)
    await r.loopback.wait_for_requests_async(1, "/slow", timeout=30)
    await r.api.wait_task(execution["id"], "done", ("COMPLETED",))
    await asyncio.sleep(1.5)  # long enough for an inspection of the running http task
    response = await r.api.cancel(execution["id"])
    if response.status_code != 200:
        raise RuntimeError(f"cancel: {response.status_code} {response.text}")
    return {"cancel": await r.finish(definition, execution, "CANCELLED")}


async def approval(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "approval",
        [
            {"id": "ask", "name": "ask", "type": "approval"},
            {
                "id": "use",
                "name": "use",
                "type": "python",
                "input": {"function": "sum", "values": ["${ask-result.amount}", 1]},
                "dependencies": ["ask"],
            },
        ],
    )
    execution = await r.api.start(definition)
    ask = await r.task_id(execution["id"], "ask", ("WAITING",))
    await r.post(f"/api/tasks/{ask}/complete", {"output": {"amount": 41}})
    return {"approval": await r.finish(definition, execution, "COMPLETED")}


async def sync_point_missed(r: Recorder) -> dict[str, WorkflowHistory]:
    definition = await r.api.define(
        "sync-point-missed",
        [
            {"id": "ask", "name": "ask", "type": "approval"},
            {"id": "ship", "name": "ship", "dependencies": ["approved"]},
        ],
        [{"id": "approved", "name": "Approved", "requiredTasks": ["ask"], "timeout": 2}],
    )
    execution = await r.api.start(definition)
    return {"sync_point_missed": await r.finish(definition, execution, "FAILED")}


async def continue_as_new(r: Recorder) -> dict[str, WorkflowHistory]:
    """The history grows past the threshold while an approval waits and a sleep runs: the run
    drains its activities and continues as new; the next run gets the decision and finishes."""
    fan = [{"id": f"f{i}", "name": f"f{i}"} for i in range(30)]
    definition = await r.api.define(
        "continue-as-new",
        [
            {"id": "gate", "name": "gate", "type": "approval"},
            {"id": "nap", "name": "nap", "type": "sleep", "input": {"seconds": 3}},
            *fan,
            {"id": "after", "name": "after", "dependencies": ["gate", "nap", *(f["id"] for f in fan)]},
        ],
    )
    before = r.settings.continue_after_events
    r.settings.continue_after_events = (
        100  # not validated on assignment: below the settings' floor on purpose
    )
    try:
        execution = await r.api.start(definition)
    finally:
        r.settings.continue_after_events = before
    gate = await r.task_id(execution["id"], "gate", ("WAITING",))
    for _ in range(600):
        if len(await r.run_ids(definition, execution["id"])) >= 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the execution did not continue as new")
    await r.post(f"/api/tasks/{gate}/complete", {"output": "go"})
    await r.finish(definition, execution, "COMPLETED")
    runs = await r.run_ids(definition, execution["id"])
    return {
        "continue_as_new_first_run": await r.history(definition, execution["id"], runs[0]),
        "continue_as_new_last_run": await r.history(definition, execution["id"], runs[-1]),
    }


SCENARIOS: dict[str, Scenario] = {
    "chain": chain,
    "fan_out_fan_in": fan_out_fan_in,
    "sync_point": sync_point,
    "retry_in_place": retry_in_place,
    "reopen": reopen,
    "cancel": cancel,
    "approval": approval,
    "sync_point_missed": sync_point_missed,
    "continue_as_new": continue_as_new,
}


# --- the stack -------------------------------------------------------------------------------


def script_loopback(server: LoopbackServer, release: threading.Event) -> None:
    server.route("/ok", json={"ok": True})
    server.route("/flaky-in-place", status=[500, 200], json={"flaky": "in place"})
    server.route("/flaky-reopen", status=[500, 200], json={"flaky": "reopen"})

    def slow(request: RecordedRequest) -> Reply:
        release.wait(60)  # until the recorder stops: the cancel aborts the request first
        return Reply(json={"slow": True})

    server.route("/slow", handler=slow)


async def record(names: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    release = threading.Event()
    with tempfile.TemporaryDirectory(prefix="wfo-histories-") as tmp, LoopbackServer() as loopback:
        script_loopback(loopback, release)
        async with await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(),
            ui=False,
            dev_server_log_level="error",
            search_attributes=SEARCH_ATTRIBUTE_KEYS,
        ) as env:
            unique = uuid.uuid4().hex[:8]
            settings = make_settings(
                f"sqlite:///{Path(tmp) / 'wfo.db'}",
                Path(tmp),
                temporal_address=env.client.service_client.config.target_host,
                workflow_id_prefix="wfo",
                system_task_queue=f"wfo-system-{unique}",
                default_task_queue=f"wfo-tasks-{unique}",
                task_heartbeat_timeout_seconds=5,
                inspect_after_seconds=1,
                cancel_wait_seconds=20,
            )
            app = create_app(settings)
            try:
                async with (
                    app.router.lifespan_context(app),
                    running_worker(env.client, settings, identity="recorder"),
                ):
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://recorder") as http:
                        api = await ApiClient.login(http, "admin", ADMIN_PASSWORD)
                        recorder = Recorder(api, env.client, settings, loopback)
                        for name in names:
                            for file, history in (await SCENARIOS[name](recorder)).items():
                                path = out / f"{file}.json"
                                path.write_text(history.to_json() + "\n")
                                log.info("%s: %d events -> %s", file, len(history.events), path)
            finally:
                release.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.record_histories",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenarios to record (default: all)")
    parser.add_argument(
        "--out", type=Path, default=HISTORIES, help="directory for the files (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic", "api", "activities"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The SDK logs the cancelled http task of the cancel scenario with its traceback: expected here.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    asyncio.run(record(args.scenarios or list(SCENARIOS), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
