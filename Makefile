# The two commands of a fresh clone (only Python 3.11+ needed):
#   make run     the local stack: Temporal dev server, API, one worker (Ctrl-C stops it)
#   make test    static checks, then the tests; extra pytest arguments: make test PYTEST_ARGS='-k devstack -x'
#
# VENV=path uses another virtual environment (created when missing); PYTHON=python3.12 picks
# the interpreter that creates it. Packages are reinstalled only when pyproject.toml changes.

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most tests wait on servers, so two keep both cores busy.
TEST_WORKERS ?= 2
BENCH_ARGS ?=

VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip --disable-pip-version-check

.DEFAULT_GOAL := help
.PHONY: help install run test lint format bench clean

help:
	@echo "make run      start Temporal dev server + API + worker, print URLs and the admin login"
	@echo "make test     the static checks (make lint), then the tests (PYTEST_ARGS='...' passes arguments to pytest)"
	@echo "make lint     ruff check, ruff format --check, mypy; make format fixes what it can"
	@echo "make bench    run the benchmarks (bench/README.md); BENCH_ARGS='--only engine' runs some"
	@echo "make install  create $(VENV) and install the project with the dev extra"
	@echo "make clean    remove $(VENV) and build/test caches (the data dir .data is kept)"

$(VENV_PYTHON):
	@test -n "$(PYTHON)" || { echo "no python3.11 or python3 on PATH: install Python 3.11+" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "$(PYTHON) is older than Python 3.11: make ... PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# One stamp per extra, inside the venv: a new venv or a changed pyproject.toml reinstalls.
$(VENV)/.installed-dev: pyproject.toml | $(VENV_PYTHON)
	@echo "installing the project and the dev extra into $(VENV) ..."
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV_PYTHON)
	@echo "installing the project and the test extra into $(VENV) ..."
	$(PIP) install --quiet -e '.[test]'
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(VENV_PYTHON)
	@echo "installing the project and the bench extra into $(VENV) ..."
	$(PIP) install --quiet -e '.[bench]'
	@touch $@

install: $(VENV)/.installed-dev

run: $(VENV)/.installed-dev
	exec $(VENV_PYTHON) -m devstack

test: $(VENV)/.installed-test lint
	$(VENV_PYTHON) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Static checks, first in make test: lint, formatting, and types of workflows/, activities/ and
# api/services/ (configured in pyproject.toml). `make format` rewrites what the check would refuse.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed-bench
	$(VENV_PYTHON) -m bench $(BENCH_ARGS)

clean:
	@if [ -f "$(VENV)/pyvenv.cfg" ]; then echo "removing $(VENV)"; rm -rf "$(VENV)"; fi
	rm -rf build .pytest_cache .ruff_cache .mypy_cache *.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
