"""Custom code on workers, as the README shows it: `.venv/bin/wfo-worker --load mymodule` run from
the folder that holds `mymodule.py`, beside the default examples, and several workers with
different code on one queue.

Temporal routes a task by queue, not by function: a worker that takes a `python` task whose
function it lacks (or a task type it lacks) fails that attempt retryably, so that another worker
of the queue runs the next one; while attempts keep landing on workers without it, the execution
shows a blocker naming the function and the queue; the task fails only when its attempts run out.

Real processes throughout: the API (`python -m server`), workers started through the installed
`wfo-worker` console script (or `python -m worker`), the session's Temporal dev server, SQLite.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from api.settings import Settings
from tests.processes import (
    REPO,
    ApiClient,
    Process,
    ProcessSet,
    settings_env,
    task_of,
    wait_worker_polling,
)
from worker import DEFAULT_TASK_MODULES, parse_args

pytestmark = pytest.mark.slow

#: A user's module, in a folder of their own (not the checkout).
USER_MODULE = """\
from activities.registry import task_function


@task_function("greet")
def greet(input: dict, context: dict) -> dict:
    return {"greeting": f"hello {input['name']}"}
"""

#: Enough attempts that a task reaches a worker that has its function, however often another
#: worker of the queue takes it first; retries a fraction of a second apart.
PATIENT = {"maxAttempts": 60, "initialInterval": 0.2, "maximumInterval": 0.5}


def wfo_worker() -> Path:
    """The `wfo-worker` console script of the environment running the tests (`make install` puts it
    in `.venv/bin/`). Its `sys.path[0]` is its own folder, not the current one."""
    script = Path(sys.executable).parent / "wfo-worker"
    assert script.exists(), f"{script} is missing: install the project (make install)"
    return script


def start_wfo_worker(
    processes: ProcessSet, settings: Settings, folder: Path, *args: str, identity: str
) -> Process:
    """`wfo-worker <args>` run from `folder`, as a user runs it from their project."""
    argv = [sys.executable, str(wfo_worker()), "--identity", identity, "--graceful-shutdown", "2", *args]
    return processes.add(identity, argv, settings_env(settings), cwd=folder).start()


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    return engine_settings


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The user's folder with `mymodule.py` in it."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mymodule.py").write_text(USER_MODULE)
    return folder


def python_task(
    task_id: str, function: str, retry: dict[str, Any] | None = None, **input: Any
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": task_id,
        "name": task_id,
        "type": "python",
        "input": {"function": function, **input},
    }
    if retry is not None:
        task["retryPolicy"] = retry
    return task


def open_blockers(progress: dict[str, Any]) -> list[str]:
    return [b["description"] for b in progress["blockers"] if b["resolvedAt"] is None]


async def wait_blocker(api: ApiClient, execution_id: str, *words: str, timeout: float = 60.0) -> str:
    """Until the execution's progress shows an open blocker that mentions every one of `words`
    (failing at once if the execution ends first)."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = open_blockers(await api.progress(execution_id))
        match = next((text for text in found if all(w in text for w in words)), None)
        if match is not None:
            return match
        body = await api.execution(execution_id)
        assert body["status"] == "RUNNING", f"the execution ended before the blocker: {body}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"no open blocker with {words} within {timeout}s; open: {found}")


class TestWorkerArguments:
    def test_load_keeps_the_default_examples(self) -> None:
        assert parse_args(["--load", "mymodule"]).modules == [*DEFAULT_TASK_MODULES, "mymodule"]

    def test_no_examples_drops_them(self) -> None:
        assert parse_args(["--load", "mymodule", "--no-examples"]).modules == ["mymodule"]
        assert parse_args(["--no-examples"]).modules == []

    def test_console_script_is_the_worker(self) -> None:
        """pyproject's entry point is the `main` these tests run as `wfo-worker`."""
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["wfo-worker"] == "worker:main"
        assert re.search(r"^from worker import main$", wfo_worker().read_text(), re.MULTILINE)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestLoadFromTheCurrentFolder:
    async def test_module_in_the_current_folder_runs_beside_the_examples(
        self,
        settings: Settings,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        api: ApiClient,
        project: Path,
    ) -> None:
        worker = start_wfo_worker(
            processes, settings, project, "--load", "mymodule", identity="worker-custom"
        )
        await wait_worker_polling(
            temporal_env.client, settings.default_task_queue, "worker-custom", worker, workflows=True
        )
        definition = await api.define(
            "custom-and-examples",
            [
                python_task("hello", "greet", name="Ada"),
                python_task("count", "word_count", text="to be or not to be"),
            ],
        )
        execution = await api.start(definition)
        body = await api.wait_status(str(execution["id"]))
        assert body["status"] == "COMPLETED", body
        assert body["context"]["data"]["hello-result"] == {"greeting": "hello Ada"}
        assert body["context"]["data"]["count-result"]["words"] == 6


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestWorkersWithDifferentCodeOnOneQueue:
    async def test_each_task_reaches_a_worker_that_has_its_function(
        self,
        settings: Settings,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        api: ApiClient,
        project: Path,
    ) -> None:
        client, queue = temporal_env.client, settings.default_task_queue
        # The interpreter on a system worker that runs no tasks; worker A: the examples only.
        system = processes.start_worker(settings, "--queue", settings.system_task_queue, identity="system")
        await wait_worker_polling(client, queue, "system", system, workflows=True)
        worker_a = processes.start_worker(settings, "--queue", queue, identity="worker-a")
        await wait_worker_polling(client, queue, "worker-a", worker_a)

        # Only worker A polls: every attempt of `hello` lands on a worker without `greet`.
        definition = await api.define(
            "greet-on-a-shared-queue",
            [
                python_task("hello", "greet", PATIENT, name="Ada"),
                python_task("count", "word_count", PATIENT, text="one two three"),
            ],
        )
        execution_id = str((await api.start(definition))["id"])
        blocker = await wait_blocker(api, execution_id, "'greet'", repr(queue), "hello")
        body = await api.execution(execution_id)
        assert task_of(body, "hello")["status"] == "RUNNING", body  # type: ignore[index]

        # Worker B, from the user's folder: `greet`, and not the examples (the reverse case).
        worker_b = start_wfo_worker(
            processes,
            settings,
            project,
            "--queue",
            queue,
            "--load",
            "mymodule",
            "--no-examples",
            identity="worker-b",
        )
        await wait_worker_polling(client, queue, "worker-b", worker_b)
        body = await api.wait_status(execution_id)
        assert body["status"] == "COMPLETED", body
        hello = task_of(body, "hello")
        assert hello is not None and hello["resources"]["worker"] == "worker-b"
        assert hello["attempts"] >= 2  # the ones worker A failed came first
        assert body["context"]["data"]["hello-result"] == {"greeting": "hello Ada"}
        progress = await api.progress(execution_id)
        assert blocker not in open_blockers(progress)

        # Both workers poll now: tasks of either kind land on either worker, and all complete.
        tasks = [python_task(f"hello-{n}", "greet", PATIENT, name=str(n)) for n in range(4)]
        tasks += [python_task(f"count-{n}", "word_count", PATIENT, text="a " * n) for n in range(4)]
        execution_id = str((await api.start(await api.define("mixed", tasks)))["id"])
        body = await api.wait_status(execution_id, timeout=120)
        assert body["status"] == "COMPLETED", body
        for n in range(4):
            assert task_of(body, f"hello-{n}")["resources"]["worker"] == "worker-b"  # type: ignore[index]
            assert task_of(body, f"count-{n}")["resources"]["worker"] == "worker-a"  # type: ignore[index]
            assert body["context"]["data"][f"count-{n}-result"]["words"] == n

    async def test_code_no_worker_has_fails_after_the_task_attempts(
        self,
        settings: Settings,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        api: ApiClient,
    ) -> None:
        worker = processes.start_worker(settings, identity="worker-a")
        await wait_worker_polling(
            temporal_env.client, settings.default_task_queue, "worker-a", worker, workflows=True
        )
        retry = {"maxAttempts": 3, "initialInterval": 0.1}
        definition = await api.define(
            "missing-code",
            [
                python_task("call", "nobody_has_it", retry),
                {"id": "custom", "name": "custom", "type": "resize-image", "retryPolicy": retry},
            ],
        )
        body = await api.wait_status(str((await api.start(definition))["id"]))
        assert body["status"] == "FAILED", body
        queue = repr(settings.default_task_queue)
        call, custom = task_of(body, "call"), task_of(body, "custom")
        assert call is not None and custom is not None
        assert call["status"] == custom["status"] == "FAILED"
        assert call["attempts"] == custom["attempts"] == 3, body
        assert "'nobody_has_it'" in call["error"] and queue in call["error"], call["error"]
        assert "'resize-image'" in custom["error"] and queue in custom["error"], custom["error"]


def readme_custom_code() -> tuple[str, list[str]]:
    """The README's custom-worker example: the python block that follows the `--load mymodule`
    sentence in "Task types", and the `wfo-worker` command line that loads it."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("Register your own Python code on a worker")
    block = re.search(r"```python\n(.*?)```", readme[start:], re.DOTALL)
    assert block is not None
    command = re.search(
        r"^(\.venv/bin/wfo-worker [^#\n]*--load mymodule[^#\n]*)", readme[start:], re.MULTILINE
    )
    assert command is not None, "the README shows no `.venv/bin/wfo-worker ... --load mymodule` line"
    return block.group(1), command.group(1).split()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestReadmeCustomWorker:
    async def test_the_readme_example_runs_as_written(
        self,
        settings: Settings,
        processes: ProcessSet,
        temporal_env: WorkflowEnvironment,
        api: ApiClient,
        tmp_path: Path,
    ) -> None:
        code, command = readme_custom_code()
        checkout = tmp_path / "checkout"  # the README runs it from the checkout folder
        checkout.mkdir()
        (checkout / "mymodule.py").write_text(code)
        # The queue the README names, made this test's own on the shared dev server.
        readme_queue = command[command.index("--queue") + 1]
        queue = f"{readme_queue}-{uuid.uuid4().hex[:8]}"
        args = [queue if arg == readme_queue else arg for arg in command[1:]]

        # The stack of `make run`: a worker for the system and default queues, with the examples.
        system = processes.start_worker(settings, identity="make-run-worker")
        await wait_worker_polling(
            temporal_env.client, settings.default_task_queue, "make-run-worker", system, workflows=True
        )
        assert command[0] == ".venv/bin/wfo-worker"
        custom = start_wfo_worker(processes, settings, checkout, *args, identity="billing-worker")
        await wait_worker_polling(temporal_env.client, queue, "billing-worker", custom)

        route = {"queue": queue}
        definition = await api.define(
            "readme-custom-worker",
            [
                {
                    "id": "total",
                    "name": "total",
                    "type": "python",
                    "input": {"function": "invoice_total", "lines": [{"amount": 5}, {"amount": 7}]},
                    "resourceRequirements": route,
                },
                {
                    "id": "thumb",
                    "name": "thumb",
                    "type": "resize-image",
                    "input": {"url": "https://example.com/a.png", "width": 640},
                    "resourceRequirements": route,
                },
                python_task("count", "word_count", text="the examples stay loaded"),
            ],
        )
        body = await api.wait_status(str((await api.start(definition))["id"]))
        assert body["status"] == "COMPLETED", body
        data = body["context"]["data"]
        assert data["total-result"] == {"total": 12}
        assert data["thumb-result"] == {"url": "https://example.com/a.png", "width": 640}
        assert data["count-result"]["words"] == 4
        for task_id in ("total", "thumb"):
            assert task_of(body, task_id)["resources"]["worker"] == "billing-worker"  # type: ignore[index]
