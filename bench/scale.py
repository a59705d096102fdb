"""Large DAGs: a 1,000-task and a 10,000-task definition run through the API and complete.

    python -m bench.scale [--sizes 1000 10000] [--small]

On a stack of its own (Temporal dev server, API on SQLite, one worker), each size is a layered
random DAG (bench.engine.layered; 50 tasks a layer, each task depending on 1-3 of the layer
before) of noop tasks. Reported per size: seconds from `POST /api/executions` to the execution
COMPLETED in the API, that every task is COMPLETED in the read model and in the progress report,
the Temporal history length of each run of the workflow (continue-as-new splits a long one), and
the peak RSS of the API and the worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.engine import layered
from bench.harness import Stack, local_stack, machine, write_result
from workflows.constants import workflow_id

#: A size that has not finished by then is reported as it stands (status RUNNING, correct false).
TIMEOUT_SECONDS = 1800
STATUS = "query($id: ID!) { workflowExecution(id: $id) { status } }"


async def history_lengths(stack: Stack, wid: str) -> list[int]:
    """Event count of each run of the workflow id, first run first (one per continue-as-new)."""
    runs = [w async for w in stack.client.list_workflows(f'WorkflowId = "{wid}"')]
    lengths = []
    for run in sorted(runs, key=lambda r: r.start_time):
        history = await stack.client.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
        lengths.append(len(history.events))
        assert history.events[-1].event_type in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        ), history.events[-1].event_type
    return lengths


async def run_size(stack: Stack, size: int) -> dict[str, Any]:
    tasks = layered(size, max(1, size // 50))
    async with stack.http() as http:
        response = await http.post(
            "/api/workflows", json={"name": f"scale-{size}", "tasks": tasks, "synchronizationPoints": []}
        )
        response.raise_for_status()
        definition_id = str(response.json()["id"])
        began = time.perf_counter()
        response = await http.post(
            "/api/executions", json={"workflowDefinitionId": definition_id, "initialContext": {}}
        )
        response.raise_for_status()
        execution_id = str(response.json()["id"])
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while True:
            # GraphQL asks for the status alone (REST would send every task execution each time).
            answer = await http.post("/graphql", json={"query": STATUS, "variables": {"id": execution_id}})
            status = answer.json()["data"]["workflowExecution"]["status"]
            if status != "RUNNING" or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        seconds = time.perf_counter() - began
        execution = (await http.get(f"/api/v2/executions/{execution_id}")).json()
        progress = (await http.get(f"/api/executions/{execution_id}/progress")).json()
        completed = (
            await http.get(
                f"/api/v2/executions/{execution_id}/tasks", params={"status": "COMPLETED", "limit": 1}
            )
        ).json()["total"]
    lengths = await history_lengths(
        stack, workflow_id(stack.settings.workflow_id_prefix, definition_id, execution_id)
    )
    result = {
        "tasks": size,
        "status": execution["status"],
        "seconds": round(seconds, 1),
        "activitiesPerSecond": round(size / seconds, 1),
        "completedTasks": completed,
        "progress": {"completedTasks": progress["completedTasks"], "totalTasks": progress["totalTasks"]},
        "historyLengths": lengths,
        "peakRssMiB": stack.rss(),
    }
    ok = (
        execution["status"] == "COMPLETED"
        and completed == size == progress["completedTasks"] == progress["totalTasks"]
    )
    result["correct"] = ok
    return result


async def run(sizes: list[int], workdir: Path) -> dict[str, Any]:
    results = []
    for size in sizes:
        # A fresh stack per size: peak RSS is the size's own.
        async with local_stack(workdir / f"stack-{size}") as stack:
            result = await run_size(stack, size)
        print(
            f"  {size:>6} tasks: {result['status']} in {result['seconds']} s ({result['activitiesPerSecond']} tasks/s), "
            f"history {result['historyLengths']}, peak RSS {result['peakRssMiB']}, correct={result['correct']}",
            flush=True,
        )
        results.append(result)
    return {"machine": machine(), "sizes": results}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--small", action="store_true", help="one 100-task DAG (CI keeps the benchmark working)"
    )
    args = parser.parse_args()
    sizes = [100] if args.small else args.sizes
    with tempfile.TemporaryDirectory(prefix="wfo-bench-scale-") as tmp:
        result = await run(sizes, Path(tmp))
    path = write_result("scale_small" if args.small else "scale", result)
    print(f"written: {path}")
    if not all(r["correct"] for r in result["sizes"]):
        raise SystemExit("a DAG did not complete correctly")


if __name__ == "__main__":
    asyncio.run(main())
