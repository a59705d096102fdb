"""Liveness and readiness probes (no auth: up or down and the reconciler's counts, nothing of any execution)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.errors import ServiceUnavailable
from api.models.base import format_timestamp
from api.problems import problem_response, problem_responses
from api.services.reconciler import last_pass

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


async def _database(request: Request) -> None:
    async with request.app.state.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def _temporal(request: Request) -> None:
    client = request.app.state.temporal
    healthy = await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_SECONDS))
    if not healthy:
        raise RuntimeError("Temporal reports itself unhealthy")


async def _reconciler(request: Request) -> dict[str, Any] | None:
    """The reconciler's last pass: detail, never a reason to be unready (None when unknown)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with request.app.state.sessions() as session:
                latest = await last_pass(session)
    except Exception as exc:  # the database check reports the database; this is only detail  # noqa: BLE001
        log.warning("reading the reconciler's last pass failed: %s: %s", type(exc).__name__, exc)
        return None
    if latest is None:
        return {"backlog": 0, "unchecked": 0, "lastPassAt": None}
    return {
        "backlog": latest.backlog,
        "unchecked": latest.unchecked,
        "lastPassAt": format_timestamp(latest.finished_at),
    }


@router.get("/readyz", responses=problem_responses(ServiceUnavailable))
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and Temporal both answer (503 naming what is down); with the reconciler's backlog."""
    checks = {"database": _database, "temporal": _temporal}

    async def run(name: str) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS + 0.5):
                await checks[name](request)
            return "ok"
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log only  # noqa: BLE001
            log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            return "unavailable"

    *states, reconciler = await asyncio.gather(*(run(n) for n in checks), _reconciler(request))
    results = dict(zip(checks, states, strict=True))
    down = [name for name, state in results.items() if state != "ok"]
    if down:
        problem = ServiceUnavailable(
            f"Not ready: {' and '.join(down)} unavailable.", checks=results, reconciler=reconciler
        )
        return problem_response(problem, request.url.path)
    return JSONResponse({"status": "ready", "checks": results, "reconciler": reconciler})
