"""A worker: `wfo-worker [--queue NAME ...] [--load MODULE ...] [--max-concurrent-activities N] [--cpu N --memory MB --gpu N]`.

Serving the system queue (wfo-system) runs the interpreter workflow and its system activities,
which need the database settings; any other queue (default wfo-tasks) runs task activities,
which need no database. A fleet for special hardware serves its own queue, e.g.
`wfo-worker --queue gpu --gpu 2`, and definitions route tasks there with
`resourceRequirements.queue`. `--load mymodule` imports a module (from the current folder too)
whose decorators register task functions and types; the examples stay loaded unless
--no-examples. Temporal hands a queue's tasks to any worker of the queue: give each bundle of
code its own queue (`--queue billing --load billing_tasks`), or a task may first land on a
worker without its code (a retried attempt).

SIGTERM or SIGINT stops polling and gives running activities --graceful-shutdown seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.capacity import configure_capacity, configure_worker
from activities.netguard import configure_network
from activities.registry import load_modules, task_activities
from activities.secrets import configure_secrets
from activities.templating import configure_rendering
from api.codec import context_free
from api.db import create_engine, create_writer_engine, migrate, session_factory
from api.settings import Settings
from api.temporal import connect
from server import configure_logging, load_settings
from workflows.constants import DEFAULT_TASK_QUEUE, SYSTEM_TASK_QUEUE

log = logging.getLogger("worker")

#: Task modules imported by default: they register @task_function / @task_type handlers.
DEFAULT_TASK_MODULES = ["activities.examples"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wfo-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="task queue to serve, repeatable (default: the system queue and the default task queue, "
        f"{SYSTEM_TASK_QUEUE} and {DEFAULT_TASK_QUEUE} unless WFO_SYSTEM_TASK_QUEUE / WFO_DEFAULT_TASK_QUEUE say otherwise)",
    )
    parser.add_argument("--max-concurrent-activities", type=int, default=100, metavar="N")
    parser.add_argument("--max-concurrent-workflow-tasks", type=int, default=100, metavar="N")
    parser.add_argument(
        "--cpu", type=float, help="CPU cores this worker offers to tasks (default: unlimited)"
    )
    parser.add_argument(
        "--memory", type=float, help="memory in MB this worker offers to tasks (default: unlimited)"
    )
    parser.add_argument("--gpu", type=float, help="GPUs this worker offers to tasks (default: unlimited)")
    parser.add_argument(
        "--load",
        action="append",
        dest="modules",
        metavar="MODULE",
        help="Python module that registers task functions or types, repeatable; found in the current "
        "folder too. The examples (activities.examples) are loaded as well unless --no-examples",
    )
    parser.add_argument(
        "--no-examples",
        action="store_true",
        help="do not load the example task functions (word_count, sum)",
    )
    parser.add_argument(
        "--graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time running activities get to finish",
    )
    parser.add_argument("--identity", help="worker identity shown in Temporal (default: pid@host)")
    args = parser.parse_args(argv)
    for flag in ("max_concurrent_activities", "max_concurrent_workflow_tasks"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("cpu", "memory", "gpu"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            parser.error(f"--{flag} must not be negative")
    defaults = [] if args.no_examples else DEFAULT_TASK_MODULES
    args.modules = list(dict.fromkeys([*defaults, *(args.modules or [])]))
    return args


class WorkerSet:
    """The Temporal workers of one process, and what the system queue brings with it: the
    database engine and the webhook dispatcher."""

    def __init__(self, client: Client, settings: Settings, args: argparse.Namespace, identity: str) -> None:
        from activities.publisher import WRITE_TIMEOUT, BatchWriter, ReadModelRunner
        from activities.system import SystemActivities
        from api.services.delivery import Dispatcher
        from workflows.delivery import WebhookDeliveryWorkflow
        from workflows.interpreter import InterpreterWorkflow

        self.workers: list[Worker] = []
        self.engine: AsyncEngine | None = None
        self.writer_engine: sa.Engine | None = None
        #: The interpreter's system activities (database and Temporal work), when this worker has them.
        self.system: SystemActivities | None = None
        self.dispatcher: Dispatcher | None = None
        common: dict[str, Any] = {
            "max_concurrent_activities": args.max_concurrent_activities,
            "max_concurrent_workflow_tasks": args.max_concurrent_workflow_tasks,
            "graceful_shutdown_timeout": timedelta(seconds=args.graceful_shutdown),
            "identity": identity,
        }
        system_role = settings.system_task_queue in args.queues
        if system_role:
            self.engine = create_engine(settings)
            sessions = session_factory(self.engine)
            system = self.system = SystemActivities(sessions, client, settings)
            self.dispatcher = Dispatcher(sessions, client, settings)
            # Writes each activation's events to the read model before its commands leave.
            self.writer_engine = create_writer_engine(settings, WRITE_TIMEOUT)
            runner = ReadModelRunner(
                SandboxedWorkflowRunner(),
                BatchWriter(self.writer_engine),
                asyncio.get_running_loop(),
                plain_converter=context_free(client.data_converter),
            )
        # A system worker runs the interpreter on the default task queue too (new executions run
        # there, so that Temporal hands a task on that queue straight back to this worker inside
        # the workflow-task completion: eager dispatch), and on the system queue (executions
        # started before; the reconciler).
        queues = list(dict.fromkeys([*args.queues, *([settings.default_task_queue] if system_role else [])]))
        for queue in queues:
            workflows: list[type] = []
            activities: list[Any] = []
            options = dict(common)
            if system_role and queue in (settings.system_task_queue, settings.default_task_queue):
                workflows.append(InterpreterWorkflow)
                activities += system.activities()  # its local activities run where it runs
                options["workflow_runner"] = runner
            if queue != settings.system_task_queue and queue in args.queues:
                activities += task_activities()
            elif queue == settings.default_task_queue:
                # Only the interpreter's workflow tasks (and its local activities) here: polling the
                # queue's activity tasks too would take tasks this worker cannot run.
                options["no_remote_activities"] = True
            if system_role and queue == settings.system_task_queue:
                # The reconciler's passes (started by its schedule, see run() below).
                from activities.reconcile import ReconcileActivities
                from workflows.reconciler import ReconcilerWorkflow

                workflows.append(ReconcilerWorkflow)
                activities += ReconcileActivities(sessions, client, settings).activities()
            self.workers.append(
                Worker(client, task_queue=queue, workflows=workflows, activities=activities, **options)
            )
        if system_role:
            # Webhook deliveries on their own queue: slow receivers never hold up executions.
            self.workers.append(
                Worker(
                    client,
                    task_queue=settings.webhook_task_queue,
                    workflows=[WebhookDeliveryWorkflow],
                    activities=system.delivery_activities(),
                    **common,
                )
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[list[asyncio.Task[None]]]:
        """Run every worker (and the dispatcher) until the block ends; then shut down gracefully."""
        tasks = [asyncio.create_task(w.run()) for w in self.workers]
        dispatching = asyncio.create_task(self.dispatcher.run_forever()) if self.dispatcher else None
        try:
            yield tasks
        finally:
            if dispatching is not None:
                dispatching.cancel()
                await asyncio.gather(dispatching, return_exceptions=True)
            await asyncio.gather(*(w.shutdown() for w in self.workers), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.engine is not None:
                await self.engine.dispose()
            if self.writer_engine is not None:
                self.writer_engine.dispose()


async def run(args: argparse.Namespace, settings: Settings) -> None:
    identity = args.identity or f"{os.getpid()}@{socket.gethostname()}"
    load_modules(args.modules)
    configure_worker(identity)
    configure_capacity(cpu=args.cpu, memory=args.memory, gpu=args.gpu)
    configure_network(allow_private=settings.allow_private_networks)
    configure_rendering(limit=settings.max_rendered_input_bytes)
    configure_secrets(directory=settings.secrets_dir)
    if settings.system_task_queue in args.queues:
        await asyncio.to_thread(migrate, settings)
    client = await connect(settings, identity=identity)
    if settings.system_task_queue in args.queues:
        from temporalio.service import RPCError

        from api.services.reconciler import ensure_schedule

        try:
            # Created by whichever system worker starts first, brought up to date by the others.
            await ensure_schedule(client, settings)
        except RPCError as exc:
            # Executions run without it (only the safety net is missing): say so, serve anyway.
            log.error("could not create or update the reconciler's schedule: %s", exc)
    worker_set = WorkerSet(client, settings, args, identity)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    log.info("worker %s serving %s", identity, ", ".join(args.queues))
    failure: BaseException | None = None
    async with worker_set.running() as running:
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*running, stopped], return_when=asyncio.FIRST_COMPLETED)
        failure = next((t.exception() for t in done if t is not stopped and t.exception() is not None), None)
        if failure is not None:
            log.error("a worker stopped on its own: %s", failure)
        log.info("shutting down: finishing running activities")
        stopped.cancel()
    log.info("worker stopped")
    if failure is not None:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings()
    args.queues = args.queues or [settings.system_task_queue, settings.default_task_queue]
    configure_logging(settings.log_level)
    status = 0
    try:
        asyncio.run(run(args, settings))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    # Exit without interpreter finalisation: the SDK's native threads can otherwise abort it
    # ("PyGILState_Release ... finalizing", temporalio/sdk-python#300) after a clean shutdown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
