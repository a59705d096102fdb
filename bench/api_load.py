"""API under load: requests/s and p50/p99 latency of the execution endpoints, SQLite vs PostgreSQL.

    python -m bench.api_load [--databases sqlite postgresql] [--concurrency 16] [--seconds 10] [--small]

For each database a whole local stack runs as real processes (bench/harness.py: Temporal dev
server, `python -m server`, one worker). One definition with a single noop task is created and
20 executions of it are started and run to COMPLETED, so the GETs read realistic rows. Then, one
endpoint at a time, a *separate* client process (`--load-child`, asyncio + httpx, one pooled
connection per worker) runs C concurrent request loops for 1 s of warm-up plus S measured seconds:

    GET  /api/executions/{id}            ids round-robin over the completed executions
    GET  /api/executions/{id}/progress   same ids
    POST /api/executions                 every request starts a new execution: this also loads
                                         Temporal and the worker, which run on the same machine

Latency = perf_counter around one request, for requests *started* inside the measured window.
rps = 2xx responses / S; errors = non-2xx responses plus transport failures. Client, API, worker
and Temporal share the machine's cores, so the numbers are of the whole box, not of the API alone.
After the POST run the bench also notes how long the worker takes to finish the executions it
started (`drainSeconds`). Writes bench/results/api_load.json; logs stay under the printed workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import ROOT, Stack, local_stack, machine, postgres_database, summary, write_result

ENDPOINTS = ("GET /api/executions/{id}", "GET /api/executions/{id}/progress", "POST /api/executions")
SEED_EXECUTIONS = 20
WARMUP = 1.0
ROW = "{:10} {:36} {:>8} {:>8} {:>8} {:>8} {:>7}"


@dataclass(frozen=True)
class Sizes:
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    concurrency: int = 16
    seconds: float = 10.0


SMALL = Sizes(concurrency=4, seconds=1.0)


# --- the load process ------------------------------------------------------------------------


async def load(spec: dict[str, Any]) -> dict[str, Any]:
    """C request loops against one endpoint; the summary of the measured window (see the docstring)."""
    concurrency, seconds, endpoint = spec["concurrency"], spec["seconds"], spec["endpoint"]
    method, template = endpoint.split(" ", 1)
    ids = itertools.cycle(spec["ids"])
    body = {"workflowDefinitionId": spec["definitionId"], "initialContext": {}}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=spec["baseUrl"], headers=spec["headers"], timeout=60, trust_env=False, limits=limits
    ) as http:
        start, cpu_start = time.perf_counter(), time.process_time()
        measured_from, until = start + WARMUP, start + WARMUP + seconds

        async def worker() -> None:
            while (began := time.perf_counter()) < until:
                status, detail = "", ""
                try:
                    if method == "POST":
                        response = await http.post(template, json=body)
                    else:
                        response = await http.get(template.format(id=next(ids)))
                    status, detail = str(response.status_code), response.text[:300]
                except httpx.HTTPError as exc:
                    status, detail = type(exc).__name__, repr(exc)[:300]
                if began < measured_from:
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                statuses[status] += 1
                if not status.startswith("2") and len(samples) < 5:
                    samples.append(f"{status}: {detail}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu_start  # the client's own CPU: it shares the machine with the stack
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    return {
        "rps": round(ok / seconds, 1),
        "latencyMs": summary(latencies),
        "errors": sum(statuses.values()) - ok,
        "statuses": dict(statuses),
        "errorSamples": samples,
        "clientCpuSeconds": round(cpu, 2),
        "concurrency": concurrency,
        "seconds": seconds,
    }


async def run_load(
    stack: Stack, endpoint: str, ids: list[str], definition_id: str, sizes: Sizes
) -> dict[str, Any]:
    """Run `load` in a child process (the spec on stdin, the result on stdout)."""
    spec = {
        "baseUrl": stack.base_url, "headers": stack.headers, "endpoint": endpoint, "ids": ids,
        "definitionId": definition_id, "concurrency": sizes.concurrency, "seconds": sizes.seconds,
    }  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api_load", "--load-child", cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate(json.dumps(spec).encode())
    if child.returncode != 0:
        raise RuntimeError(f"load process for {endpoint} exited with {child.returncode}")
    return json.loads(out)


# --- the parent ------------------------------------------------------------------------------


async def wait_finished(http: httpx.AsyncClient, ids: list[str], timeout: float) -> None:
    """Until every execution in `ids` is COMPLETED (raises if one ends otherwise, or on `timeout`)."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} seed executions still running after {timeout}s")
        responses = await asyncio.gather(*(http.get(f"/api/v2/executions/{i}") for i in pending))
        statuses = {i: r.json()["status"] for i, r in zip(pending, responses, strict=True)}
        if bad := {i: s for i, s in statuses.items() if s not in ("RUNNING", "COMPLETED")}:
            raise RuntimeError(f"seed executions did not complete: {bad}")
        pending = {i for i, s in statuses.items() if s == "RUNNING"}
        await asyncio.sleep(0.2 if pending else 0)


async def running_count(http: httpx.AsyncClient) -> int:
    response = await http.get("/api/v2/executions", params={"status": "RUNNING", "limit": 1})
    response.raise_for_status()
    return int(response.json()["total"])


async def drain(http: httpx.AsyncClient, timeout: float = 300) -> dict[str, Any]:
    """How long the worker takes to finish what the POST run started (and how many it left)."""
    start = time.monotonic()
    running = await running_count(http)
    backlog = running
    while running and time.monotonic() - start < timeout:
        await asyncio.sleep(0.5)
        running = await running_count(http)
    seconds = round(time.monotonic() - start, 1)
    return {"backlogAtEnd": backlog, "drainSeconds": seconds, "stillRunning": running}


async def run_database(database: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Seed one stack on `database`, then load each endpoint in turn (POST last: the executions it
    starts keep the worker busy and must not disturb the GETs)."""
    with postgres_database() if database == "postgresql" else contextlib.nullcontext() as url:
        async with local_stack(workdir / database, url) as stack, stack.http(connections=50) as http:
            document = {"name": "load", "tasks": [{"id": "a", "name": "a"}], "synchronizationPoints": []}
            response = await http.post("/api/workflows", json=document)
            assert response.status_code == 201, response.text
            definition_id = response.json()["id"]
            ids = []
            start = {"workflowDefinitionId": definition_id, "initialContext": {}}
            for _ in range(SEED_EXECUTIONS):
                response = await http.post("/api/executions", json=start)
                assert response.status_code == 201, response.text
                ids.append(str(response.json()["id"]))
            await wait_finished(http, ids, timeout=120)

            endpoints: dict[str, Any] = {}
            for endpoint in ENDPOINTS:
                endpoints[endpoint] = await run_load(stack, endpoint, ids, definition_id, sizes)
                endpoints[endpoint]["loadAverageAfter"] = os.getloadavg()[0]
                print(f"  {database:10} {endpoint:36} {endpoints[endpoint]['rps']:>7} req/s", flush=True)
            endpoints[ENDPOINTS[-1]] |= await drain(http)
            logs = str(workdir / database / "logs")
            return {"endpoints": endpoints, "peakRssMiB": stack.rss(), "logs": logs}


async def run(sizes: Sizes = Sizes()) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wfo-api-load-"))
    print(f"workdir (logs kept): {workdir}", flush=True)
    databases = {database: await run_database(database, sizes, workdir) for database in sizes.databases}
    result = {
        "sizes": asdict(sizes),
        "warmupSeconds": WARMUP,
        "seedExecutions": SEED_EXECUTIONS,
        "note": "POST /api/executions starts a real execution per request: Temporal and the worker run too",
        "databases": databases,
        "machine": machine(),
    }
    path = write_result("api_load_small" if sizes == SMALL else "api_load", result)
    print_table(result)
    print(f"wrote {path}")
    return result


def print_table(result: dict[str, Any]) -> None:
    print("\n" + ROW.format("database", "endpoint", "req/s", "p50 ms", "p99 ms", "max ms", "errors"))
    for database, data in result["databases"].items():
        for endpoint in ENDPOINTS:
            r = data["endpoints"][endpoint]
            lat = r["latencyMs"]
            print(ROW.format(database, endpoint, r["rps"], lat["p50"], lat["p99"], lat["max"], r["errors"]))
        print(f"{'':10} peak RSS MiB: {data['peakRssMiB']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--databases", nargs="+", default=list(Sizes.databases), choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--concurrency", type=int, default=Sizes.concurrency)
    parser.add_argument("--seconds", type=float, default=Sizes.seconds)
    parser.add_argument("--small", action="store_true", help="CI smoke size: 1 s per endpoint, concurrency 4")
    parser.add_argument("--load-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        print(json.dumps(asyncio.run(load(json.load(sys.stdin)))))
        return
    base = SMALL if args.small else Sizes(concurrency=args.concurrency, seconds=args.seconds)
    asyncio.run(run(Sizes(tuple(args.databases), base.concurrency, base.seconds)))


if __name__ == "__main__":
    main()
