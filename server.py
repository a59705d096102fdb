"""The API server: `wfo-server` (or `python -m server`)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from api.app import create_app
from api.settings import InsecureSettings, Settings


def load_settings() -> Settings:
    """Settings from the environment, or a clear message and exit status 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"configuration error: {where}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic narrates every plugin it loads at INFO; its migration lines are enough.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except InsecureSettings as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # X-Forwarded-For names the client only when a trusted proxy sent it (WFO_TRUSTED_PROXIES):
        # believed from anyone, it would let every client pick its address and slip the login
        # throttle. uvicorn's own default (FORWARDED_ALLOW_IPS, else loopback) is not used.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or [],
        server_header=False,
        # Only /graphql speaks WebSocket: a bigger frame is refused (1009) before it is buffered whole.
        ws_max_size=settings.graphql_max_body_bytes,
    )


if __name__ == "__main__":
    main()
