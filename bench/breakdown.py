"""Where our extra time per hop goes: the hand-written DAG with our costs added one at a time.

    python -m bench.breakdown [--rounds 3] [--database sqlite|postgresql] [--variants a,b] [--small]

The hand-written workflow of bench/handwritten.py is run in variants, each adding one thing our
engine does, so that the difference between neighbouring rows is the price of that thing:

* `same-queue`: workflow and activities on one queue (what a Temporal developer writes; the
  server hands the next activity back inside the workflow-task completion: eager dispatch);
* `split-queue`: the activities on another queue (served by the same process), as our
  interpreter on `wfo-system` with tasks on `wfo-tasks` had them;
* `+timer`: plus a timer cancelled and started again on every hop (our old inspection timer);
* `+publish`: plus a local activity per workflow task, awaited before the next activity is
  scheduled, writing a batch of rows in one transaction of the real database (our old publishing);
* `+publish-alongside`: the same local activity started in the same activation as the schedule
  commands (the workflow task still completes only once it is done);
* `same-queue+write-through`: the rows written by a workflow runner after each activation,
  before its commands leave (our publishing now: activities/publisher.py);
* `same-queue+heartbeat-timeout`: the activity with a heartbeat timeout, as ours have.

Beside them, in the same run, our engine itself (`ours`: POST /api/executions, as bench.engine).
CPU milliseconds per execution are read from /proc for every process of the stack, for the
PostgreSQL server's processes (`postgres`) and for the whole machine (`machine`).
Batches of the chain and fan-out shapes of bench.engine, alternating variants within each round;
one-at-a-time hop latency from the histories.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

with workflow.unsafe.imports_passed_through():
    from activities.registry import task_activities
    from bench.bd_collector import collect, collected
    from workflows.inputs import TaskInput

WORKFLOW_QUEUE = "bd-workflows"
ACTIVITY_QUEUE = "bd-activities"


@dataclass
class Variant:
    name: str
    split_queue: bool = False
    timer: bool = False
    publish: str = "none"  # none | before | alongside | through
    heartbeat: bool = False


VARIANTS = [
    Variant("same-queue"),
    Variant("split-queue", split_queue=True),
    Variant("split-queue+timer", split_queue=True, timer=True),
    Variant("split-queue+timer+publish", split_queue=True, timer=True, publish="before"),
    Variant("split-queue+timer+publish-alongside", split_queue=True, timer=True, publish="alongside"),
    Variant("same-queue+publish-alongside", publish="alongside"),
    Variant("same-queue+write-through", publish="through"),
    Variant("same-queue+heartbeat-timeout", heartbeat=True),
]


@dataclass
class BdNode:
    id: str
    dependencies: list[str] = field(default_factory=list)


@dataclass
class BdInput:
    nodes: list[BdNode]
    split_queue: bool
    timer: bool
    publish: str
    heartbeat: bool = False


@dataclass
class BdBatch:
    key: str
    rows: list[dict[str, Any]]


@workflow.defn(name="BreakdownDag")
class BreakdownDag:
    """The hand-written DAG, with our engine's costs switched on by the input."""

    def __init__(self) -> None:
        self.changed = False
        self.pending: list[dict[str, Any]] = []
        self.seq = 0
        self.published = 0

    @workflow.run
    async def run(self, dag: BdInput) -> int:
        started: dict[str, asyncio.Task[None]] = {}
        self.through = dag.publish == "through"
        queue = ACTIVITY_QUEUE if dag.split_queue else WORKFLOW_QUEUE
        # One local activity at a time publishes whatever is pending, as our interpreter did (one
        # publish per workflow task); "before": a node starts its activity once its event is out.
        publisher = asyncio.create_task(self._publisher()) if dag.publish in ("before", "alongside") else None

        async def node(n: BdNode) -> None:
            if n.dependencies:
                await asyncio.gather(*(started[d] for d in n.dependencies))
            mine = self._emit(n.id, "started")
            if dag.publish == "before":
                await workflow.wait_condition(lambda: self.published >= mine)
            await workflow.execute_activity(
                "noop",
                TaskInput(
                    execution_id=workflow.info().workflow_id, task_id=n.id, task_type="noop", queue=queue
                ),
                task_queue=queue,
                activity_id=n.id,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=30) if dag.heartbeat else None,
            )
            self._emit(n.id, "completed")
            self.changed = True

        for n in dag.nodes:
            started[n.id] = asyncio.create_task(node(n))
        everything = asyncio.gather(*started.values())
        while not everything.done():
            if dag.timer:
                # Our interpreter's loop: wait for a change with a timeout (a timer per wait).
                try:
                    await workflow.wait_condition(
                        lambda: self.changed or everything.done(), timeout=timedelta(seconds=10)
                    )
                except TimeoutError:
                    pass
                self.changed = False
            else:
                await workflow.wait_condition(lambda: everything.done())
        await everything
        if publisher is not None:
            await workflow.wait_condition(lambda: self.published >= self.seq)
        if publisher is not None:
            publisher.cancel()
        return len(dag.nodes)

    def _emit(self, task_id: str, kind: str) -> int:
        self.seq += 1
        event = {"seq": self.seq, "task": task_id, "kind": kind}
        if self.through:
            collect(workflow.info().workflow_id, event)
        else:
            self.pending.append(event)
        return self.seq

    async def _publish(self) -> None:
        while self.pending:
            batch = list(self.pending)
            await workflow.execute_local_activity(
                "bd_publish",
                BdBatch(workflow.info().workflow_id, batch),
                start_to_close_timeout=timedelta(seconds=10),
            )
            del self.pending[: len(batch)]
            self.published = batch[-1]["seq"]

    async def _publisher(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.pending))
            await self._publish()


class Publisher:
    """The local activity: a batch of rows and an upsert of a summary row in one transaction."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        from api.db import create_engine
        from api.settings import Settings

        self.sa = sa
        # The service's own engine (pool, SQLite pragmas) from the same WFO_ settings.
        self.engine = create_engine(Settings())
        self.meta = sa.MetaData()
        self.events = sa.Table(
            "bd_events",
            self.meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("key", sa.String(100), index=True),
            sa.Column("seq", sa.Integer),
            sa.Column("data", sa.JSON),
        )
        self.summary = sa.Table(
            "bd_summary",
            self.meta,
            sa.Column("key", sa.String(100), primary_key=True),
            sa.Column("last_seq", sa.Integer),
        )

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.meta.create_all)

    @activity.defn(name="bd_publish")
    async def publish(self, batch: BdBatch) -> int:
        sa = self.sa
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(self.summary.c.last_seq).where(self.summary.c.key == batch.key))
            ).first()
            last = row[0] if row else 0
            fresh = [r for r in batch.rows if r["seq"] > last]
            if fresh:
                await conn.execute(
                    self.events.insert(), [{"key": batch.key, "seq": r["seq"], "data": r} for r in fresh]
                )
                if row is None:
                    await conn.execute(self.summary.insert().values(key=batch.key, last_seq=fresh[-1]["seq"]))
                else:
                    await conn.execute(
                        self.summary.update()
                        .where(self.summary.c.key == batch.key)
                        .values(last_seq=fresh[-1]["seq"])
                    )
        return len(batch.rows)


class WriteThroughRunner(WorkflowRunner):
    """Runs each activation, then writes the events it emitted before handing back its completion."""

    def __init__(self, inner: WorkflowRunner, publisher: Publisher, loop: asyncio.AbstractEventLoop) -> None:
        self.inner, self.publisher, self.loop = inner, publisher, loop

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _WriteThrough(self.inner.create_instance(det), self)


class _WriteThrough(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, runner: WriteThroughRunner) -> None:
        self.inner, self.runner = inner, runner

    def activate(self, act: Any) -> Any:
        collected.events = {}
        completion = self.inner.activate(act)
        events, collected.events = collected.events, {}
        if events and not act.is_replaying:
            for key, rows in events.items():
                asyncio.run_coroutine_threadsafe(
                    self.runner.publisher.publish(BdBatch(key, rows)), self.runner.loop
                ).result(1.5)
        return completion

    def get_serialization_context(self, command_info: Any) -> Any:
        return self.inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self.inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()


async def serve(address: str) -> None:
    """The breakdown's worker process: the workflow queue (workflow + activities) and the activity queue."""
    from api.codec import data_converter
    from api.settings import get_settings

    # The stack's payload encryption, if any (the harness passes its settings in the environment).
    client = await Client.connect(address, data_converter=data_converter(get_settings().payload_codec_keys()))
    publisher = Publisher()
    await publisher.create()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    common: dict[str, Any] = {
        "max_concurrent_activities": 100,
        "max_concurrent_workflow_tasks": 100,
        "identity": "bench-breakdown",
    }
    workers = [
        Worker(
            client,
            task_queue=WORKFLOW_QUEUE,
            workflows=[BreakdownDag],
            activities=[*task_activities(), publisher.publish],
            workflow_runner=WriteThroughRunner(
                SandboxedWorkflowRunner(
                    restrictions=SandboxRestrictions.default.with_passthrough_modules("bench.bd_collector")
                ),
                publisher,
                asyncio.get_running_loop(),
            ),
            **common,
        ),
        Worker(client, task_queue=ACTIVITY_QUEUE, activities=task_activities(), **common),
    ]
    runs = [asyncio.create_task(w.run()) for w in workers]
    await stop.wait()
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    await asyncio.gather(*runs, return_exceptions=True)
    await publisher.engine.dispose()


async def run_variant(
    client: Client, variant: Variant, tasks: list[dict[str, Any]], batch: int
) -> tuple[float, list[str]]:
    dag = BdInput(
        nodes=[BdNode(t["id"], t.get("dependencies", [])) for t in tasks],
        split_queue=variant.split_queue,
        timer=variant.timer,
        publish=variant.publish,
        heartbeat=variant.heartbeat,
    )
    ids = [f"bd-{uuid.uuid4().hex[:12]}" for _ in range(batch)]
    began = time.perf_counter()
    handles = await asyncio.gather(
        *(client.start_workflow(BreakdownDag.run, dag, id=w, task_queue=WORKFLOW_QUEUE) for w in ids)
    )
    await asyncio.gather(*(h.result() for h in handles))
    return time.perf_counter() - began, ids


async def run(
    rounds: int, small: bool, database: str, workdir: Path, only: set[str] | None = None
) -> dict[str, Any]:
    from bench.engine import SHAPES, latencies, run_ours
    from bench.harness import local_stack, machine, postgres_database, summary
    from tests.processes import settings_env

    shapes = {name: SHAPES[name] for name in ("chain10", "fanout20")}
    shapes = {name: (tasks, 2 if small else batch) for name, (tasks, batch) in shapes.items()}
    with postgres_database() if database == "postgresql" else contextlib.nullcontext() as database_url:
        async with local_stack(workdir / "stack", database_url) as stack:
            breakdown_worker = stack.processes.add(
                "breakdown-worker",
                [
                    sys.executable,
                    "-m",
                    "bench.breakdown",
                    "--serve",
                    "--address",
                    stack.settings.temporal_address,
                ],
                settings_env(stack.settings),
            ).start()
            definitions: dict[str, str] = {}
            async with stack.http() as http:
                for name, (tasks, _) in shapes.items():
                    response = await http.post(
                        "/api/workflows", json={"name": name, "tasks": tasks, "synchronizationPoints": []}
                    )
                    response.raise_for_status()
                    definitions[name] = str(response.json()["id"])
            sides = ["ours", *(v.name for v in VARIANTS if not only or v.name in only)]
            by_name = {v.name: v for v in VARIANTS}

            async def once(name: str, side: str, batch: int) -> tuple[float, list[str]]:
                tasks = shapes[name][0]
                if side == "ours":
                    return await run_ours(stack, definitions[name], batch)
                return await run_variant(stack.client, by_name[side], tasks, batch)

            processes = {
                "temporal": stack.temporal.pid,
                "api": stack.api.pid,
                "worker": stack.workers[0].pid,
                "breakdown-worker": breakdown_worker.pid,
            }

            for name in shapes:  # warm-up
                for side in sides:
                    await once(name, side, 1)
            results: dict[str, Any] = {}
            for name, (tasks, batch) in shapes.items():
                seconds: dict[str, list[float]] = {s: [] for s in sides}
                cpu: dict[str, dict[str, float]] = {s: dict.fromkeys(processes, 0.0) for s in sides}
                for r in range(rounds):
                    order = sides if r % 2 == 0 else list(reversed(sides))
                    for side in order:
                        before = {k: cpu_seconds(pid) for k, pid in processes.items()}
                        before_postgres, before_machine = postgres_cpu_seconds(), machine_cpu_seconds()
                        took, _ = await once(name, side, batch)
                        for k, pid in processes.items():
                            cpu[side][k] += cpu_seconds(pid) - before[k]
                        cpu[side]["postgres"] = (
                            cpu[side].get("postgres", 0.0) + postgres_cpu_seconds() - before_postgres
                        )
                        cpu[side]["machine"] = (
                            cpu[side].get("machine", 0.0) + machine_cpu_seconds() - before_machine
                        )
                        seconds[side].append(took)
                        print(f"  {name:<9} round {r + 1} {side:<36} {took:7.2f} s", flush=True)
                shape: dict[str, Any] = {"tasks": len(tasks), "batch": batch}
                for side in sides:
                    solo: list[str] = []
                    for _ in range(1 if small else 3):
                        solo.extend((await once(name, side, 1))[1])
                    hop = await latencies(stack, solo, tasks)
                    median = statistics.median(seconds[side])
                    shape[side] = {
                        "seconds": [round(s, 3) for s in seconds[side]],
                        "executionsPerSecond": round(batch / median, 2),
                        "hopMsOneAtATime": summary(hop["toStarted"]),
                        # CPU milliseconds per execution, by process (the load client excluded).
                        "cpuMsPerExecution": {
                            k: round(v * 1000 / (batch * rounds), 1) for k, v in cpu[side].items() if v
                        },
                    }
                results[name] = shape
    return {"machine": machine(), "database": database, "rounds": rounds, "small": small, "shapes": results}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time used so far by the PostgreSQL server's processes that are alive now (its backends
    come and go with connections; the stack's pools keep theirs open during a round)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_cpu_seconds() -> float:
    """CPU time (user, nice, system) the whole machine has used so far."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def report(result: dict[str, Any]) -> None:
    for name, shape in result["shapes"].items():
        base = shape["same-queue"]["executionsPerSecond"]
        print(f"\n{name} ({result['database']}): executions/s, ratio to same-queue, hop p50 ms one at a time")
        for side, s in shape.items():
            if not isinstance(s, dict):
                continue
            print(
                f"  {side:<36} {s['executionsPerSecond']:>7} {s['executionsPerSecond'] / base:>6.2f} "
                f"{s['hopMsOneAtATime']['p50']:>8}  cpu ms/execution {s['cpuMsPerExecution']}"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--variants", help="comma-separated variant names to run beside ours (default: all)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args.address)
        return
    from bench.harness import write_result

    with tempfile.TemporaryDirectory(prefix="wfo-bench-breakdown-") as tmp:
        only = set(args.variants.split(",")) if args.variants else None
        result = await run(args.rounds, args.small, args.database, Path(tmp), only)
    report(result)
    suffix = "_small" if args.small else ""
    print(f"\nwritten: {write_result(f'breakdown_{args.database}{suffix}', result)}")


if __name__ == "__main__":
    asyncio.run(main())
