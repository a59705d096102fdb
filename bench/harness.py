"""What every benchmark needs: a whole local stack of its own (Temporal dev server, API server,
worker, each a real process on free loopback ports), percentiles, peak RSS, and result files.

The processes are the ones the test suite drives (tests/processes.py), started the way `make run`
starts them; nothing runs in the benchmark's own process but the client.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.codec import data_converter
from api.settings import Settings
from tests.processes import (
    Process,
    ProcessSet,
    free_port,
    fresh_postgres_database,
    wait_http_ready,
    wait_temporal_ready,
    wait_worker_polling,
)

#: The figures bench/README.md quotes, committed; written only by `python -m bench --publish`.
PUBLISHED = ROOT / "bench" / "results"
#: Where this process writes its results: WFO_BENCH_RESULTS (`python -m bench` sets it for the
#: benchmarks it runs), else a folder of its own under bench/runs/ (not tracked), so that a run
#: never rewrites the committed figures.
RESULTS = Path(
    os.environ.get("WFO_BENCH_RESULTS")
    or ROOT / "bench" / "runs" / time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
)
PASSWORD = "bench-admin-password"
POSTGRES_ADMIN = os.environ.get("WFO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2) if values else float("nan"),
    }


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def write_result(name: str, result: dict[str, Any]) -> Path:
    """`result` as RESULTS/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database of this run (dropped at the end); yields its URL."""
    with fresh_postgres_database(POSTGRES_ADMIN, "wfo_bench") as url:
        yield url


@dataclass
class Stack:
    """A running stack: Temporal at `address`, the API at `base_url` (logged in), workers."""

    settings: Settings
    processes: ProcessSet
    temporal: Process
    client: Client
    api: Process
    base_url: str
    headers: dict[str, str]
    workers: list[Process] = field(default_factory=list)

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=kwargs.pop("connections", 100))
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=120,
            trust_env=False,
            limits=limits,
            **kwargs,
        )

    def rss(self) -> dict[str, float]:
        return {
            "api": peak_rss_mib(self.api.pid),
            **{f"worker{i}": peak_rss_mib(w.pid) for i, w in enumerate(self.workers)},
        }


def compile_bytecode() -> None:
    """Byte-compile the repository's code, as installing a wheel does: the workflow sandbox imports
    each workflow's module afresh for every new run, and without bytecode (PYTHONDONTWRITEBYTECODE,
    an editable install) it compiles the source every time, on both sides of a comparison."""
    for folder in ("api", "workflows", "activities", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    for module in ("server.py", "worker.py"):
        compileall.compile_file(ROOT / module, quiet=1)


@contextlib.asynccontextmanager
async def local_stack(
    workdir: Path, database_url: str | None = None, *, workers: int = 1, **overrides: Any
) -> AsyncIterator[Stack]:
    """Temporal dev server + API + `workers` workers (all queues), on `database_url` (SQLite under
    `workdir` by default). Everything is stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    port, ui_port, api_port = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{port}"
    settings = Settings.model_validate(
        {
            "dev_mode": False,
            "jwt_secret": secrets.token_urlsafe(48),
            "database_url": database_url or f"sqlite+aiosqlite:///{workdir / 'wfo.db'}",
            "data_dir": workdir,
            "admin_username": "admin",
            "admin_password": PASSWORD,
            "temporal_address": address,
            "allow_private_networks": True,
            **overrides,
        }
    )
    with ProcessSet(workdir / "logs") as processes:
        temporal = processes.start_temporal(workdir / "temporal.db", port, ui_port)
        client = await wait_temporal_ready(
            temporal, address, data_converter=data_converter(settings.payload_codec_keys())
        )
        api = processes.start_api(settings, api_port)
        await wait_http_ready(api, f"http://127.0.0.1:{api_port}/readyz")
        started = []
        for i in range(workers):
            identity = f"bench-worker-{i}"
            worker = processes.start_worker(settings, identity=identity)
            await wait_worker_polling(client, settings.default_task_queue, identity, worker)
            await wait_worker_polling(client, settings.system_task_queue, identity, worker, workflows=True)
            started.append(worker)
        base_url = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=30) as http:
            response = await http.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
            response.raise_for_status()
            headers = {"Authorization": f"Bearer {response.json()['accessToken']}"}
        yield Stack(settings, processes, temporal, client, api, base_url, headers, started)
