"""The baseline of the engine benchmark: a DAG as a Temporal developer would hand-write it, with
the very same `noop` task activity our workers run.

    python -m bench.handwritten --address 127.0.0.1:7233 --queue bench-handwritten

runs one worker process (workflow and activities on one queue, the SDK's default slots, like
ours) until SIGTERM. Each node is a coroutine that awaits its dependencies' coroutines and then
runs its activity: nothing stored, nothing published, no sync points, no read model.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.registry import task_activities
    from workflows.inputs import TaskInput


@dataclass
class Node:
    id: str
    dependencies: list[str] = field(default_factory=list)


@dataclass
class DagInput:
    nodes: list[Node]
    queue: str


@workflow.defn(name="HandWrittenDag")
class HandWrittenDag:
    @workflow.run
    async def run(self, dag: DagInput) -> int:
        started: dict[str, asyncio.Task[None]] = {}

        async def node(n: Node) -> None:
            if n.dependencies:
                await asyncio.gather(*(started[d] for d in n.dependencies))
            await workflow.execute_activity(
                "noop",
                TaskInput(
                    execution_id=workflow.info().workflow_id, task_id=n.id, task_type="noop", queue=dag.queue
                ),
                task_queue=dag.queue,
                activity_id=n.id,
                start_to_close_timeout=timedelta(minutes=5),
            )

        # Every coroutine is created before any runs, so each finds its dependencies' tasks.
        for n in dag.nodes:
            started[n.id] = asyncio.create_task(node(n))
        await asyncio.gather(*started.values())
        return len(dag.nodes)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--queue", default="bench-handwritten")
    args = parser.parse_args()
    from api.codec import data_converter
    from api.settings import get_settings

    # The stack's payload encryption, if any (the harness passes its settings in the environment).
    client = await Client.connect(
        args.address, data_converter=data_converter(get_settings().payload_codec_keys())
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        client,
        task_queue=args.queue,
        workflows=[HandWrittenDag],
        activities=task_activities(),
        max_concurrent_activities=100,
        max_concurrent_workflow_tasks=100,
        identity="bench-handwritten",
    )
    async with worker:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
