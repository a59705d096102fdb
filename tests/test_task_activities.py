"""Task activities under ActivityEnvironment, against a real HTTP server on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.examples  # registers word_count and sum
from activities import registry as registry_module
from activities.capacity import Capacity, Resources, capacity, configure_capacity, configure_worker
from activities.registry import (
    Registry,
    current_task,
    load_modules,
    registry,
    task_activities,
    task_function,
    unknown_task_type,
)
from activities.templating import references, render, resolve
from tests.conftest import free_port
from tests.loopback import LoopbackServer, Reply, echo
from workflows.inputs import TaskInput, TaskOutcome

WORKER = "test-worker@loopback"
QUEUE = "wfo-tasks"
WHERE_KEYS = {"worker", "attempt", "queue"}


# --- functions the python tests call ----------------------------------------------------------

GATES: dict[str, asyncio.Event] = {}
STARTED: list[str] = []


@task_function("tests.echo_sync")
def echo_sync(input: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Returns what it was given."""
    return {"input": input, "context": context}


@task_function("tests.echo_async")
async def echo_async(input: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Returns what it was given, after yielding once."""
    await asyncio.sleep(0)
    return {"input": input, "context": context}


@task_function("tests.raise")
def raise_value_error(input: dict[str, Any], context: dict[str, Any]) -> None:
    """Raises ValueError(input.message)."""
    raise ValueError(input["message"])


@task_function("tests.raise_application_error")
async def raise_application_error(input: dict[str, Any], context: dict[str, Any]) -> None:
    """Raises a non-retryable ApplicationError with a detail."""
    raise ApplicationError("quota exhausted", {"quota": 3}, type="QuotaExhausted", non_retryable=True)


@task_function("tests.blocking_sleep")
def blocking_sleep(input: dict[str, Any], context: dict[str, Any]) -> str:
    """Blocks its thread for input.seconds and reports which task it ran for."""
    time.sleep(input["seconds"])
    return current_task().task_id


@task_function("tests.sleep")
async def sleep(input: dict[str, Any], context: dict[str, Any]) -> str:
    """Sleeps input.seconds without blocking."""
    await asyncio.sleep(input["seconds"])
    return "slept"


@task_function("tests.text")
def text_of_size(input: dict[str, Any], context: dict[str, Any]) -> str:
    """A string of input.size characters."""
    return "x" * input["size"]


@task_function("tests.nan")
def not_a_number(input: dict[str, Any], context: dict[str, Any]) -> float:
    """A result JSON cannot carry."""
    return math.nan


@task_function("tests.gate")
async def gate(input: dict[str, Any], context: dict[str, Any]) -> str:
    """Records that it started, then waits until the test opens GATES[input.name]."""
    STARTED.append(input["name"])
    await GATES[input["name"]].wait()
    return input["name"]


# --- helpers ------------------------------------------------------------------------------------


def make_task(task_type: str = "noop", input: dict[str, Any] | None = None, **fields: Any) -> TaskInput:
    return TaskInput(
        execution_id="exec-1",
        task_id=fields.pop("task_id", "task-1"),
        task_type=task_type,
        input=input,
        queue=QUEUE,
        **fields,
    )


def environment(
    activity_type: str = "noop", attempt: int = 1, heartbeat_timeout: float | None = None
) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        activity_type=activity_type,
        attempt=attempt,
        task_queue=QUEUE,
        heartbeat_timeout=timedelta(seconds=heartbeat_timeout) if heartbeat_timeout else None,
    )
    return env


async def run(task: TaskInput, env: ActivityEnvironment | None = None) -> TaskOutcome:
    env = env or environment(task.task_type)
    return await env.run(registry.activity(task.task_type), task)


async def fail(task: TaskInput, env: ActivityEnvironment | None = None) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(task, env)
    error = caught.value
    assert error.details and error.details[0] == {"worker": WORKER, "attempt": 1, "queue": QUEUE}
    return error


def http_task(url: str, **input: Any) -> TaskInput:
    return make_task("http", {"url": url, **input})


def python_task(function: str, context: dict[str, Any] | None = None, **input: Any) -> TaskInput:
    return make_task("python", {"function": function, **input}, context=context or {})


@pytest.fixture(autouse=True)
def worker_settings() -> Iterator[None]:
    """A known worker identity, and unlimited capacity again after each test."""
    configure_worker(identity=WORKER)
    yield
    configure_capacity()


# --- noop and the wrapper ---------------------------------------------------------------------------


class TestNoop:
    async def test_outcome_says_where_it_ran(self) -> None:
        outcome = await run(make_task("noop"), environment("noop", attempt=3))
        assert outcome == TaskOutcome(result="success", worker=WORKER, attempt=3, queue=QUEUE)


class TestHeartbeats:
    async def test_heartbeats_carry_the_attempt_while_a_sync_function_blocks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(registry_module, "HEARTBEAT_INTERVAL", 0.02)
        beats: list[tuple[Any, ...]] = []
        env = environment("python", attempt=2)
        env.on_heartbeat = lambda *details: beats.append(details)
        task = make_task("python", {"function": "tests.blocking_sleep", "seconds": 0.2}, task_id="task-9")
        outcome = await run(task, env)
        assert outcome.result == "task-9"  # current_task() works in the function's thread
        assert len(beats) >= 4  # the event loop kept beating while the thread blocked
        assert set(map(str, beats)) == {str(({"attempt": 2},))}

    async def test_cancelling_a_blocked_sync_function_returns_at_once(self) -> None:
        env = environment("python")
        running = asyncio.create_task(run(python_task("tests.blocking_sleep", seconds=1.0), env))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert time.monotonic() - started < 0.5  # its daemon thread finishes alone, holding up nothing

    async def test_interval_is_a_third_of_a_short_heartbeat_timeout(self) -> None:
        beats: list[float] = []
        env = environment("python", heartbeat_timeout=0.15)
        env.on_heartbeat = lambda *details: beats.append(time.monotonic())
        await run(python_task("tests.sleep", seconds=0.3), env)
        assert 5 <= len(beats) <= 12


# --- http ---------------------------------------------------------------------------------------


class TestHttpTask:
    async def test_get_json(self, loopback: LoopbackServer) -> None:
        loopback.route("/items/7", json={"id": 7, "tags": ["a"]}, headers={"X-Trace": "abc"})
        outcome = await run(http_task(loopback.url_for("/items/7")))
        assert outcome.result["status"] == 200
        assert outcome.result["body"] == {"id": 7, "tags": ["a"]}
        assert outcome.result["headers"]["x-trace"] == "abc"
        assert outcome.result["headers"]["content-type"] == "application/json"
        assert loopback.requests_to("/items/7")[0].method == "GET"

    async def test_get_text(self, loopback: LoopbackServer) -> None:
        loopback.route("/hello", text="hello, world")
        outcome = await run(http_task(loopback.url_for("/hello")))
        assert outcome.result["body"] == "hello, world"

    async def test_json_media_type_with_bad_json_is_text(self, loopback: LoopbackServer) -> None:
        loopback.route("/bad", body=b"{not json", headers={"Content-Type": "application/problem+json"})
        outcome = await run(http_task(loopback.url_for("/bad")))
        assert outcome.result["body"] == "{not json"

    async def test_empty_body_is_null(self, loopback: LoopbackServer) -> None:
        loopback.route("/empty", status=204)
        outcome = await run(http_task(loopback.url_for("/empty"), method="DELETE"))
        assert outcome.result["status"] == 204 and outcome.result["body"] is None

    async def test_post_json_body_with_headers(self, loopback: LoopbackServer) -> None:
        loopback.route("/orders", method="POST", handler=echo)
        body = {"sku": "A-1", "qty": 2, "gift": None}
        outcome = await run(
            http_task(
                loopback.url_for("/orders"),
                method="post",
                body=body,
                headers={"Authorization": "Bearer t0ken", "X-Count": 3},
            )
        )
        echoed = outcome.result["body"]
        assert echoed["method"] == "POST" and echoed["body"] == body
        assert echoed["headers"]["authorization"] == "Bearer t0ken"
        assert echoed["headers"]["x-count"] == "3"
        assert echoed["headers"]["content-type"] == "application/json"

    async def test_text_body_is_sent_as_text(self, loopback: LoopbackServer) -> None:
        loopback.route("/notes", handler=echo)
        outcome = await run(http_task(loopback.url_for("/notes"), method="PUT", body="plain words"))
        assert outcome.result["body"]["body"] == "plain words"
        assert outcome.result["body"]["headers"]["content-type"].startswith("text/plain")

    async def test_response_headers_can_be_selected(self, loopback: LoopbackServer) -> None:
        loopback.route("/h", json={}, headers={"ETag": '"v1"', "X-Other": "1"})
        outcome = await run(http_task(loopback.url_for("/h"), responseHeaders=["ETag"]))
        assert outcome.result["headers"] == {"etag": '"v1"'}

    async def test_expect_status_accepts_a_listed_status(self, loopback: LoopbackServer) -> None:
        loopback.route("/gone", status=404, json={"error": "gone"})
        outcome = await run(http_task(loopback.url_for("/gone"), expectStatus=[200, 404]))
        assert outcome.result["status"] == 404 and outcome.result["body"] == {"error": "gone"}

    async def test_expect_status_refuses_another_2xx(self, loopback: LoopbackServer) -> None:
        loopback.route("/created", status=200, json={})
        error = await fail(http_task(loopback.url_for("/created"), expectStatus=201))
        assert error.type == "HttpClientError" and error.non_retryable

    async def test_redirects_are_followed_hop_by_hop(self, loopback: LoopbackServer) -> None:
        loopback.route("/old", status=302, headers={"Location": "/new"})
        loopback.route("/new", json={"moved": True})
        outcome = await run(http_task(loopback.url_for("/old")))
        assert outcome.result["status"] == 200 and outcome.result["body"] == {"moved": True}
        assert len(loopback.requests_to("/new")) == 1

    async def test_redirects_can_be_refused(self, loopback: LoopbackServer) -> None:
        loopback.route("/old", status=302, headers={"Location": "/new"})
        loopback.route("/new", json={"moved": True})
        error = await fail(http_task(loopback.url_for("/old"), followRedirects=False))
        assert error.type == "HttpClientError" and error.non_retryable and error.details[1]["status"] == 302
        outcome = await run(http_task(loopback.url_for("/old"), expectStatus=302, followRedirects=0))
        assert outcome.result["headers"]["location"] == "/new"
        assert loopback.requests_to("/new") == []

    async def test_too_many_redirects_fail(self, loopback: LoopbackServer) -> None:
        loopback.route("/loop", status=302, headers={"Location": "/loop"})
        error = await fail(http_task(loopback.url_for("/loop"), followRedirects=3))
        assert (
            error.type == "DestinationRefused"
            and error.non_retryable
            and "more than 3 redirects" in error.message
        )
        assert len(loopback.requests_to("/loop")) == 4

    async def test_server_error_is_retryable(self, loopback: LoopbackServer) -> None:
        loopback.route("/boom", status=503, text="down for maintenance")
        error = await fail(http_task(loopback.url_for("/boom")))
        assert error.type == "HttpServerError" and not error.non_retryable
        assert error.details[1] == {"status": 503, "body": "down for maintenance"}
        assert "503" in error.message

    async def test_not_found_is_not_retryable_and_says_why(self, loopback: LoopbackServer) -> None:
        loopback.route("/missing", status=404, json={"detail": "no such order"})
        error = await fail(http_task(loopback.url_for("/missing")))
        assert error.type == "HttpClientError" and error.non_retryable
        assert error.details[1]["status"] == 404 and "no such order" in error.details[1]["body"]
        assert f"GET {loopback.url_for('/missing')} answered 404" in error.message

    async def test_too_many_requests_retries_after_the_given_delay(self, loopback: LoopbackServer) -> None:
        loopback.route("/limited", status=429, headers={"Retry-After": "7"})
        error = await fail(http_task(loopback.url_for("/limited")))
        assert error.type == "HttpClientError" and not error.non_retryable
        assert error.next_retry_delay == timedelta(seconds=7)

    async def test_errors_do_not_leak_credentials_in_the_url(self, loopback: LoopbackServer) -> None:
        loopback.route("/private", status=403)
        url = f"http://user:hunter2@127.0.0.1:{loopback.port}/private?token=s3cret"
        error = await fail(http_task(url))
        assert "hunter2" not in str(error) and "s3cret" not in str(error)
        assert loopback.requests_to("/private")[0].query == {"token": ["s3cret"]}

    async def test_connection_refused_is_a_retryable_network_error(self) -> None:
        error = await fail(http_task(f"http://127.0.0.1:{free_port()}/nothing-listens"))
        assert error.type == "HttpNetworkError" and not error.non_retryable

    async def test_unresolvable_host_is_a_retryable_error_naming_the_host(self) -> None:
        """A name that does not resolve now may resolve later (DNS is transient): retried, as any
        network error. `.invalid` never resolves, so nothing leaves the machine."""
        error = await fail(http_task("http://nightly-report.invalid/report"))
        assert error.type == "UnresolvableHost" and not error.non_retryable, error
        assert error.message.startswith(
            "GET http://nightly-report.invalid/report failed: cannot resolve 'nightly-report.invalid'"
        ), error.message

    async def test_redirect_to_an_unresolvable_host_is_retryable(self, loopback: LoopbackServer) -> None:
        loopback.route("/old", status=302, headers={"Location": "http://moved-away.invalid/new"})
        error = await fail(http_task(loopback.url_for("/old")))
        assert error.type == "UnresolvableHost" and not error.non_retryable, error
        assert "cannot resolve 'moved-away.invalid'" in error.message, error.message

    async def test_timeout_applies_per_request(self, loopback: LoopbackServer) -> None:
        loopback.route("/slow", text="late", delay=5)
        started = time.monotonic()
        error = await fail(http_task(loopback.url_for("/slow"), timeoutSeconds=0.3))
        assert time.monotonic() - started < 2
        assert error.type == "HttpNetworkError" and not error.non_retryable
        assert "timed out after 0.3 s" in error.message

    async def test_cancellation_aborts_the_request_promptly(self, loopback: LoopbackServer) -> None:
        loopback.route("/slow", text="late", delay=30)
        env = environment("http")
        running = asyncio.create_task(run(http_task(loopback.url_for("/slow")), env))
        await loopback.wait_for_requests_async(1, "/slow")
        started = time.monotonic()
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert time.monotonic() - started < 1

    async def test_url_and_body_are_rendered_from_the_context(self, loopback: LoopbackServer) -> None:
        loopback.route("/users/42/notes", handler=echo)
        context = {"task-1-result": {"body": {"id": 42, "tags": ["x", "y"]}}, "user": "ann"}
        task = make_task(
            "http",
            {
                "url": loopback.url + "/users/${task-1-result.body.id}/notes",
                "method": "POST",
                "body": {
                    "id": "${task-1-result.body.id}",
                    "note": "for ${user}",
                    "tag": "${task-1-result.body.tags.1}",
                },
            },
            context=context,
        )
        outcome = await run(task)
        assert outcome.result["body"]["body"] == {"id": 42, "note": "for ann", "tag": "y"}

    async def test_unknown_reference_fails_without_sending(self, loopback: LoopbackServer) -> None:
        error = await fail(http_task(loopback.url + "/x/${task-7-result.id}"))
        assert error.type == "UnresolvedReference" and error.non_retryable
        assert "task-7-result" in error.message
        assert loopback.requests == []

    @pytest.mark.parametrize(
        "url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "http:///no-host", "not a url", None]
    )
    async def test_only_http_urls_are_accepted(self, url: str | None) -> None:
        error = await fail(make_task("http", {"url": url} if url else {}))
        assert error.type == "InvalidInput" and error.non_retryable

    @pytest.mark.parametrize(
        "input",
        [
            {"method": "G E T"},
            {"headers": ["a"]},
            {"expectStatus": "200"},
            {"expectStatus": [99]},
            {"timeoutSeconds": 0},
            {"responseHeaders": "etag"},
        ],
    )
    async def test_bad_input_is_not_retryable(self, loopback: LoopbackServer, input: dict[str, Any]) -> None:
        error = await fail(http_task(loopback.url_for("/any"), **input))
        assert error.type == "InvalidInput" and error.non_retryable
        assert loopback.requests == []

    async def test_response_over_the_result_limit_is_refused(self, loopback: LoopbackServer) -> None:
        loopback.route("/big", text="y" * 5000)
        error = await fail(dataclasses.replace(http_task(loopback.url_for("/big")), max_result_bytes=1000))
        assert error.type == "ResultTooLarge" and error.non_retryable


# --- python -------------------------------------------------------------------------------------


class TestPythonTask:
    async def test_sync_function_gets_input_and_context(self) -> None:
        task = python_task("tests.echo_sync", context={"who": "ann"}, args={"n": 1}, greeting="hi ${who}")
        outcome = await run(task)
        assert outcome.result == {
            "input": {"args": {"n": 1}, "greeting": "hi ann"},
            "context": {"who": "ann"},
        }

    async def test_async_function(self) -> None:
        outcome = await run(python_task("tests.echo_async", args=[1, 2]))
        assert outcome.result == {"input": {"args": [1, 2]}, "context": {}}

    async def test_unknown_function_is_retryable_and_names_the_available_ones(self) -> None:
        # Another worker of the queue may have it: the next attempt may land there.
        error = await fail(python_task("no_such_function"))
        assert error.type == "UnknownFunction" and not error.non_retryable
        assert "'no_such_function'" in error.message and "word_count" in error.message
        assert error.details[1]["function"] == "no_such_function"

    async def test_missing_function_name(self) -> None:
        error = await fail(make_task("python", {"args": []}))
        assert error.type == "InvalidInput" and error.non_retryable

    async def test_exception_keeps_its_type_and_is_retryable(self) -> None:
        error = await fail(python_task("tests.raise", message="bad value"))
        assert error.type == "ValueError" and not error.non_retryable
        assert error.message == "bad value"
        assert isinstance(error.__cause__, ValueError)

    async def test_application_error_keeps_its_type_and_details(self) -> None:
        error = await fail(python_task("tests.raise_application_error"))
        assert error.type == "QuotaExhausted" and error.non_retryable
        assert error.details[1] == {"quota": 3}

    async def test_not_json_result_is_refused(self) -> None:
        error = await fail(python_task("tests.nan"))
        assert error.type == "InvalidResult" and error.non_retryable


class TestExamples:
    async def test_word_count_of_text(self) -> None:
        outcome = await run(python_task("word_count", text="to be or\nnot to be"))
        assert outcome.result == {"words": 6, "lines": 2, "characters": 18}

    async def test_word_count_of_a_context_value(self) -> None:
        context = {"task-1-result": {"body": "one two three"}}
        outcome = await run(python_task("word_count", context=context, path="task-1-result.body"))
        assert outcome.result == {"words": 3, "lines": 1, "characters": 13}

    async def test_sum(self) -> None:
        outcome = await run(python_task("sum", context={"r": {"n": 4}}, values=[1, 2.5, "${r.n}", "0.5"]))
        assert outcome.result == {"sum": 8.0, "count": 4}

    async def test_sum_refuses_words(self) -> None:
        error = await fail(python_task("sum", values=[1, "two"]))
        assert error.type == "InvalidInput" and "values[1]" in error.message


# --- result size ----------------------------------------------------------------------------------


class TestResultSize:
    async def test_result_over_the_limit_fails_non_retryably(self) -> None:
        task = dataclasses.replace(python_task("tests.text", size=200), max_result_bytes=100)
        error = await fail(task)
        assert error.type == "ResultTooLarge" and error.non_retryable
        assert "202 bytes" in error.message and "limit of 100 bytes" in error.message
        assert error.details[1] == {"size": 202, "limit": 100}

    async def test_result_at_the_limit_passes(self) -> None:
        task = dataclasses.replace(python_task("tests.text", size=98), max_result_bytes=100)
        assert (await run(task)).result == "x" * 98


# --- capacity -------------------------------------------------------------------------------------


def gated_task(name: str, **requirements: float) -> TaskInput:
    GATES[name] = asyncio.Event()
    return make_task(
        "python", {"function": "tests.gate", "name": name}, requirements=requirements, task_id=name
    )


async def until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class TestCapacity:
    @pytest.fixture(autouse=True)
    def clear_started(self) -> None:
        STARTED.clear()

    async def test_waits_while_full_and_runs_when_released(self) -> None:
        configure_capacity(cpu=2, memory=1024)
        beats: list[Any] = []
        env_b = environment("python")
        env_b.on_heartbeat = lambda *details: beats.append(details)
        first = asyncio.create_task(run(gated_task("big", cpu=2, memory=512)))
        await until(lambda: STARTED == ["big"])
        second = asyncio.create_task(run(gated_task("small", cpu=1), env_b))
        await until(lambda: capacity().waiting == 1)
        await asyncio.sleep(0.05)
        assert STARTED == ["big"] and beats  # waiting, and heartbeating meanwhile
        assert capacity().used == Resources(cpu=2, memory=512)

        GATES["big"].set()
        assert (await first).result == "big"
        await until(lambda: STARTED == ["big", "small"])
        GATES["small"].set()
        assert (await second).result == "small"
        assert capacity().used == Resources()

    async def test_waiters_run_in_arrival_order(self) -> None:
        configure_capacity(cpu=2)
        holder = asyncio.create_task(run(gated_task("holder", cpu=2)))
        await until(lambda: STARTED == ["holder"])
        wide = asyncio.create_task(run(gated_task("wide", cpu=2)))
        await until(lambda: capacity().waiting == 1)
        narrow = asyncio.create_task(run(gated_task("narrow", cpu=1)))
        await until(lambda: capacity().waiting == 2)

        GATES["holder"].set()
        await until(lambda: STARTED == ["holder", "wide"])
        await asyncio.sleep(0.05)
        assert STARTED == ["holder", "wide"]  # narrow fits in no gap: it does not overtake wide
        GATES["wide"].set()
        GATES["narrow"].set()
        await asyncio.gather(holder, wide, narrow)
        assert STARTED == ["holder", "wide", "narrow"]

    async def test_cancelled_waiter_leaves_the_queue(self) -> None:
        configure_capacity(gpu=1)
        holder = asyncio.create_task(run(gated_task("holder", gpu=1)))
        await until(lambda: STARTED == ["holder"])
        env = environment("python")
        waiter = asyncio.create_task(run(gated_task("waiter", gpu=1), env))
        await until(lambda: capacity().waiting == 1)
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert capacity().waiting == 0
        GATES["holder"].set()
        await holder
        assert capacity().used == Resources() and STARTED == ["holder"]

    async def test_needing_more_than_the_worker_has_fails_at_once(self) -> None:
        configure_capacity(cpu=2, gpu=0)
        error = await fail(gated_task("huge", cpu=4, gpu=1))
        assert error.type == "InsufficientCapacity" and error.non_retryable
        assert "4 cores, 1 GPUs" in error.message and "2 cores" in error.message
        assert STARTED == []

    async def test_unlimited_by_default(self) -> None:
        task = dataclasses.replace(
            python_task("tests.echo_sync"), requirements={"cpu": 512, "gpu": 64, "queue": "q"}
        )
        assert (await run(task)).result["input"] == {}

    def test_requirements_must_be_numbers(self) -> None:
        with pytest.raises(ApplicationError) as caught:
            Resources.of({"cpu": "lots"})
        assert caught.value.type == "InvalidInput"

    def test_fractional_cores_add_up(self) -> None:
        pool = Capacity(cpu=0.3)
        for _ in range(3):
            pool._take(Resources(cpu=0.1))
        assert pool.used == Resources(cpu=pytest.approx(0.3))
        pool.check(Resources(cpu=0.3))


# --- registry -----------------------------------------------------------------------------------


class TestRegistry:
    async def test_custom_task_type_runs_through_the_wrapper(self) -> None:
        custom = Registry()

        @custom.task_type("resize-image")
        def resize(task: TaskInput) -> dict[str, Any]:
            """Pretends to resize."""
            if task.input["width"] < 0:
                raise ArithmeticError("negative width")
            return {"width": task.input["width"], "of": task.task_id}

        context = {"task-1-result": {"width": 640}}
        outcome = await environment("resize-image", attempt=2).run(
            custom.activity("resize-image"),
            make_task("resize-image", {"width": "${task-1-result.width}"}, context=context, task_id="task-2"),
        )
        assert outcome == TaskOutcome({"width": 640, "of": "task-2"}, WORKER, 2, QUEUE)

        with pytest.raises(ApplicationError) as caught:
            await environment("resize-image").run(
                custom.activity("resize-image"), make_task("resize-image", {"width": -1})
            )
        assert caught.value.type == "ArithmeticError" and set(caught.value.details[0]) == WHERE_KEYS

    def test_a_name_is_registered_once(self) -> None:
        custom = Registry()
        custom.task_type("mine")(lambda task: None)
        with pytest.raises(ValueError, match="already registered"):
            custom.task_type("mine")(lambda task: None)
        custom.task_function("fn")(lambda input, context: None)
        with pytest.raises(ValueError, match="already registered"):
            custom.task_function("fn")(lambda input, context: None)
        with pytest.raises(ValueError, match="already registered"):
            task_function("word_count")(lambda input, context: None)

    @pytest.mark.parametrize("name", ["", "1st", "has space", "x" * 101, "ünï"])
    def test_invalid_names_are_refused(self, name: str) -> None:
        with pytest.raises(ValueError, match="invalid"):
            Registry().task_type(name)(lambda task: None)

    @pytest.mark.parametrize("name", ["sleep", "approval"])
    def test_workflow_types_cannot_be_registered(self, name: str) -> None:
        with pytest.raises(ValueError, match="workflow"):
            Registry().task_type(name)(lambda task: None)

    def test_task_activities_has_the_built_ins_and_a_catch_all(self) -> None:
        found = task_activities()
        assert {"noop", "http", "python"} <= set(registry.type_names())
        assert [registry.activity(name) for name in ("noop", "http", "python")] == found[:3]
        assert found[-1] is unknown_task_type

    async def test_unknown_task_type_fails_the_attempt_retryably(self) -> None:
        with pytest.raises(ApplicationError) as caught:
            await environment("teleport").run(unknown_task_type, [])
        error = caught.value
        assert error.type == "UnknownTaskType" and not error.non_retryable
        assert "'teleport'" in error.message and "http" in error.message
        assert set(error.details[0]) == WHERE_KEYS

    def test_load_modules(self) -> None:
        assert load_modules(["activities.examples", " "]) == [activities.examples]
        with pytest.raises(ModuleNotFoundError):
            load_modules(["activities.no_such_module"])


# --- the loopback server itself ---------------------------------------------------------------------


class TestLoopbackServer:
    async def test_scripted_sequences_methods_and_the_request_log(self, loopback: LoopbackServer) -> None:
        loopback.route("/flaky", status=[500, 502, 200], json={"ok": True})
        loopback.route("/thing", method="DELETE", status=204)
        loopback.route("/seq", replies=[Reply(201, text="made"), Reply(409, json={"error": "exists"})])
        async with httpx.AsyncClient(base_url=loopback.url) as client:
            assert [(await client.get("/flaky")).status_code for _ in range(4)] == [500, 502, 200, 200]
            assert (await client.delete("/thing")).status_code == 204
            assert (await client.get("/thing")).status_code == 404  # routed for DELETE only
            assert (await client.post("/seq")).text == "made"
            assert (await client.post("/seq")).json() == {"error": "exists"}

            async def chunks() -> Any:
                yield b"hello "
                yield b"world"

            await client.post("/upload?x=1", content=chunks())
        upload = loopback.requests_to("/upload", "POST")[0]
        assert upload.body == b"hello world" and upload.query == {"x": ["1"]}
        assert len(await loopback.wait_for_requests_async(4, "/flaky", timeout=1)) == 4
        with pytest.raises(AssertionError):
            loopback.wait_for_requests(1, "/never", timeout=0.05)
        loopback.reset()
        assert loopback.requests == []

    def test_stopping_wakes_a_delayed_reply(self) -> None:
        server = LoopbackServer().start()
        server.route("/slow", delay=30)
        started = time.monotonic()
        with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5) as client:
            threading.Timer(0.2, server.stop).start()
            client.get(server.url_for("/slow"))
        assert time.monotonic() - started < 3


# --- templating ---------------------------------------------------------------------------------


CONTEXT: dict[str, Any] = {
    "task-1-result": {"status": 200, "body": {"id": 42, "items": [{"name": "a"}, {"name": "b"}], "ok": True}},
    "user": "ann",
    "empty": None,
}


class TestTemplating:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("${task-1-result.status}", 200),
            ("${task-1-result.body.items}", [{"name": "a"}, {"name": "b"}]),
            ("${task-1-result.body.ok}", True),
            ("${empty}", None),
            ("${ user }", "ann"),
            ("${task-1-result.body.items.1.name}", "b"),
        ],
    )
    def test_exact_reference_keeps_the_type(self, text: str, expected: Any) -> None:
        assert render(text, CONTEXT) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("id=${task-1-result.body.id}", "id=42"),
            ("hi ${user}, ok=${task-1-result.body.ok}", "hi ann, ok=true"),
            ("items: ${task-1-result.body.items}", 'items: [{"name":"a"},{"name":"b"}]'),
            ("${user}${user}", "annann"),
            ("none: ${empty}", "none: null"),
        ],
    )
    def test_embedded_reference_becomes_text(self, text: str, expected: str) -> None:
        assert render(text, CONTEXT) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("$${user}", "${user}"),
            ("cost $${price} for ${user}", "cost ${price} for ann"),
            ("$5 and $ {user}", "$5 and $ {user}"),
            ("unterminated ${user", "unterminated ${user"),
            ("plain", "plain"),
        ],
    )
    def test_escapes_and_plain_text(self, text: str, expected: str) -> None:
        assert render(text, CONTEXT) == expected

    def test_renders_nested_values_and_keeps_keys(self) -> None:
        value = {
            "${user}": ["${task-1-result.body.id}", {"deep": "x-${user}"}],
            "n": 1.5,
            "b": False,
            "z": None,
        }
        assert render(value, CONTEXT) == {"${user}": [42, {"deep": "x-ann"}], "n": 1.5, "b": False, "z": None}

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("${task-2-result}", "has no key 'task-2-result'"),
            ("${task-1-result.body.missing}", "task-1-result.body has no key 'missing'"),
            ("${task-1-result.body.items.5}", "has 2 items; index 5 is out of range"),
            ("${task-1-result.body.items.first}", "is a list; 'first' is not an index"),
            ("${user.name}", "user is str, which has no 'name'"),
            ("${empty.x}", "empty is null"),
            ("before ${}", "empty"),
        ],
    )
    def test_unknown_path_is_a_non_retryable_error(self, text: str, reason: str) -> None:
        with pytest.raises(ApplicationError) as caught:
            render({"field": [text]}, CONTEXT)
        assert caught.value.type == "UnresolvedReference" and caught.value.non_retryable
        assert reason in caught.value.message

    def test_resolve_and_references(self) -> None:
        assert resolve("task-1-result.body.items.0", CONTEXT) == {"name": "a"}
        value = {"a": "${x.y} and ${ z }", "b": ["$${not}", "${w}"]}
        assert references(value) == ["x.y", "z", "w"]
