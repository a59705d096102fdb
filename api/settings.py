"""Settings: the only reader of the environment.

Every process (API, worker, dev launcher, tests) builds one `Settings` object.
Variables are prefixed `WFO_`, except the Temporal connection ones (`TEMPORAL_*`),
which keep the names Temporal's own tools use.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows.constants import DEFAULT_TASK_QUEUE, SYSTEM_TASK_QUEUE

MIN_JWT_SECRET_BYTES = 32
MIN_ADMIN_PASSWORD_CHARS = 12
USERNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}"


class InsecureSettings(ValueError):
    """A production start with settings that would make the service unsafe."""


def _temporal(name: str) -> AliasChoices:
    # TEMPORAL_ADDRESS, but also WFO_TEMPORAL_ADDRESS for people who prefix everything.
    return AliasChoices(f"TEMPORAL_{name}", f"WFO_TEMPORAL_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WFO_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # --- process ---------------------------------------------------------------------
    dev_mode: bool = Field(False, description="Relaxes production checks; set by the dev launcher.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path(".data")
    log_level: str = "INFO"

    # --- database --------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file wfo.db under the data dir."
    )
    database_echo: bool = False

    # --- auth ------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    jwt_ttl_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    jwt_issuer: str = "workflow-orchestration"
    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    login_max_failures_per_user_and_address: int = Field(
        5, ge=1, description="Failed logins per username from one client address per window."
    )
    login_max_failures_per_user: int = Field(
        100,
        ge=1,
        description="Failed logins per username from all addresses together per window (the ceiling).",
    )
    login_max_failures_per_address: int = Field(
        20, ge=1, description="Failed logins per client address per window."
    )
    login_failure_window_seconds: int = Field(900, ge=1)
    password_hash_threads: int = Field(2, ge=1, le=64, description="Threads that hash and check passwords.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies whose X-Forwarded-For (and -Proto) is believed.",
    )

    # --- API limits ------------------------------------------------------------------
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    login_max_body_bytes: int = Field(16 * 1024, ge=1024, description="Largest body of POST /api/auth/login.")
    large_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Bodies over this are read only for a valid bearer token, a few at a time.",
    )
    large_body_concurrency: int = Field(2, ge=1, description="Requests with large bodies handled at once.")
    large_body_wait_seconds: float = Field(
        5, ge=0, description="How long a large body waits for its turn before 503."
    )
    api_docs: bool | None = Field(
        None, description="Serve Swagger UI, ReDoc and GraphiQL; default: in dev mode only."
    )
    max_tasks: int = Field(10_000, ge=1)
    page_max_limit: int = Field(100, ge=1)
    execution_list_max_task_rows: int = Field(
        2000,
        ge=1,
        description="Task executions one page of GET /api/executions embeds; past it the page ends early (Link rel=next).",
    )
    execution_list_max_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="Estimated bytes of one page of GET /api/executions (contexts, errors, task rows); past it the page ends early.",
    )
    cors_origins: list[str] = Field(default_factory=list)

    # --- GraphQL -----------------------------------------------------------------------
    graphql_introspection: bool | None = Field(
        None, description="Allow schema introspection (GraphiQL needs it); default: in dev mode only."
    )
    graphql_max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest body of /graphql without a valid bearer token, and largest WebSocket message.",
    )
    graphql_max_tokens: int = Field(2000, ge=100, description="Tokens a GraphQL document may hold.")
    graphql_max_depth: int = Field(10, ge=2, description="Deepest selection a query may nest.")
    graphql_max_aliases: int = Field(30, ge=1, description="Aliases per document.")
    graphql_max_cost: int = Field(
        2_000_000,
        ge=10,
        # Every field of one definition of WFO_MAX_TASKS tasks is about 1.2 million.
        description="Fields a query may ask for, lists counted per item (a list without a limit as WFO_MAX_TASKS items).",
    )
    graphql_max_batch: int = Field(10, ge=1, description="Operations per batched request.")
    graphql_ws_max_operations: int = Field(
        50,
        ge=1,
        description="Operations (subscriptions included) running at once on one WebSocket connection.",
    )
    graphql_ws_max_connections_per_user: int = Field(
        10, ge=1, description="WebSocket connections one user may hold open on one API process."
    )
    graphql_ws_recheck_seconds: float = Field(
        30,
        gt=0,
        description="How often an idle WebSocket connection checks its user is still active and unchanged.",
    )

    # --- engine ------------------------------------------------------------------------
    system_task_queue: str = Field(
        SYSTEM_TASK_QUEUE, description="Queue of the interpreter and system activities."
    )
    default_task_queue: str = Field(DEFAULT_TASK_QUEUE, description="Queue of tasks that name none.")
    workflow_id_prefix: str = Field(
        "wfo",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$",
        description="Temporal workflow ids: <prefix>-<definition>-<execution>.",
    )
    task_default_timeout_seconds: float = Field(
        3600, gt=0, description="Start-to-close of a task without timeout."
    )
    task_default_max_attempts: int = Field(3, ge=1, description="Attempts of a task without retryPolicy.")
    task_heartbeat_timeout_seconds: float = Field(
        30, gt=0, description="A silent task attempt counts as lost after this."
    )
    max_result_bytes: int = Field(256 * 1024, ge=1024, description="Largest task result (JSON).")
    max_context_bytes: int = Field(1024 * 1024, ge=1024, description="Largest execution context (JSON).")
    max_rendered_input_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest task input once its ${...} references are expanded (workers).",
    )
    secrets_dir: Path | None = Field(
        None,
        description="Directory of files named after the secrets ${secret:NAME} refers to (workers; else WFO_SECRET_<NAME>).",
    )
    inspect_after_seconds: float = Field(
        10, gt=0, description="A task scheduled this long gets checked for workers."
    )
    continue_after_events: int = Field(
        10_000,
        ge=500,
        le=40_000,
        description="History length at which an execution's workflow continues as a new run (Temporal's limit is 51,200).",
    )
    continue_after_bytes: int = Field(
        24 * 1024 * 1024,
        ge=1024 * 1024,
        le=40 * 1024 * 1024,
        description="History size (bytes) at which an execution's workflow continues as a new run (Temporal's limit is 50 MB).",
    )
    event_poll_seconds: float = Field(
        0.1, gt=0, le=10, description="How often watchers look for new events (PostgreSQL also notifies)."
    )
    cancel_wait_seconds: float = Field(
        45, gt=0, description="How long a cancel request waits for the run to close."
    )
    start_timeout_seconds: float = Field(
        10,
        gt=0,
        le=120,
        description="How long starting a run waits for Temporal's answer; past it the start is in doubt (503).",
    )

    # --- reconciliation ------------------------------------------------------------------
    reconcile_interval_seconds: float = Field(
        60, ge=1, description="How often the reconciler's schedule runs a pass."
    )
    reconcile_grace_seconds: float = Field(
        30,
        ge=0,
        description="A run closed (or missing in Temporal) this long while the read model shows it running gets repaired.",
    )

    # --- webhooks and outbound HTTP ------------------------------------------------------
    allow_private_networks: bool = Field(
        False,
        description="Let webhooks and http tasks reach private, loopback and link-local addresses (tests, local dev).",
    )
    webhook_task_queue: str = Field(
        "wfo-webhooks", description="Queue of webhook deliveries (system workers serve it)."
    )
    webhook_retry_period_seconds: float = Field(
        24 * 3600, gt=0, description="How long a delivery is retried."
    )
    webhook_initial_retry_seconds: float = Field(
        5, gt=0, description="First retry delay; it doubles each time."
    )
    webhook_max_retry_interval_seconds: float = Field(
        3600, gt=0, description="Longest delay between attempts."
    )
    webhook_timeout_seconds: float = Field(10, gt=0, le=120, description="One attempt's time limit.")
    webhook_disable_after_seconds: float = Field(
        5 * 24 * 3600, gt=0, description="A webhook failing this long without one success is deactivated."
    )
    webhook_test_per_minute: int = Field(10, ge=1, description="Webhook test calls per user per minute.")
    webhook_dispatch_seconds: float = Field(
        0.25, gt=0, description="How often workers look for deliveries to start."
    )

    # --- Temporal --------------------------------------------------------------------
    temporal_address: str = Field("localhost:7233", validation_alias=_temporal("ADDRESS"))
    temporal_namespace: str = Field("default", validation_alias=_temporal("NAMESPACE"))
    temporal_api_key: SecretStr | None = Field(None, validation_alias=_temporal("API_KEY"))
    temporal_tls: bool = Field(False, validation_alias=_temporal("TLS"))
    temporal_tls_cert: Path | None = Field(None, validation_alias=_temporal("TLS_CERT"))
    temporal_tls_key: Path | None = Field(None, validation_alias=_temporal("TLS_KEY"))
    temporal_tls_ca: Path | None = Field(None, validation_alias=_temporal("TLS_CA"))
    temporal_ui_url: str | None = Field(None, validation_alias=_temporal("UI_URL"))
    payload_keys: SecretStr | None = Field(
        None,
        description="Encrypt every Temporal payload (AES-256-GCM): comma-separated id:base64key, the first encrypts, "
        "all decrypt. Off when neither this nor WFO_PAYLOAD_KEY_FILE is set.",
    )
    payload_key_file: Path | None = Field(
        None, description="A file of id:base64key lines, instead of WFO_PAYLOAD_KEYS."
    )

    @model_validator(mode="after")
    def _grace_outlasts_a_start(self) -> Settings:
        # A start still in flight must never be taken for one that never reached Temporal: the
        # run would then publish into an execution the reconciler already closed.
        if self.reconcile_grace_seconds < self.start_timeout_seconds:
            raise ValueError("WFO_RECONCILE_GRACE_SECONDS must be at least WFO_START_TIMEOUT_SECONDS")
        return self

    @model_validator(mode="after")
    def _payload_keys_usable(self) -> Settings:
        # Refused at start, not at the first payload: a worker that cannot decrypt stalls every run.
        if self.payload_keys is not None and self.payload_key_file is not None:
            raise ValueError("set WFO_PAYLOAD_KEYS or WFO_PAYLOAD_KEY_FILE, not both")
        self.payload_codec_keys()
        return self

    @model_validator(mode="after")
    def _consoles_in_dev_mode(self) -> Settings:
        # Swagger UI, GraphiQL and introspection help a developer and an attacker alike: a
        # production start serves them only when asked to.
        if self.api_docs is None:
            self.api_docs = self.dev_mode
        if self.graphql_introspection is None:
            self.graphql_introspection = self.dev_mode
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_named_exactly(cls, proxies: list[str]) -> list[str]:
        # Trusting every address would let any client name its own address and slip the login throttle.
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"WFO_TRUSTED_PROXIES must list IP addresses or networks (not {proxy!r}; '*' is refused)"
                ) from None
        return [proxy.strip() for proxy in proxies]

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, origins: list[str]) -> list[str]:
        # CORS "*" together with credentials would echo any origin back: refuse it.
        if "*" in origins:
            raise ValueError("WFO_CORS_ORIGINS must list origins explicitly, not '*'")
        return origins

    def check_api_secrets(self) -> None:
        """The API refuses to start with an unusable first admin, or outside dev mode without a
        strong token key. Only the API uses these: workers never see a token or a user.
        """
        if (
            self.admin_password is not None
            and len(self.admin_password.get_secret_value()) < MIN_ADMIN_PASSWORD_CHARS
        ):
            raise InsecureSettings(
                f"WFO_ADMIN_PASSWORD must be at least {MIN_ADMIN_PASSWORD_CHARS} characters"
            )
        if not re.fullmatch(USERNAME_PATTERN, self.admin_username):
            raise InsecureSettings(
                "WFO_ADMIN_USERNAME must be 1-64 letters, digits or _ . @ + - (starting with a letter or digit)"
            )
        if self.dev_mode:
            self.jwt_key()  # the dev key file: refused now if unusable, not at the first login
            return
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise InsecureSettings(
                f"WFO_JWT_SECRET must be set to at least {MIN_JWT_SECRET_BYTES} bytes of random data "
                "outside dev mode (generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )

    def payload_codec_keys(self) -> list[tuple[str, bytes]] | None:
        """The payload encryption keys, the encrypting one first; None: payloads are not encrypted."""
        if self.payload_keys is None and self.payload_key_file is None:
            return None
        from api.codec import parse_keys, read_key_file

        if self.payload_keys is not None:
            return parse_keys(self.payload_keys.get_secret_value())
        assert self.payload_key_file is not None
        return read_key_file(self.payload_key_file)

    @property
    def sqlalchemy_url(self) -> str:
        """The configured database URL, defaulting to SQLite under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'wfo.db').resolve()}"

    def jwt_key(self) -> bytes:
        """The HMAC key for tokens. In dev mode without a secret, a per-data-dir key is used."""
        if self.jwt_secret is not None and self.jwt_secret.get_secret_value():
            return self.jwt_secret.get_secret_value().encode()
        return _dev_jwt_key(self.data_dir.resolve())


@lru_cache
def _dev_jwt_key(data_dir: Path) -> bytes:
    """A random key kept under the data dir, so dev tokens survive a restart. An empty file (a
    start that died between creating and writing it) gets a new key; a short one, written by
    hand, is refused: an HMAC key of a few bytes lets anyone forge tokens."""
    import os
    import secrets

    path = data_dir / "jwt-secret"
    if path.exists():
        key = path.read_bytes().strip()
        if len(key) >= MIN_JWT_SECRET_BYTES:
            return key
        if key:
            raise InsecureSettings(
                f"the dev token key file {path} holds {len(key)} bytes, fewer than {MIN_JWT_SECRET_BYTES}: "
                "delete it (a new random key is generated) or set WFO_JWT_SECRET"
            )
        logging.getLogger(__name__).warning(
            "the dev token key file %s was empty: a new random key replaces it", path
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48).encode()
    # Written whole under another name, then renamed: a start that dies midway leaves no empty key.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.touch(mode=0o600)
    partial.write_bytes(key)
    partial.replace(path)
    return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
