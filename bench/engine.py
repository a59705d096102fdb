"""Engine overhead and scheduling latency: our API + interpreter workflow against hand-written
Temporal workflows running the same `noop` activity, side by side on one stack.

    python -m bench.engine [--rounds 5] [--small] [--databases sqlite postgresql]

Per database (SQLite and PostgreSQL by default, one after the other): one Temporal dev server,
the API on that database, one of our worker processes and one hand-written worker process
(bench/handwritten.py), all started here. Three DAG shapes: a chain of 10, a
fan-out 1 -> 20 -> 1 and a layered random DAG of 200 tasks (seeded). Per round and shape, a
batch of executions is started at once and timed until the last one completes:

* (a) ours: `POST /api/executions` for each, then each workflow's result from Temporal;
* (b) hand-written: `start_workflow` for each, then each result.

The sides alternate within each round (a, b, b, a, ...) so that drift in the machine's load
falls on both; the median over rounds is reported. executions/s = batch / seconds,
activities/s = batch x tasks / seconds. The ratio (ours / hand-written throughput) is the median
over rounds of each round's pair (hand-written seconds / our seconds, measured back to back), so
that a slow moment of the machine weighs on both sides of a pair; the ratio of the median
throughputs is kept beside it.

Scheduling latency comes from the histories: for each task with dependencies, the time from the
last dependency's ActivityTaskCompleted to the task's ActivityTaskStarted (and
ActivityTaskScheduled), p50/p95/p99 in ms; once over the batches above (queueing included)
and once over a few executions run one at a time (the hop itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.handwritten import DagInput, HandWrittenDag, Node
from bench.harness import Stack, local_stack, machine, postgres_database, summary, write_result
from tests.processes import settings_env
from workflows.constants import task_of_activity, workflow_id

HANDWRITTEN_QUEUE = "bench-handwritten"
#: Executions run one at a time per shape and side for the unqueued scheduling latency.
SOLO_RUNS = 3
Shape = list[dict[str, Any]]


def chain(n: int) -> Shape:
    return [{"id": f"t{i}", "name": f"t{i}", "dependencies": [f"t{i - 1}"] if i else []} for i in range(n)]


def fan_out(width: int) -> Shape:
    middle = [{"id": f"m{i}", "name": f"m{i}", "dependencies": ["start"]} for i in range(width)]
    return [
        {"id": "start", "name": "start"},
        *middle,
        {"id": "end", "name": "end", "dependencies": [m["id"] for m in middle]},
    ]


def layered(n: int, layers: int, seed: int = 7) -> Shape:
    """`n` tasks in `layers` layers; each task after the first layer depends on 1-3 of the layer before."""
    rng = random.Random(seed)
    per = n // layers
    tasks: Shape = []
    previous: list[str] = []
    for layer in range(layers):
        count = per if layer < layers - 1 else n - per * (layers - 1)
        current = [f"l{layer}n{i}" for i in range(count)]
        for tid in current:
            deps = rng.sample(previous, min(len(previous), rng.randint(1, 3))) if previous else []
            tasks.append({"id": tid, "name": tid, "dependencies": deps})
        previous = current
    return tasks


SHAPES: dict[str, tuple[Shape, int]] = {
    # shape: (tasks, executions per batch)
    "chain10": (chain(10), 20),
    "fanout20": (fan_out(20), 20),
    "layered200": (layered(200, 10), 4),
}


async def run_ours(stack: Stack, definition_id: str, batch: int) -> tuple[float, list[str]]:
    async with stack.http() as http:
        began = time.perf_counter()
        responses = await asyncio.gather(
            *(
                http.post(
                    "/api/executions", json={"workflowDefinitionId": definition_id, "initialContext": {}}
                )
                for _ in range(batch)
            )
        )
        ids = []
        for response in responses:
            response.raise_for_status()
            ids.append(
                workflow_id(stack.settings.workflow_id_prefix, definition_id, str(response.json()["id"]))
            )
        await asyncio.gather(*(stack.client.get_workflow_handle(w).result() for w in ids))
        return time.perf_counter() - began, ids


async def run_handwritten(stack: Stack, tasks: Shape, batch: int) -> tuple[float, list[str]]:
    dag = DagInput(nodes=[Node(t["id"], t.get("dependencies", [])) for t in tasks], queue=HANDWRITTEN_QUEUE)
    ids = [f"hand-{uuid.uuid4().hex[:12]}" for _ in range(batch)]
    began = time.perf_counter()
    handles = await asyncio.gather(
        *(
            stack.client.start_workflow(HandWrittenDag.run, dag, id=w, task_queue=HANDWRITTEN_QUEUE)
            for w in ids
        )
    )
    await asyncio.gather(*(h.result() for h in handles))
    return time.perf_counter() - began, ids


async def latencies(stack: Stack, workflow_ids: list[str], tasks: Shape) -> dict[str, list[float]]:
    """Per task with dependencies: ms from the last dependency's completion to its scheduling and start."""
    dependencies = {t["id"]: t.get("dependencies", []) for t in tasks}
    to_scheduled: list[float] = []
    to_started: list[float] = []
    for wid in workflow_ids:
        history = await stack.client.get_workflow_handle(wid).fetch_history()
        task_of_event: dict[int, str] = {}
        scheduled: dict[str, float] = {}
        started: dict[str, float] = {}
        completed: dict[str, float] = {}
        for event in history.events:
            at = event.event_time.ToMicroseconds() / 1000
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                activity_id = event.activity_task_scheduled_event_attributes.activity_id
                task = task_of_activity(activity_id) if "#" in activity_id else activity_id
                task_of_event[event.event_id] = task
                scheduled[task] = at
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[task_of_event[event.activity_task_started_event_attributes.scheduled_event_id]] = at
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed[
                    task_of_event[event.activity_task_completed_event_attributes.scheduled_event_id]
                ] = at
        for task, deps in dependencies.items():
            if deps and task in started:
                ready = max(completed[d] for d in deps)
                to_scheduled.append(scheduled[task] - ready)
                to_started.append(started[task] - ready)
    return {"toScheduled": to_scheduled, "toStarted": to_started}


async def run(rounds: int, small: bool, workdir: Path, databases: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for database in databases:
        print(f"== {database}", flush=True)
        with postgres_database() if database == "postgresql" else contextlib.nullcontext() as url:
            results[database] = await run_on(rounds, small, workdir / database, url)
    return {"machine": machine(), "rounds": rounds, "small": small, "databases": results}


async def run_on(rounds: int, small: bool, workdir: Path, database_url: str | None) -> dict[str, Any]:
    """Every shape, both sides, on one stack (SQLite under `workdir` unless a URL is given)."""
    shapes = {name: (tasks, 2 if small else batch) for name, (tasks, batch) in SHAPES.items()}
    async with local_stack(workdir / "stack", database_url) as stack:
        hand = stack.processes.add(
            "handwritten",
            [
                sys.executable,
                "-m",
                "bench.handwritten",
                "--address",
                stack.settings.temporal_address,
                "--queue",
                HANDWRITTEN_QUEUE,
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
        # Warm-up: one of each on both sides (worker caches, first-use imports, SQLite pages).
        for name, (tasks, _) in shapes.items():
            await run_ours(stack, definitions[name], 1)
            await run_handwritten(stack, tasks, 1)

        shape_results: dict[str, Any] = {}
        for name, (tasks, batch) in shapes.items():
            seconds: dict[str, list[float]] = {"ours": [], "handwritten": []}
            ids: dict[str, list[str]] = {"ours": [], "handwritten": []}
            for r in range(rounds):
                order = ["ours", "handwritten"] if r % 2 == 0 else ["handwritten", "ours"]
                for side in order:
                    took, wids = await (
                        run_ours(stack, definitions[name], batch)
                        if side == "ours"
                        else run_handwritten(stack, tasks, batch)
                    )
                    seconds[side].append(took)
                    ids[side].extend(wids)
                    print(f"  {name:<11} round {r + 1} {side:<11} {took:7.2f} s", flush=True)
            sides: dict[str, Any] = {}
            for side in ("ours", "handwritten"):
                median = statistics.median(seconds[side])
                lat = await latencies(stack, ids[side], tasks)
                sides[side] = {
                    "seconds": [round(s, 3) for s in seconds[side]],
                    "executionsPerSecond": round(batch / median, 2),
                    "activitiesPerSecond": round(batch * len(tasks) / median, 1),
                    "schedulingLatencyMs": {
                        "toStarted": summary(lat["toStarted"]),
                        "toScheduled": summary(lat["toScheduled"]),
                    },
                }
            # One execution at a time: the latency of a hop itself, without the queueing of a batch.
            for side in ("ours", "handwritten"):
                solo: list[str] = []
                for _ in range(SOLO_RUNS if not small else 1):
                    _, wids = await (
                        run_ours(stack, definitions[name], 1)
                        if side == "ours"
                        else run_handwritten(stack, tasks, 1)
                    )
                    solo.extend(wids)
                lat = await latencies(stack, solo, tasks)
                sides[side]["schedulingLatencyMs"]["toStartedOneAtATime"] = summary(lat["toStarted"])
            pairs = [hand / ours for ours, hand in zip(seconds["ours"], seconds["handwritten"], strict=True)]
            sides["ratio"] = round(statistics.median(pairs), 3)
            sides["ratioOfMedians"] = round(
                sides["ours"]["executionsPerSecond"] / sides["handwritten"]["executionsPerSecond"], 3
            )
            shape_results[name] = {"tasks": len(tasks), "batch": batch, **sides}
        hand.check_alive()
        rss = {**stack.rss()}
    return {"shapes": shape_results, "peakRssMiB": rss}


def report(result: dict[str, Any]) -> None:
    for database, on in result["databases"].items():
        print(f"\n{database}")
        report_shapes(on["shapes"])


def report_shapes(shapes: dict[str, Any]) -> None:
    print(
        f"{'shape':<11} {'ours ex/s':>10} {'hand ex/s':>10} {'ours act/s':>11} {'hand act/s':>11} {'ratio':>6}  sched p50/p95/p99 ms, one at a time (ours | hand)"
    )
    for name, s in shapes.items():
        o, h = s["ours"], s["handwritten"]
        lo, lh = (
            o["schedulingLatencyMs"]["toStartedOneAtATime"],
            h["schedulingLatencyMs"]["toStartedOneAtATime"],
        )
        print(
            f"{name:<11} {o['executionsPerSecond']:>10} {h['executionsPerSecond']:>10} {o['activitiesPerSecond']:>11} "
            f"{h['activitiesPerSecond']:>11} {s['ratio']:>6}  {lo['p50']}/{lo['p95']}/{lo['p99']} | {lh['p50']}/{lh['p95']}/{lh['p99']}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny batches (CI keeps the benchmark working)")
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wfo-bench-engine-") as tmp:
        result = await run(args.rounds, args.small, Path(tmp), args.databases)
    report(result)
    print(f"\nwritten: {write_result('engine_small' if args.small else 'engine', result)}")


if __name__ == "__main__":
    asyncio.run(main())
