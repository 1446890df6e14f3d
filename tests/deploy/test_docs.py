"""Checks that docs/deployment.md gives commands that match the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs/deployment.md"

REQUIRED_COMMANDS = [
    "docker compose up -d --build",
    "docker compose up -d --scale backend=4",
    "docker compose --profile loadtest up -d --build",
    "docker compose -f docker-compose.yaml -f docker-compose.gpu.yaml up -d --build",
    "kubectl apply -k deploy/k8s/overlays/cpu",
    "kubectl apply -k deploy/k8s/overlays/gpu",
]


def _text() -> str:
    return PAGE.read_text(encoding="utf-8")


def _shell_lines() -> list[str]:
    """Return the commands of the page's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", _text(), flags=re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def test_docs_say_images_were_not_built() -> None:
    assert re.search(r"\*\*not built\s+or run\*\*", _text()), (
        "docs/deployment.md must say plainly that nothing was built here"
    )


@pytest.mark.parametrize("command", REQUIRED_COMMANDS)
def test_docs_give_command(command: str) -> None:
    assert command in _shell_lines(), f"docs/deployment.md lacks `{command}`"


def test_docs_paths_exist() -> None:
    paths = set(
        re.findall(
            r"(?:deploy/[\w./-]+|[\w/]+/Dockerfile|docker-compose[\w.]*\.yaml)",
            _text(),
        )
    )
    missing = [p for p in sorted(paths) if not (REPO / p.rstrip(".")).exists()]

    assert paths, "no repository paths found in docs/deployment.md"
    assert missing == [], f"docs/deployment.md names missing paths {missing}"


def test_docs_locustfiles_exist() -> None:
    text = _text()
    names = re.findall(r"LOADTEST_FILE=(\w+\.py)", text)
    names += re.findall(r"/opt/locustfiles/(\w+\.py)", text)
    package = REPO / "loadtests/frontbench_loadtests"

    assert names, "docs/deployment.md shows no user file"
    for name in names:
        assert (package / name).is_file(), f"docs name {name}, not in {package}"


def test_docs_build_tags_match_compose(
    compose: dict[str, Any], compose_gpu: dict[str, Any]
) -> None:
    services = [*compose["services"].values(), *compose_gpu["services"].values()]
    images = {service.get("image") for service in services}
    builds = [
        shlex.split(line) for line in _shell_lines() if line.startswith("docker build")
    ]

    assert len(builds) == 6, f"expected 6 docker build commands, got {len(builds)}"
    for words in builds:
        dockerfile = words[words.index("-f") + 1]
        tag = words[words.index("-t") + 1]
        assert (REPO / dockerfile).is_file(), dockerfile
        assert tag in images, f"docs build {tag}, which no service runs"
