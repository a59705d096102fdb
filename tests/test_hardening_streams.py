"""Answers that never end or explode: an `http` task, the webhook test call and webhook deliveries
read a receiver's answer with one deadline for the whole exchange and a cap on decoded bytes.

Receivers are real HTTP servers on loopback that trickle bytes forever or send gzip bombs. Memory
is measured with tracemalloc (the peak of Python allocations, zlib's output included), not time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import itertools
import tracemalloc
from collections.abc import Iterator
from typing import Any, Self

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.capacity import configure_worker
from activities.registry import registry
from api.settings import Settings
from tests.loopback import LoopbackServer
from tests.webhook_support import register, run_noop, wait_deliveries
from workflows.inputs import TaskInput

#: 50 MB of zeros, gzipped to about 50 KB: one network read of it used to inflate all at once.
BOMB_BYTES = 50 * 1024 * 1024
#: Peak allocation allowed while a bomb is read; far below what inflating it would take.
PEAK_LIMIT = 8 * 1024 * 1024
#: Generous bound that only catches a hang (the deadlines under test are a second or less).
HANG = 30
TEST_CALL = {"event": "workflow.execution.completed", "payload": {"id": "1"}, "secret": "webhook-secret"}


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip.compress(bytes(BOMB_BYTES), compresslevel=9)


def endless() -> Iterator[bytes]:
    return itertools.repeat(b"x" * 1024)


def trickle() -> Iterator[bytes]:
    return itertools.repeat(b"x")


def endless_head() -> Iterator[bytes]:
    """A status line, then one header line after another, never the blank line that ends them."""
    return itertools.chain([b"HTTP/1.1 200 OK\r\n"], itertools.repeat(b"X-Drip: 1\r\n"))


class PeakMemory:
    """The peak of traced allocations inside the block."""

    def __enter__(self) -> Self:
        tracemalloc.start()
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


async def run_http(url: str, max_result_bytes: int = 256 * 1024, **input: Any) -> Any:
    configure_worker("test-worker@loopback")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="http", task_queue="wfo-tasks")
    task = TaskInput(
        execution_id="exec-1",
        task_id="fetch",
        task_type="http",
        input={"url": url, **input},
        max_result_bytes=max_result_bytes,
    )
    async with asyncio.timeout(HANG):
        return await env.run(registry.activity("http"), task)


class TestHttpTaskAnswers:
    async def test_a_trickle_that_never_ends_meets_the_overall_deadline(self, loopback: LoopbackServer):
        # One byte every 50 ms: no single read ever waits long enough for a per-read timeout.
        loopback.route("/drip", stream=trickle, interval=0.05)
        with pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/drip"), max_result_bytes=1024 * 1024, timeoutSeconds=1)
        assert caught.value.type == "HttpNetworkError" and "timed out after 1 s" in caught.value.message

    async def test_an_endless_stream_stops_at_the_result_limit(self, loopback: LoopbackServer):
        loopback.route("/firehose", stream=endless)
        with pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/firehose"), max_result_bytes=64 * 1024)
        assert caught.value.type == "ResultTooLarge" and caught.value.non_retryable
        assert "over 65536 bytes" in caught.value.message

    async def test_a_gzip_bomb_stops_at_the_limit_without_inflating(
        self, loopback: LoopbackServer, bomb: bytes
    ):
        loopback.route("/bomb", body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
        with PeakMemory() as memory, pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/bomb"))
        assert caught.value.type == "ResultTooLarge", caught.value
        # Before, httpx inflated each 64 KB read whole: 50 MB at once.
        assert memory.peak < PEAK_LIMIT, f"peak {memory.peak / 1e6:.1f} MB"

    async def test_gzip_inside_gzip_is_bounded_too(self, loopback: LoopbackServer, bomb: bytes):
        loopback.route("/bomb", body=gzip.compress(bomb), headers={"Content-Encoding": "gzip, gzip"})
        with PeakMemory() as memory, pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/bomb"))
        assert caught.value.type == "ResultTooLarge"
        assert memory.peak < PEAK_LIMIT, f"peak {memory.peak / 1e6:.1f} MB"

    async def test_compressed_answers_under_the_limit_are_decoded(self, loopback: LoopbackServer):
        loopback.route(
            "/gz",
            body=gzip.compress(b'{"ok": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        loopback.route(
            "/twice", body=gzip.compress(gzip.compress(b"hello")), headers={"Content-Encoding": "gzip, gzip"}
        )
        assert (await run_http(loopback.url_for("/gz"))).result["body"] == {"ok": True}
        assert (await run_http(loopback.url_for("/twice"))).result["body"] == "hello"
        assert loopback.requests_to("/gz")[0].headers["accept-encoding"] == "gzip, deflate"

    async def test_an_encoding_that_cannot_be_bounded_is_refused(self, loopback: LoopbackServer):
        loopback.route("/br", body=b"\x1b\x00", headers={"Content-Encoding": "br"})
        with pytest.raises(ApplicationError) as caught:
            await run_http(loopback.url_for("/br"))
        assert caught.value.type == "UnsupportedContentEncoding" and caught.value.non_retryable
        assert "'br'" in caught.value.message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestWebhookTestCall:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"webhook_timeout_seconds": 0.5, "webhook_test_per_minute": 50})

    async def test_a_head_that_never_ends_meets_the_deadline(self, client, operator, loopback):
        # A header line every 50 ms: no single read ever waits long enough for a per-read timeout.
        loopback.route("/webhook", stream=endless_head, interval=0.05, raw=True)
        async with asyncio.timeout(HANG):  # before, the call took as long as the receiver liked
            response = await client.post(
                "/api/webhooks/test",
                json={**TEST_CALL, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        assert response.json() == {
            "success": False,
            "statusCode": None,
            "message": "The receiver did not answer within 0.5 s",
        }

    async def test_a_body_that_trickles_forever_is_not_waited_for(self, client, operator, loopback):
        loopback.route("/webhook", stream=trickle, interval=0.05)
        async with asyncio.timeout(HANG):  # before, the call read the body, forever
            response = await client.post(
                "/api/webhooks/test",
                json={**TEST_CALL, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        assert response.json() == {
            "success": True,
            "statusCode": 200,
            "message": "Webhook delivered successfully",
        }

    async def test_a_gzip_bomb_answer_is_not_read(self, client, operator, loopback, bomb):
        loopback.route("/webhook", body=bomb, headers={"Content-Encoding": "gzip"})
        with PeakMemory() as memory:
            response = await client.post(
                "/api/webhooks/test",
                json={**TEST_CALL, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        assert response.json() == {
            "success": True,
            "statusCode": 200,
            "message": "Webhook delivered successfully",
        }
        assert memory.peak < PEAK_LIMIT, f"peak {memory.peak / 1e6:.1f} MB"

    async def test_an_endless_body_after_a_2xx_still_counts_as_delivered(self, client, operator, loopback):
        loopback.route("/webhook", stream=endless)
        async with asyncio.timeout(HANG):
            response = await client.post(
                "/api/webhooks/test",
                json={**TEST_CALL, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        assert response.json()["success"] is True


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestWebhookDelivery:
    @pytest.fixture
    def settings(self, engine_settings: Settings) -> Settings:
        return engine_settings.model_copy(
            update={
                "webhook_task_queue": f"webhooks-{engine_settings.workflow_id_prefix}",
                "webhook_initial_retry_seconds": 1.0,
                "webhook_max_retry_interval_seconds": 1.0,
                "webhook_timeout_seconds": 1.0,
                "webhook_dispatch_seconds": 0.05,
            }
        )

    async def test_a_head_that_never_ends_is_a_failed_attempt(self, client, operator, worker, loopback):
        loopback.route("/hook", stream=endless_head, interval=0.05, raw=True)
        hook = await register(client, operator, loopback.url_for("/hook"), ["workflow.execution.completed"])
        await run_noop(client, operator)
        (delivery,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["attempts"] >= 1,
            "a failed attempt",
        )
        assert delivery["status"] == "PENDING" and delivery["lastError"] == "no answer within 1 s", delivery

    async def test_a_body_that_trickles_forever_is_not_waited_for(self, client, operator, worker, loopback):
        loopback.route("/hook", stream=trickle, interval=0.05)
        hook = await register(client, operator, loopback.url_for("/hook"), ["workflow.execution.completed"])
        await run_noop(client, operator)
        # Before, the attempt read the endless body and never ended: nothing was ever recorded.
        (delivery,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "DELIVERED",
            "DELIVERED",
        )
        assert delivery["attempts"] == 1 and delivery["lastStatusCode"] == 200

    async def test_a_gzip_bomb_answer_is_delivered_without_reading_it(
        self, client, operator, worker, loopback, bomb
    ):
        loopback.route("/hook", body=bomb, headers={"Content-Encoding": "gzip"})
        hook = await register(client, operator, loopback.url_for("/hook"), ["workflow.execution.completed"])
        await run_noop(client, operator)
        (delivery,) = await wait_deliveries(
            client,
            operator,
            hook["id"],
            lambda items: len(items) == 1 and items[0]["status"] == "DELIVERED",
            "DELIVERED",
        )
        assert delivery["attempts"] == 1 and delivery["lastStatusCode"] == 200
