"""Liveness and readiness probes (no auth: they reveal nothing but up or down)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.errors import ServiceUnavailable
from api.problems import problem_response, problem_responses

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


@router.get("/readyz", responses=problem_responses(ServiceUnavailable))
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and Temporal both answer; 503 naming what is down otherwise."""
    checks = {"database": _database, "temporal": _temporal}

    async def run(name: str) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS + 0.5):
                await checks[name](request)
            return "ok"
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log only
            log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            return "unavailable"

    results = dict(zip(checks, await asyncio.gather(*(run(n) for n in checks)), strict=True))
    down = [name for name, state in results.items() if state != "ok"]
    if down:
        problem = ServiceUnavailable(f"Not ready: {' and '.join(down)} unavailable.", checks=results)
        return problem_response(problem, request.url.path)
    return JSONResponse({"status": "ready", "checks": results})
