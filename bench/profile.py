"""Where the time goes: py-spy samples the worker and the API processes while they run DAGs and
answer reads, and the hottest functions of our code are listed (inclusive share of samples).

    python -m bench.profile [--seconds 20] [--label after] [--small]

On a stack of its own (SQLite): for `--seconds`, batches of the layered 200-task DAG run through
the API while a client reads `GET /api/executions/{id}` and `/progress` of finished executions
in a loop. py-spy (sampling, 100 Hz, every thread, idle frames left out) records both
processes; the collapsed stacks are reduced to, per process, the share of samples each function
of this repository is on the stack for, and the share spent in SQLAlchemy, the Temporal SDK,
pydantic, the JSON encoder and the event loop. Writes bench/results/profile[-label].json (and
the raw stacks next to it, for flame graphs).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.engine import SHAPES
from bench.harness import RESULTS, Stack, local_stack, machine, write_result

#: Library buckets: a sample counts for a bucket if any frame's path starts with the marker.
LIBRARIES = {
    "sqlalchemy": "sqlalchemy/",
    "temporalio": "temporalio/",
    "pydantic": "pydantic",
    "strawberry": "strawberry/",
    "fastapi/starlette": "starlette/",
    "json": "json/",
    "aiosqlite": "aiosqlite/",
    "psycopg": "psycopg/",
    "asyncio": "asyncio/",
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: pip install '.[bench]'")
    return found


OUR_CODE = ("api/", "workflows/", "activities/", "server.py", "worker.py")
_LINE = re.compile(r"^(.*) (\d+)$")


def reduce(raw: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw format ('frame;frame;... count' per line, each frame 'function (path:line)',
    paths relative to the repository or site-packages) -> shares of our functions and libraries."""
    total = 0
    ours: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        stack, count = match.group(1), int(match.group(2))
        total += count
        paths = []
        seen: set[str] = set()
        for frame in stack.split(";"):
            name, _, where = frame.rpartition(" (")
            path = where.rsplit(":", 1)[0]
            paths.append(path)
            if path.startswith(OUR_CODE):
                key = f"{path}:{name}"
                if key not in seen:
                    seen.add(key)
                    ours[key] += count
        for bucket, marker in LIBRARIES.items():
            if any(p.startswith(marker) for p in paths):
                libraries[bucket] += count
    share = lambda n: round(100 * n / total, 1) if total else 0.0
    return {
        "samples": total,
        "ourFunctionsPercent": {k: share(v) for k, v in ours.most_common(top)},
        "librariesPercent": {k: share(v) for k, v in libraries.most_common()},
    }


async def load(stack: Stack, seconds: float, batch: int) -> dict[str, Any]:
    tasks, _ = SHAPES["layered200"]
    async with stack.http() as http:
        response = await http.post(
            "/api/workflows", json={"name": "profile", "tasks": tasks, "synchronizationPoints": []}
        )
        response.raise_for_status()
        definition_id = str(response.json()["id"])
        finished: list[str] = []
        deadline = time.monotonic() + seconds
        executions = reads = 0

        async def run_dags() -> None:
            nonlocal executions
            while time.monotonic() < deadline:
                started = await asyncio.gather(
                    *(
                        http.post("/api/executions", json={"workflowDefinitionId": definition_id})
                        for _ in range(batch)
                    )
                )
                ids = [str(r.json()["id"]) for r in started]
                pending = set(ids)
                while pending:
                    for execution_id in list(pending):
                        if (await http.get(f"/api/v2/executions/{execution_id}")).json()[
                            "status"
                        ] != "RUNNING":
                            pending.discard(execution_id)
                            finished.append(execution_id)
                            executions += 1
                    await asyncio.sleep(0.2)

        async def read() -> None:
            nonlocal reads
            while time.monotonic() < deadline:
                if not finished:
                    await asyncio.sleep(0.1)
                    continue
                execution_id = finished[reads % len(finished)]
                await http.get(f"/api/executions/{execution_id}")
                await http.get(f"/api/executions/{execution_id}/progress")
                reads += 2

        await asyncio.gather(run_dags(), read())
    return {"executions": executions, "activities": executions * len(tasks), "reads": reads}


async def run(seconds: float, label: str | None, workdir: Path, small: bool) -> dict[str, Any]:
    async with local_stack(workdir / "stack") as stack:
        out = RESULTS / "profile-stacks"
        out.mkdir(parents=True, exist_ok=True)
        suffix = f"-{label}" if label else ""
        raws = {"worker": out / f"worker{suffix}.txt", "api": out / f"api{suffix}.txt"}
        pids = {"worker": stack.workers[0].pid, "api": stack.api.pid}
        spies = [
            subprocess.Popen(  # noqa: ASYNC220
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(pids[name]),
                    "--rate",
                    "100",
                    "--duration",
                    str(int(seconds) + 2),
                    "--format",
                    "raw",
                    "--output",
                    str(raws[name]),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in raws
        ]
        await asyncio.sleep(1)  # py-spy attached
        done = await load(stack, seconds, 1 if small else 4)
        for spy in spies:
            await asyncio.to_thread(spy.wait, 60)
        processes = {name: reduce(raw) for name, raw in raws.items() if raw.exists()}
    return {"machine": machine(), "label": label, "seconds": seconds, "load": done, "processes": processes}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--label", help="names the result file (e.g. before / after a change)")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    seconds = 4 if args.small else args.seconds
    with tempfile.TemporaryDirectory(prefix="wfo-bench-profile-") as tmp:
        result = await run(seconds, args.label, Path(tmp), args.small)
    for name, profile in result["processes"].items():
        print(f"\n{name}: {profile['samples']} samples; libraries {profile['librariesPercent']}")
        for function, percent in profile["ourFunctionsPercent"].items():
            print(f"  {percent:5.1f}%  {function}")
    name = "profile_small" if args.small else f"profile{'-' + args.label if args.label else ''}"
    print(f"\nload: {result['load']}\nwritten: {write_result(name, result)}")


if __name__ == "__main__":
    asyncio.run(main())
