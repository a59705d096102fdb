"""The dev launcher (`make run`), end to end.

Real processes throughout: `python -m devstack` starts the Temporal dev server, the API and a
worker on free loopback ports with a temporary data dir; the tests talk to the API over HTTP and
look at the processes through /proc.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import devstack

REPO_ROOT = Path(__file__).resolve().parents[1]
BANNER_END = "Stop with Ctrl-C."
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes, through /proc ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: start time, in clock ticks


def _children(pid: int) -> set[int]:
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if files:  # kernels with CONFIG_PROC_CHILDREN
        return {int(p) for f in files for p in f.read_text().split()}
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, as pid -> start time (so a reused pid is not mistaken)."""
    result: dict[int, int] = {}
    pending = [pid]
    while pending:
        for child in _children(pending.pop()):
            started = _start_time(child)
            if started is not None and child not in result:
                result[child] = started
                pending.append(child)
    return result


def survivors(processes: dict[int, int]) -> list[int]:
    alive = []
    for pid, started in processes.items():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and int(fields[19]) == started:
            alive.append(pid)
    return alive


def wait_until_gone(processes: dict[int, int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := survivors(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


# --- the launcher under test -----------------------------------------------------------------


class Launcher:
    """`python -m devstack` in a subprocess; its stdout and stderr are collected line by line."""

    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WFO_", "TEMPORAL_"))}
        env |= {name: str(port) for name, port in ports.items()}
        env |= {
            "WFO_DATA_DIR": str(data_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        self.api_url = f"http://127.0.0.1:{ports['WFO_PORT']}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack"],
            cwd=data_dir.parent,  # not the repo: a developer's .env must not leak in
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.known_processes: dict[int, int] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_banner(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(BANNER_END in line for line in self.lines):
                self.known_processes |= descendants(self.proc.pid)
                return self.output
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"launcher exited with {self.proc.returncode} before its banner:\n{self.output}")
            time.sleep(0.1)
        pytest.fail(f"no banner after {timeout}s:\n{self.output}")

    def banner_value(self, pattern: str) -> str:
        match = re.search(pattern, self.output, re.MULTILINE)
        assert match, f"{pattern!r} not in the launcher's output:\n{self.output}"
        return match.group(1)

    @property
    def password(self) -> str:
        return self.banner_value(r"^\s+password: (\S+)")

    def child_pid(self, name: str) -> int:
        return int(self.banner_value(rf"started {name} \(pid (\d+)\)"))

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher still running after {timeout}s:\n{self.output}")
        self._reader.join(5)
        return returncode

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.known_processes |= descendants(self.proc.pid)
        self.proc.send_signal(sig)
        return self.wait()

    def kill(self) -> None:
        """Teardown: whatever a failed test left running goes, by pid."""
        if self.proc.poll() is None:
            self.known_processes |= descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
        for pid in survivors(self.known_processes):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()


LaunchFactory = Callable[..., Launcher]


@pytest.fixture
def ports() -> dict[str, int]:
    return {"WFO_PORT": free_port(), "TEMPORAL_PORT": free_port(), "TEMPORAL_UI_PORT": free_port()}


@pytest.fixture
def launch(tmp_path: Path, ports: dict[str, int]) -> Iterator[LaunchFactory]:
    started: list[Launcher] = []

    def start(data_dir: Path | None = None, **overrides: int) -> Launcher:
        launcher = Launcher(data_dir or tmp_path / "data", ports | overrides)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.kill()


def http_client(launcher: Launcher) -> httpx.Client:
    # trust_env=False: a proxy from the environment must not see loopback calls.
    return httpx.Client(base_url=launcher.api_url, timeout=10.0, trust_env=False)


def login(http: httpx.Client, password: str, username: str = "admin") -> str:
    response = http.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["accessToken"])


# --- scenarios -------------------------------------------------------------------------------


@pytest.mark.slow
class TestLifecycle:
    def test_sigterm_stops_everything_and_a_restart_keeps_state(
        self, launch: LaunchFactory, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        first = launch()
        first.wait_for_banner()
        password = first.password
        assert (data_dir / "admin-password").read_text().strip() == password
        for secret in ("admin-password", "jwt-secret"):
            assert stat.S_IMODE((data_dir / secret).stat().st_mode) == 0o600
        with http_client(first) as http:
            token = login(http, password)
            created = http.post(
                "/api/workflows",
                json={"name": "x", "tasks": [{"name": "a"}]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text
            definition_id = created.json()["id"]

        processes = descendants(first.proc.pid)
        assert len(processes) >= 3, f"expected Temporal, API and worker below the launcher: {processes}"
        assert first.stop(signal.SIGTERM) == 0, first.output
        assert survivors(processes) == [], first.output
        assert (data_dir / "temporal.db").exists()

        second = launch()
        second.wait_for_banner()
        assert second.password == password
        with http_client(second) as http:
            # Same JWT key: a token from the first run is still good.
            again = http.get(f"/api/workflows/{definition_id}", headers={"Authorization": f"Bearer {token}"})
            assert again.status_code == 200, again.text
            assert again.json()["name"] == "x"
            login(http, password)
        processes = descendants(second.proc.pid)
        assert second.stop(signal.SIGINT) == 0, second.output  # Ctrl-C
        assert survivors(processes) == [], second.output

    def test_the_banner_says_how_to_log_in(self, launch: LaunchFactory, ports: dict[str, int]) -> None:
        launcher = launch()
        output = launcher.wait_for_banner()
        api = f"http://127.0.0.1:{ports['WFO_PORT']}"
        for url in (f"{api}/docs", f"{api}/graphql", f"http://127.0.0.1:{ports['TEMPORAL_UI_PORT']}"):
            assert url in output
        assert "username: admin" in output
        curl = launcher.banner_value(r"^\s+(curl .*)$")
        assert f"{api}/api/auth/login" in curl and launcher.password in curl
        # The password is in the banner only: no log line carries it.
        log_lines = [line for line in launcher.lines if "[devstack]" in line]
        assert not [line for line in log_lines if launcher.password in line]
        with http_client(launcher) as http:
            assert http.get("/healthz").status_code == 200
        assert launcher.stop() == 0


@pytest.mark.slow
class TestSupervision:
    def test_api_exit_stops_the_stack_and_names_it(self, launch: LaunchFactory) -> None:
        launcher = launch()
        launcher.wait_for_banner()
        api_pid = launcher.child_pid("api")
        processes = descendants(launcher.proc.pid)
        assert api_pid in processes

        os.kill(api_pid, signal.SIGKILL)

        assert launcher.wait() != 0
        assert re.search(rf"api \(pid {api_pid}\) exited unexpectedly with signal SIGKILL", launcher.output)
        assert survivors(processes) == [], launcher.output

    def test_killed_launcher_takes_its_children_along(self, launch: LaunchFactory) -> None:
        launcher = launch()
        launcher.wait_for_banner()
        processes = descendants(launcher.proc.pid)

        launcher.proc.kill()  # no chance to clean up: PR_SET_PDEATHSIG must do it
        launcher.wait()

        assert wait_until_gone(processes) == []


@pytest.mark.slow
class TestPorts:
    @pytest.mark.parametrize("variable", ["WFO_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT"])
    def test_busy_port_is_a_clear_error(self, launch: LaunchFactory, tmp_path: Path, variable: str) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            launcher = launch(**{variable: port})
            returncode = launcher.wait(60)

        assert returncode != 0
        assert re.search(rf"port {port} .*{variable}.* already in use", launcher.output), launcher.output
        assert not (tmp_path / "data" / "temporal.db").exists()  # nothing was started

    def test_second_launcher_on_the_same_data_dir_is_refused(self, launch: LaunchFactory) -> None:
        first = launch()
        first.wait_for_banner()
        second = launch(WFO_PORT=free_port(), TEMPORAL_PORT=free_port(), TEMPORAL_UI_PORT=free_port())
        assert second.wait(60) != 0
        assert "another dev stack" in second.output
        assert first.proc.poll() is None
        assert first.stop() == 0


# --- pieces, without processes ---------------------------------------------------------------


class TestSecrets:
    def test_created_once_with_mode_0600_then_reused(self, tmp_path: Path) -> None:
        path = tmp_path / "admin-password"
        value, created = devstack.load_or_create_secret(path, devstack.generate_password)
        assert created and len(value) >= 20
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert devstack.load_or_create_secret(path, devstack.generate_password) == (value, False)

    def test_loose_permissions_are_tightened(self, tmp_path: Path) -> None:
        path = tmp_path / "jwt-secret"
        path.write_text("kept\n")
        path.chmod(0o644)
        assert devstack.load_or_create_secret(path, devstack.generate_jwt_secret) == ("kept", False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_an_empty_file_is_replaced(self, tmp_path: Path) -> None:
        path = tmp_path / "jwt-secret"
        path.write_text("")
        value, created = devstack.load_or_create_secret(path, devstack.generate_jwt_secret)
        assert created and len(value.encode()) >= 32
        assert path.read_text().strip() == value

    def test_generated_passwords_are_strong_and_shell_safe(self) -> None:
        passwords = {devstack.generate_password() for _ in range(50)}
        assert len(passwords) == 50
        for password in passwords:
            assert password.isalnum() and len(password) >= 20
            assert any(c.isupper() for c in password) and any(c.isdigit() for c in password)


class TestPortCheck:
    def test_free_ports_pass(self) -> None:
        devstack.check_ports_free([devstack.PortClaim("127.0.0.1", free_port(), "WFO_PORT", "the API")])

    def test_busy_port_names_port_and_variable(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            claim = devstack.PortClaim("127.0.0.1", port, "TEMPORAL_PORT", "Temporal gRPC")
            with pytest.raises(devstack.DevStackError, match=rf"port {port} .*TEMPORAL_PORT"):
                devstack.check_ports_free([claim])

    def test_same_port_twice_is_refused(self) -> None:
        port = free_port()
        claims = [
            devstack.PortClaim("127.0.0.1", port, "WFO_PORT", "the API"),
            devstack.PortClaim("127.0.0.1", port, "TEMPORAL_UI_PORT", "Temporal Web UI"),
        ]
        with pytest.raises(devstack.DevStackError, match="both ask for port"):
            devstack.check_ports_free(claims)
