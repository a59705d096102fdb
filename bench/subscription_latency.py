"""Subscription latency: from a state change written to the read model to a client receiving it.

    python -m bench.subscription_latency [--events 200] [--subscribers 1 100] [--databases sqlite postgresql]

For each database and subscriber count: an API server runs as its own process; N WebSocket
clients (graphql-transport-ws) subscribe to one execution's `executionEvents`; this process
writes events into the read model exactly as the worker's publish activity does
(`apply_batch`, one event per transaction, 20 ms apart) and notes the time of each commit.
Latency = receive time - commit time, per event and subscriber (one clock: one machine).
Writes JSON to bench/results/subscription_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets

from api.db import create_engine, migrate, session_factory
from api.models.definitions import DefinitionRow, DefinitionVersionRow
from api.models.executions import ExecutionRow
from api.services.readmodel import apply_batch
from api.settings import Settings
from bench.harness import PASSWORD, RESULTS, ROOT, percentile, postgres_database
from tests.processes import free_port
from workflows.inputs import Event, EventBatch

SUBSCRIPTION = """subscription($id: ID!) { executionEvents(workflowExecutionId: $id) { sequence type } }"""


async def seed(settings: Settings) -> int:
    """A definition and one running execution, written straight into the database."""
    migrate(settings)
    engine = create_engine(settings)
    now = datetime.now(UTC)
    document = {"tasks": [], "synchronizationPoints": []}
    async with session_factory(engine)() as session:
        definition = DefinitionRow(
            name="bench", version="1.0.0", revision=1, document=document, created_at=now, updated_at=now
        )
        session.add(definition)
        await session.flush()
        session.add(
            DefinitionVersionRow(
                definition_id=definition.id,
                revision=1,
                version="1.0.0",
                name="bench",
                document=document,
                created_at=now,
            )
        )
        execution = ExecutionRow(
            definition_id=definition.id,
            definition_version="1.0.0",
            status="RUNNING",
            start_time=now,
            workflow_id="bench",
            context={},
            context_created_at=now,
            context_updated_at=now,
            updated_at=now,
        )
        session.add(execution)
        await session.commit()
        execution_id = execution.id
    await engine.dispose()
    assert execution_id is not None
    return execution_id


async def subscriber(
    url: str, token: str, execution_id: int, received: dict[int, float], ready: asyncio.Event
) -> None:
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], max_queue=None) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIPTION, "variables": {"id": str(execution_id)}},
                }
            )
        )
        ready.set()
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "next":
                received[message["payload"]["data"]["executionEvents"]["sequence"]] = time.perf_counter()
            elif message["type"] in ("complete", "error"):
                return


async def run_case(database: str, subscribers: int, events: int, workdir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as databases:
        if database == "sqlite":
            url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}"
        else:
            url = databases.enter_context(postgres_database())
        return await _measure(url, database, subscribers, events, workdir)


async def _measure(url: str, database: str, subscribers: int, events: int, workdir: Path) -> dict[str, Any]:
    settings = Settings(
        dev_mode=True, database_url=url, data_dir=workdir, admin_password=PASSWORD, jwt_secret="b" * 48
    )
    execution_id = await seed(settings)
    port = free_port()
    env = {
        **os.environ,
        "WFO_DEV_MODE": "true",
        "WFO_DATABASE_URL": url,
        "WFO_DATA_DIR": str(workdir),
        "WFO_ADMIN_PASSWORD": PASSWORD,
        "WFO_JWT_SECRET": "b" * 48,
        "WFO_PORT": str(port),
        "WFO_LOG_LEVEL": "WARNING",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    server = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            token = (
                await http.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
            ).json()["accessToken"]
        received: list[dict[int, float]] = [{} for _ in range(subscribers)]
        readies = [asyncio.Event() for _ in range(subscribers)]
        clients = [
            asyncio.create_task(
                subscriber(f"ws://127.0.0.1:{port}/graphql", token, execution_id, received[i], readies[i])
            )
            for i in range(subscribers)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        await asyncio.sleep(0.5)

        engine = create_engine(settings)
        sessions = session_factory(engine)
        written: dict[int, float] = {}
        for seq in range(1, events + 2):
            kind = "workflow.execution.completed" if seq == events + 1 else "progress.updated"
            data = (
                {"status": "COMPLETED", "endTime": datetime.now(UTC).isoformat()}
                if seq == events + 1
                else {"completedTasks": seq, "totalTasks": events}
            )
            batch = EventBatch(
                str(execution_id),
                "bench",
                "run",
                [Event(seq=seq, type=kind, at=datetime.now(UTC), data=data)],
            )
            async with sessions() as session:
                await apply_batch(session, batch)
            written[seq] = time.perf_counter()
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
        await engine.dispose()
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
    latencies = [(r[seq] - written[seq]) * 1000 for r in received for seq in written if seq in r]
    missing = sum(1 for r in received for seq in written if seq not in r)
    return {
        "database": database,
        "subscribers": subscribers,
        "events": events,
        "samples": len(latencies),
        "missing": missing,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100])
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "subscription_latency.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for database in args.databases:
            for count in args.subscribers:
                result = await run_case(database, count, args.events, Path(tmp))
                print(json.dumps(result))
                results.append(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"measured_at": datetime.now(UTC).isoformat(), "results": results}, indent=2) + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
