"""A worker: `wfo-worker [--queue Q ...] [--max-concurrent-activities N]`.

Serves user task activities on the given queues (default wfo-tasks) until SIGTERM or SIGINT,
then stops polling and lets running activities finish (up to --graceful-shutdown seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from datetime import timedelta

from temporalio.worker import Worker

from activities.tasks import TASK_ACTIVITIES
from api.temporal import connect
from server import configure_logging, load_settings
from workflows.constants import DEFAULT_TASK_QUEUE

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wfo-worker", description=__doc__)
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help=f"task queue to serve (repeatable; default {DEFAULT_TASK_QUEUE})",
    )
    parser.add_argument("--max-concurrent-activities", type=int, default=100, metavar="N")
    parser.add_argument(
        "--graceful-shutdown", type=float, default=30.0, metavar="SECONDS", help="time running activities get to finish"
    )
    parser.add_argument("--identity", help="worker identity shown in Temporal (default: pid@host)")
    args = parser.parse_args(argv)
    if args.max_concurrent_activities < 1:
        parser.error("--max-concurrent-activities must be at least 1")
    args.queues = list(dict.fromkeys(args.queues or [DEFAULT_TASK_QUEUE]))
    return args


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    identity = args.identity or f"{os.getpid()}@{socket.gethostname()}"
    client = await connect(settings, identity=identity)
    workers = [
        Worker(
            client,
            task_queue=queue,
            activities=TASK_ACTIVITIES,
            max_concurrent_activities=args.max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=args.graceful_shutdown),
            identity=identity,
        )
        for queue in args.queues
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    log.info("worker %s serving %s", identity, ", ".join(args.queues))
    tasks = [asyncio.create_task(w.run()) for w in workers]
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
    if stopped not in done:
        # A worker failed on its own (e.g. lost Temporal for good): stop the rest and report it.
        for task in done:
            task.result()
    log.info("shutting down: finishing running activities")
    await asyncio.gather(*(w.shutdown() for w in workers))
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
