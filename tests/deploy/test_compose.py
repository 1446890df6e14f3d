"""Checks of docker-compose.yaml and its GPU override, without a Docker engine.

The files are validated against the Compose Specification's JSON schema (as
shipped in check-jsonschema) and loaded by Docker Compose v2 itself, whose
`config` command needs no engine. The remaining tests check what the schema
cannot: that only the backend scales, that start order follows readiness,
and that every build file and command exists in this repository.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
COMPOSE_GPU_FILE = REPO / "docker-compose.gpu.yaml"
NGINX_CONFIG = REPO / "deploy/nginx/backend-lb.conf"

FRONTENDS = ("streamlit", "dash", "gradio")
LOCUST_SERVICES = ("locust-master", "locust-worker")
LOAD_BALANCER_URL = "http://lb:8000"
# The first open-source nginx release with `server ... resolve` in upstreams.
NGINX_MIN_VERSION = (1, 27, 3)

RunCompose = Callable[..., subprocess.CompletedProcess[str]]


def _interpolate_defaults(value: str) -> str:
    """Replace `${NAME:-default}` with its default, as Compose does when unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    if isinstance(command, str):
        return command.split()
    return [_interpolate_defaults(str(word)) for word in command]


def _check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("path", [COMPOSE_FILE, COMPOSE_GPU_FILE], ids=lambda p: p.name)
def test_compose_file_matches_compose_spec_schema(path: Path) -> None:
    result = _check_jsonschema(path)

    assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"


def test_compose_schema_rejects_misspelled_key(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    # Shows that the schema check above can fail: a typo in a healthcheck key.
    broken = yaml.safe_load(yaml.safe_dump(compose))
    broken["services"]["backend"]["healthcheck"]["intervall"] = "5s"
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")

    result = _check_jsonschema(path)

    assert result.returncode != 0, "the compose-spec schema accepted 'intervall'"
    assert "intervall" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "files",
    [
        ["-f", "docker-compose.yaml"],
        ["-f", "docker-compose.yaml", "--profile", "loadtest"],
        ["-f", "docker-compose.yaml", "-f", "docker-compose.gpu.yaml"],
        [
            "-f",
            "docker-compose.yaml",
            "-f",
            "docker-compose.gpu.yaml",
            "--profile",
            "loadtest",
        ],
    ],
    ids=["cpu", "cpu-loadtest", "gpu", "gpu-loadtest"],
)
def test_compose_config_loads(run_compose: RunCompose, files: list[str]) -> None:
    result = run_compose(*files, "config", "--quiet")

    assert result.returncode == 0, f"docker compose {files} config:\n{result.stderr}"


def test_compose_config_scales_backend(run_compose: RunCompose) -> None:
    # `up --scale` fails on a service with a fixed container_name or host port;
    # `config` shows the resolved service as `up` would start it.
    result = run_compose("-f", "docker-compose.yaml", "config", "--format", "json")
    assert result.returncode == 0, result.stderr

    backend = json.loads(result.stdout)["services"]["backend"]

    assert "container_name" not in backend
    assert "ports" not in backend, backend.get("ports")


def test_compose_backend_is_scalable(
    compose: dict[str, Any],
) -> None:
    backend = compose["services"]["backend"]

    assert "container_name" not in backend, "a fixed container_name blocks --scale"
    assert "ports" not in backend, "a host port blocks --scale; use `expose`"


@pytest.mark.parametrize("name", ["lb", *FRONTENDS, "locust-master"])
def test_compose_service_runs_one_replica(compose: dict[str, Any], name: str) -> None:
    replicas = compose["services"][name].get("deploy", {}).get("replicas", 1)

    assert replicas == 1, (
        f"{name} has deploy.replicas {replicas}; only the backend scales"
    )


def test_compose_backend_healthcheck_is_readiness(compose: dict[str, Any]) -> None:
    test = " ".join(compose["services"]["backend"]["healthcheck"]["test"])

    assert "/readyz" in test, f"backend healthcheck {test!r} does not check /readyz"


def test_compose_lb_waits_for_ready_backend(compose: dict[str, Any]) -> None:
    depends = compose["services"]["lb"]["depends_on"]

    assert depends["backend"]["condition"] == "service_healthy"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_compose_frontend_uses_load_balancer(
    compose: dict[str, Any], frontend: str
) -> None:
    service = compose["services"][frontend]
    command = _command(service)
    depends = service["depends_on"]

    assert "--backend-url" in command, f"{frontend}: {command}"
    assert command[command.index("--backend-url") + 1] == LOAD_BALANCER_URL
    assert depends["lb"]["condition"] == "service_healthy", f"{frontend}: {depends}"
    assert "backend" not in depends, f"{frontend} bypasses the load balancer"


@pytest.mark.parametrize("name", LOCUST_SERVICES)
def test_compose_locust_needs_loadtest_profile(
    compose: dict[str, Any], name: str
) -> None:
    assert compose["services"][name].get("profiles") == ["loadtest"]


@pytest.mark.parametrize("name", ["backend", "lb", *FRONTENDS])
def test_compose_stack_service_has_no_profile(
    compose: dict[str, Any], name: str
) -> None:
    assert "profiles" not in compose["services"][name], (
        f"{name} would not start with a plain `docker compose up`"
    )


def test_compose_build_files_exist(compose: dict[str, Any]) -> None:
    builds = {
        name: service["build"]
        for name, service in compose["services"].items()
        if "build" in service
    }

    assert set(builds) >= {"backend", *FRONTENDS, *LOCUST_SERVICES}, sorted(builds)
    for name, build in builds.items():
        context = REPO / build["context"]
        dockerfile = context / build["dockerfile"]
        assert context.resolve() == REPO, f"{name}: context {context} is not the root"
        assert dockerfile.is_file(), f"{name}: no Dockerfile at {dockerfile}"
        if "target" in build:
            stages = re.findall(
                r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text()
            )
            assert build["target"] in stages, f"{name}: no stage {build['target']!r}"


@pytest.mark.parametrize("name", ["backend", *FRONTENDS, *LOCUST_SERVICES])
def test_compose_command_exists(
    compose: dict[str, Any],
    name: str,
    command_problems: Callable[[list[str]], list[str]],
) -> None:
    command = _command(compose["services"][name])

    assert command_problems(command) == [], f"{name}: {command}"


@pytest.mark.parametrize("name", LOCUST_SERVICES)
def test_compose_locustfile_exists(
    compose: dict[str, Any],
    name: str,
    locustfile_in_repository: Callable[[str], Path],
) -> None:
    environment = compose["services"][name]["environment"]
    locustfile = _interpolate_defaults(environment["LOCUST_LOCUSTFILE"])

    assert locustfile_in_repository(locustfile).is_file(), f"{name}: {locustfile}"


def test_compose_locust_worker_finds_master(compose: dict[str, Any]) -> None:
    command = _command(compose["services"]["locust-worker"])

    assert "--worker" in command
    assert command[command.index("--master-host") + 1] == "locust-master"


def test_compose_lb_mounts_nginx_config(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["lb"]["volumes"]
    sources = [volume.split(":")[0] for volume in volumes]

    assert "./" + str(NGINX_CONFIG.relative_to(REPO)) in sources, volumes


def test_compose_lb_nginx_supports_resolve(compose: dict[str, Any]) -> None:
    image = compose["services"]["lb"]["image"]
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(-[\w.-]+)?", image)

    assert match, f"lb image {image!r} has no nginx version tag"
    version = tuple(int(part or 0) for part in match.groups()[:3])
    assert version >= NGINX_MIN_VERSION, f"{image}: upstream resolve needs 1.27.3+"


def test_compose_gpu_reserves_nvidia_device(compose_gpu: dict[str, Any]) -> None:
    backend = compose_gpu["services"]["backend"]
    devices = backend["deploy"]["resources"]["reservations"]["devices"]

    assert len(devices) == 1, devices
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


def test_compose_gpu_runs_cuda_backend(compose_gpu: dict[str, Any]) -> None:
    backend = compose_gpu["services"]["backend"]

    assert backend["environment"]["FRONTBENCH_DEVICE"] == "cuda"
    assert "/whl/cu" in backend["build"]["args"]["TORCH_INDEX_URL"]
    assert backend["image"].endswith(":cuda"), backend["image"]


def test_compose_gpu_changes_only_backend(compose_gpu: dict[str, Any]) -> None:
    assert set(compose_gpu["services"]) == {"backend"}


def test_compose_locust_targets_load_balancer(compose: dict[str, Any]) -> None:
    environment = compose["services"]["locust-master"]["environment"]
    host = _interpolate_defaults(environment["LOCUST_HOST"])
    match = re.fullmatch(r"http://([\w-]+):(\d+)", host)

    assert match, f"LOCUST_HOST {host!r} is not http://SERVICE:PORT"
    service, port = match.groups()
    listen = re.findall(r"^\s*listen (\d+);", NGINX_CONFIG.read_text(), re.MULTILINE)
    assert service == "lb", f"LOCUST_HOST {host} bypasses the load balancer"
    assert listen == [port], f"lb listens on {listen}, LOCUST_HOST uses {port}"
