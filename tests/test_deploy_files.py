"""deploy/: the Dockerfile, docker-compose.yml and the Kubernetes manifests, checked statically.

No Docker engine or cluster is needed: the files are parsed and held against the code they
deploy (console scripts, packages, settings, queue names, search attributes).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from api.settings import Settings
from workflows.constants import DEFAULT_TASK_QUEUE, SEARCH_ATTRIBUTES, SYSTEM_TASK_QUEUE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = set(PYPROJECT["project"]["scripts"])
APP_IMAGE = "workflow-orchestration"


def settings_variables() -> set[str]:
    """Every environment variable name that Settings reads (upper case)."""
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice).upper() for choice in alias.choices}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"WFO_{name.upper()}")
    return names


def assert_known_variables(variables: list[str], where: str) -> None:
    known = settings_variables()
    ours = [v for v in variables if v.startswith(("WFO_", "TEMPORAL_"))]
    unknown = [v for v in ours if v.upper() not in known]
    assert not unknown, f"{where} sets variables no setting reads: {unknown}"


def worker_queues(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--queue"]


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


class TestDockerfile:
    def test_every_stage_is_python_311_slim(self) -> None:
        bases = [args.split()[0] for instr, args in dockerfile_instructions() if instr == "FROM"]
        assert bases and all(base == "python:3.11-slim" for base in bases)

    def test_runs_as_a_non_root_user(self) -> None:
        instructions = dockerfile_instructions()
        last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
        users = [args for instr, args in instructions[last_from:] if instr == "USER"]
        assert users, "the final stage sets no USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0")

    def test_copied_paths_exist_and_are_not_ignored(self) -> None:
        ignored = [
            line.strip()
            for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for instr, args in dockerfile_instructions():
            if instr != "COPY" or "--from=" in args:
                continue
            sources = [s for s in args.split() if not s.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source

    def test_copies_every_module_and_package_the_wheel_needs(self) -> None:
        copied = {
            source.rstrip("/")
            for instr, args in dockerfile_instructions()
            if instr == "COPY" and "--from=" not in args
            for source in [s for s in args.split() if not s.startswith("--")][:-1]
        }
        setuptools = PYPROJECT["tool"]["setuptools"]
        needed = {f"{module}.py" for module in setuptools["py-modules"]}
        needed |= {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
        # setup.py: the build step that brings the pages' browser assets (api/pages/vendor.py).
        needed |= {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"]}
        assert needed <= copied, f"not copied into the build: {sorted(needed - copied)}"

    def test_default_command_is_a_console_script(self) -> None:
        cmds = [args for instr, args in dockerfile_instructions() if instr == "CMD"]
        assert cmds
        command = yaml.safe_load(cmds[-1])  # exec form is a JSON (so YAML) list
        assert isinstance(command, list) and command[0] in CONSOLE_SCRIPTS


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


class TestCompose:
    def test_has_the_services(self, compose: dict[str, Any]) -> None:
        assert {"temporal", "postgres", "api", "worker-system", "worker-tasks"} <= set(compose["services"])

    def test_app_services_build_the_one_image(self, compose: dict[str, Any]) -> None:
        for name in ("api", "worker-system", "worker-tasks"):
            service = compose["services"][name]
            assert service["image"].startswith(f"{APP_IMAGE}:")
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()

    def test_commands_name_console_scripts(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        assert services["api"]["command"][0] == "wfo-server"
        for name in ("worker-system", "worker-tasks"):
            assert services[name]["command"][0] == "wfo-worker"
            assert services[name]["command"][0] in CONSOLE_SCRIPTS
        assert worker_queues(services["worker-system"]["command"]) == [SYSTEM_TASK_QUEUE]
        assert worker_queues(services["worker-tasks"]["command"]) == [DEFAULT_TASK_QUEUE]

    def test_temporal_dev_server_registers_the_search_attributes(self, compose: dict[str, Any]) -> None:
        command = compose["services"]["temporal"]["command"]
        assert command[:2] == ["server", "start-dev"]
        registered = {arg.split("=", 1)[1] for arg in command if arg.startswith("--search-attribute=")}
        assert registered == {f"{name}={kind}" for name, kind in SEARCH_ATTRIBUTES.items()}
        assert "--ip=0.0.0.0" in command  # reachable from the other containers

    def test_environment_names_real_settings(self, compose: dict[str, Any]) -> None:
        for name, service in compose["services"].items():
            assert_known_variables(list(environment(service)), f"compose service {name}")

    def test_task_workers_get_no_database_or_signing_secret(self, compose: dict[str, Any]) -> None:
        env = environment(compose["services"]["worker-tasks"])
        assert "WFO_DATABASE_URL" not in env and "WFO_JWT_SECRET" not in env

    def test_references_resolve(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        volumes = set(compose.get("volumes") or {})
        for name, service in services.items():
            for dependency in service.get("depends_on") or {}:
                assert dependency in services, f"{name} depends on unknown {dependency}"
            for volume in service.get("volumes") or []:
                source = volume.split(":", 1)[0]
                if not source.startswith((".", "/")):
                    assert source in volumes, f"{name} mounts undeclared volume {source}"


# --- Kubernetes ------------------------------------------------------------------------------


K8S = DEPLOY / "k8s"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env") or []}


class TestKubernetes:
    def test_every_manifest_is_well_formed(self) -> None:
        docs = manifests()
        assert docs
        for path, doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path

    def test_kustomization_lists_every_manifest(self) -> None:
        kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(kustomization["resources"]) == files

    def test_deployments_select_their_own_pods_and_run_console_scripts(self) -> None:
        deployments = by_kind("Deployment")
        assert {"wfo-api", "wfo-worker-system", "wfo-worker-tasks"} <= set(deployments)
        for name, deployment in deployments.items():
            spec = deployment["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items(), name
            pod = spec["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod.get("enableServiceLinks") is False, name  # no WFO_API_PORT=tcp://... variables
            for container in pod["containers"]:
                assert container["image"] == APP_IMAGE, name
                assert container["command"][0] in CONSOLE_SCRIPTS, name
                assert_known_variables(list(container_env(container)), f"deployment {name}")

    def test_api_probes_and_secret_refs(self) -> None:
        pod = by_kind("Deployment")["wfo-api"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["wfo-server"]
        port_names = {port["name"] for port in container["ports"]}
        readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        assert readiness["path"] == "/readyz" and readiness["port"] in port_names
        assert liveness["path"] == "/healthz" and liveness["port"] in port_names
        env = container_env(container)
        for variable in ("WFO_JWT_SECRET", "WFO_DATABASE_URL"):
            assert "secretKeyRef" in env[variable]["valueFrom"], variable
            assert "value" not in env[variable]

    def test_workers_serve_the_queues_and_only_system_workers_see_the_database(self) -> None:
        deployments = by_kind("Deployment")
        system = deployments["wfo-worker-system"]["spec"]["template"]["spec"]["containers"][0]
        tasks = deployments["wfo-worker-tasks"]["spec"]["template"]["spec"]["containers"][0]
        assert worker_queues(system["command"]) == [SYSTEM_TASK_QUEUE]
        assert worker_queues(tasks["command"]) == [DEFAULT_TASK_QUEUE]
        assert "secretKeyRef" in container_env(system)["WFO_DATABASE_URL"]["valueFrom"]
        assert not {"WFO_DATABASE_URL", "WFO_JWT_SECRET"} & set(container_env(tasks))

    def test_service_reaches_the_api_pods(self) -> None:
        service = by_kind("Service")["wfo-api"]
        api = by_kind("Deployment")["wfo-api"]["spec"]["template"]
        assert service["spec"]["selector"].items() <= api["metadata"]["labels"].items()
        port_names = {port["name"] for c in api["spec"]["containers"] for port in c["ports"]}
        assert all(port["targetPort"] in port_names for port in service["spec"]["ports"])

    def test_config_map_names_real_settings(self) -> None:
        for name, config in by_kind("ConfigMap").items():
            assert_known_variables(list(config["data"]), f"config map {name}")
