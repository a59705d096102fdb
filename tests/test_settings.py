"""Settings: production starts refuse unsafe configuration; dev mode starts anyway.

The server tests run `python -m server` as a real process with a clean environment, the way an
operator would, and talk to it over real HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from api.app import create_app
from api.settings import MIN_JWT_SECRET_BYTES, InsecureSettings, Settings
from tests.conftest import free_port

STRONG_SECRET = "s" * MIN_JWT_SECRET_BYTES
START_TIMEOUT = 60.0


def clean_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """Only what a process needs to run, plus the given variables: nothing WFO_ leaks in from outside."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "WFO_DATA_DIR": str(tmp_path / "data"),
        # Nothing listens here; the API connects to Temporal lazily.
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    env.update(variables)
    return env


def run_server(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the server expecting it to refuse to start (a server that starts would hit the timeout)."""
    return subprocess.run(  # noqa: PLW1510 - the caller reads the exit code
        [sys.executable, "-m", "server"],
        env=env,
        cwd=tmp_path,  # no .env file here
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


@pytest.fixture
def running_servers() -> Iterator[list[subprocess.Popen[str]]]:
    """Servers a test starts; each is ended by its own PID afterwards, even if the test failed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def start_server(tmp_path: Path, env: dict[str, str], started: list[subprocess.Popen[str]]) -> str:
    """Start `python -m server`; return its base URL once /healthz answers."""
    port = free_port()
    env = {**env, "WFO_HOST": "127.0.0.1", "WFO_PORT": str(port)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started.append(process)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{(tmp_path / 'server.log').read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return base_url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(
        f"server did not answer /healthz in {START_TIMEOUT}s:\n{(tmp_path / 'server.log').read_text()}"
    )


def stop_server(process: subprocess.Popen[str], tmp_path: Path) -> None:
    """SIGTERM to this PID only; the server shuts down gracefully (uvicorn then re-raises the signal)."""
    process.terminate()
    assert process.wait(timeout=15) == -signal.SIGTERM
    log = (tmp_path / "server.log").read_text()
    assert "Application shutdown complete" in log, log
    assert "Traceback" not in log, log


def assert_refused(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    assert all(line.startswith("configuration error:") for line in lines), result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


class TestProductionStart:
    @pytest.mark.slow
    def test_missing_jwt_secret_is_refused(self, tmp_path: Path) -> None:
        result = run_server(tmp_path, clean_env(tmp_path))
        assert_refused(result, "WFO_JWT_SECRET", f"{MIN_JWT_SECRET_BYTES} bytes", "secrets.token_urlsafe")
        assert not (tmp_path / "data" / "wfo.db").exists()

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "secret", ["", "changeme", "x" * (MIN_JWT_SECRET_BYTES - 1)], ids=["empty", "short", "one-byte-short"]
    )
    def test_weak_jwt_secret_is_refused(self, tmp_path: Path, secret: str) -> None:
        result = run_server(tmp_path, clean_env(tmp_path, WFO_JWT_SECRET=secret))
        assert_refused(result, "WFO_JWT_SECRET")
        assert secret == "" or secret not in result.stderr  # the secret itself is never printed

    @pytest.mark.slow
    def test_dev_mode_false_is_still_production(self, tmp_path: Path) -> None:
        result = run_server(tmp_path, clean_env(tmp_path, WFO_DEV_MODE="false"))
        assert_refused(result, "WFO_JWT_SECRET")

    @pytest.mark.slow
    def test_wildcard_cors_origin_is_refused(self, tmp_path: Path) -> None:
        result = run_server(
            tmp_path, clean_env(tmp_path, WFO_JWT_SECRET=STRONG_SECRET, WFO_CORS_ORIGINS='["*"]')
        )
        assert_refused(result, "cors_origins", "WFO_CORS_ORIGINS")

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("variables", "name"),
        [
            ({"WFO_ADMIN_PASSWORD": "hunter2"}, "WFO_ADMIN_PASSWORD"),
            (
                {"WFO_ADMIN_USERNAME": "first admin", "WFO_ADMIN_PASSWORD": "hunter2-but-long"},
                "WFO_ADMIN_USERNAME",
            ),
        ],
        ids=["short-password", "bad-username"],
    )
    def test_invalid_first_admin_is_a_configuration_error(
        self, tmp_path: Path, variables: dict[str, str], name: str
    ) -> None:
        result = run_server(tmp_path, clean_env(tmp_path, WFO_JWT_SECRET=STRONG_SECRET, **variables))
        assert "hunter2" not in result.stdout + result.stderr, "the admin password was printed"
        assert_refused(result, name)

    @pytest.mark.slow
    def test_starts_with_a_strong_secret(
        self, tmp_path: Path, running_servers: list[subprocess.Popen[str]]
    ) -> None:
        env = clean_env(tmp_path, WFO_JWT_SECRET=STRONG_SECRET, WFO_ADMIN_PASSWORD="first-admin-password")
        base_url = start_server(tmp_path, env, running_servers)
        assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
        # The first admin came from the environment and can log in over real HTTP.
        response = httpx.post(
            f"{base_url}/api/auth/login", json={"username": "admin", "password": "first-admin-password"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["tokenType"] == "Bearer"
        stop_server(running_servers[0], tmp_path)


class TestDevModeStart:
    @pytest.mark.slow
    def test_starts_without_a_secret(
        self, tmp_path: Path, running_servers: list[subprocess.Popen[str]]
    ) -> None:
        base_url = start_server(tmp_path, clean_env(tmp_path, WFO_DEV_MODE="true"), running_servers)
        response = httpx.get(f"{base_url}/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        # The database went where the settings said.
        assert (tmp_path / "data" / "wfo.db").exists()
        stop_server(running_servers[0], tmp_path)

    @pytest.mark.slow
    def test_starts_with_a_weak_secret(
        self, tmp_path: Path, running_servers: list[subprocess.Popen[str]]
    ) -> None:
        env = clean_env(tmp_path, WFO_DEV_MODE="true", WFO_JWT_SECRET="dev")
        base_url = start_server(tmp_path, env, running_servers)
        assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
        stop_server(running_servers[0], tmp_path)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The process environment without any WFO_/TEMPORAL_ variable, in a directory without .env."""
    for name in list(os.environ):
        if name.startswith(("WFO_", "TEMPORAL_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WFO_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


class TestSettings:
    def test_wildcard_cors_origin_is_refused(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_JWT_SECRET", STRONG_SECRET)
        environment.setenv("WFO_CORS_ORIGINS", '["*"]')
        with pytest.raises(ValidationError) as caught:
            Settings()
        errors = caught.value.errors()
        assert [e["loc"] for e in errors] == [("cors_origins",)]
        assert "WFO_CORS_ORIGINS" in errors[0]["msg"] and "'*'" in errors[0]["msg"]

    def test_wildcard_among_other_origins_is_refused(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_DEV_MODE", "true")
        environment.setenv("WFO_CORS_ORIGINS", '["https://app.example.com", "*"]')
        with pytest.raises(ValidationError, match="WFO_CORS_ORIGINS"):
            Settings()

    def test_explicit_cors_origins_are_accepted(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_JWT_SECRET", STRONG_SECRET)
        environment.setenv("WFO_CORS_ORIGINS", '["https://app.example.com", "http://localhost:5173"]')
        assert Settings().cors_origins == ["https://app.example.com", "http://localhost:5173"]


class TestJwtSecretCheck:
    """Only the API needs the token key: Settings() loads without it (workers use it too), and
    the API (create_app, hence server.py) refuses a missing or weak one outside dev mode."""

    def test_settings_load_without_a_secret(self, environment: pytest.MonkeyPatch) -> None:
        settings = Settings()
        assert settings.dev_mode is False
        assert settings.jwt_secret is None

    def test_missing_secret_is_refused_by_the_api(self, environment: pytest.MonkeyPatch) -> None:
        settings = Settings()
        with pytest.raises(InsecureSettings, match="WFO_JWT_SECRET must be set to at least 32 bytes"):
            settings.check_api_secrets()
        with pytest.raises(InsecureSettings, match="WFO_JWT_SECRET"):
            create_app(settings)

    @pytest.mark.parametrize(
        "secret", ["", "k" * (MIN_JWT_SECRET_BYTES - 1)], ids=["empty", "one-byte-short"]
    )
    def test_weak_secret_is_refused_by_the_api(self, environment: pytest.MonkeyPatch, secret: str) -> None:
        environment.setenv("WFO_JWT_SECRET", secret)
        settings = Settings()
        with pytest.raises(InsecureSettings, match="WFO_JWT_SECRET") as caught:
            create_app(settings)
        assert secret == "" or secret not in str(caught.value)

    def test_secret_of_exactly_32_bytes_is_accepted(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_JWT_SECRET", "k" * MIN_JWT_SECRET_BYTES)
        settings = Settings()
        settings.check_api_secrets()
        assert create_app(settings).state.settings is settings
        assert settings.jwt_key() == b"k" * MIN_JWT_SECRET_BYTES

    def test_secret_length_counts_bytes(self, environment: pytest.MonkeyPatch) -> None:
        # 16 two-byte characters are 32 bytes; 15 are 30.
        environment.setenv("WFO_JWT_SECRET", "\u00e9" * 16)
        settings = Settings()
        settings.check_api_secrets()
        assert settings.jwt_key() == ("\u00e9" * 16).encode()
        environment.setenv("WFO_JWT_SECRET", "\u00e9" * 15)
        with pytest.raises(InsecureSettings, match="WFO_JWT_SECRET"):
            Settings().check_api_secrets()

    def test_dev_mode_accepts_a_missing_or_weak_secret(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_DEV_MODE", "true")
        Settings().check_api_secrets()
        environment.setenv("WFO_JWT_SECRET", "dev")
        Settings().check_api_secrets()
        assert create_app(Settings()).state.settings.dev_mode is True

    def test_secret_is_not_shown(self, environment: pytest.MonkeyPatch) -> None:
        environment.setenv("WFO_JWT_SECRET", STRONG_SECRET)
        settings = Settings()
        assert STRONG_SECRET not in repr(settings)
        assert STRONG_SECRET not in str(settings.model_dump())

    def test_dev_mode_needs_no_secret_and_keeps_a_key_under_the_data_dir(
        self, environment: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        environment.setenv("WFO_DEV_MODE", "true")
        settings = Settings()
        assert settings.jwt_secret is None
        key = settings.jwt_key()
        assert len(key) >= MIN_JWT_SECRET_BYTES
        stored = tmp_path / "data" / "jwt-secret"
        assert stored.read_bytes().strip() == key
        assert stored.stat().st_mode & 0o077 == 0  # readable by its owner only
        assert Settings().jwt_key() == key
