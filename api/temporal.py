"""Connecting to Temporal with the configured address, namespace, TLS and API key."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import TLSConfig

from api.codec import data_converter
from api.settings import Settings


def _tls(settings: Settings) -> bool | TLSConfig:
    files = (settings.temporal_tls_cert, settings.temporal_tls_key, settings.temporal_tls_ca)
    if not any(files):
        # An API key implies TLS (Temporal Cloud); TEMPORAL_TLS=true asks for it explicitly.
        return settings.temporal_tls or settings.temporal_api_key is not None
    cert, key, ca = (path.read_bytes() if path else None for path in files)
    return TLSConfig(client_cert=cert, client_private_key=key, server_root_ca_cert=ca)


async def connect(settings: Settings, *, lazy: bool = False, identity: str | None = None) -> Client:
    """A Temporal client. `lazy` defers the connection to the first call (the API starts without Temporal).

    Its data converter (payload encryption when keys are set) is the one of every client and worker
    of ours: workers built on this client inherit it."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    kwargs = {"identity": identity} if identity else {}
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=_tls(settings),
        api_key=api_key,
        lazy=lazy,
        data_converter=data_converter(settings.payload_codec_keys()),
        **kwargs,
    )
