"""Checks of every Dockerfile and of the build context, without building.

The images install the components with `pip install '.[EXTRA]'`, the extras
that the tests install too, so these checks tie each image to the extra,
base image, user, health route and command it must have.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

BASE_IMAGE = "python:3.11-slim"
PROJECT = "frontbench"
# Extras whose dependency closure contains torch. Images other than the
# backend's must install neither.
TORCH_EXTRAS = ("backend", "all")


@dataclass(frozen=True)
class Component:
    """One image: its Dockerfile, the extra it installs and its health route."""

    name: str
    dockerfile: Path
    extra: str
    port: int
    health_path: str


COMPONENTS = (
    Component("backend", REPO / "backend/Dockerfile", "backend", 8000, "/healthz"),
    Component(
        "streamlit",
        REPO / "frontends/streamlit/Dockerfile",
        "streamlit",
        8501,
        "/_stcore/health",
    ),
    Component("dash", REPO / "frontends/dash/Dockerfile", "dash", 8050, "/"),
    Component("gradio", REPO / "frontends/gradio/Dockerfile", "gradio", 7860, "/"),
    Component("locust", REPO / "loadtests/Dockerfile", "loadtests", 8089, "/"),
)
NO_TORCH = [component for component in COMPONENTS if component.name != "backend"]


def _ids(component: Component) -> str:
    return component.name


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, with the stage it belongs to."""

    stage: int
    name: str
    value: str


def parse(path: Path) -> tuple[DockerfileParser, list[Instruction]]:
    """Parse a Dockerfile and number its stages from 0."""
    # The parser reads its file object again on every property access.
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))

    instructions: list[Instruction] = []
    stage = -1
    for item in parser.structure:
        name = item["instruction"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            stage += 1
        instructions.append(Instruction(stage, name, item["value"]))
    return parser, instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """Return the instructions of the last stage, the one the image runs."""
    last = max(instruction.stage for instruction in instructions)
    return [instruction for instruction in instructions if instruction.stage == last]


def pip_installs(instructions: list[Instruction]) -> list[list[str]]:
    """Return the arguments of every `pip install` in RUN instructions."""
    installs: list[list[str]] = []
    for instruction in instructions:
        if instruction.name != "RUN":
            continue
        words = shlex.split(instruction.value)
        for index in range(len(words) - 1):
            if words[index : index + 2] == ["pip", "install"]:
                installs.append(words[index + 2 :])
    return installs


def installed_extras(instructions: list[Instruction]) -> set[str]:
    """Return the extras of the project that the image installs from `.`."""
    extras: set[str] = set()
    for arguments in pip_installs(instructions):
        for argument in arguments:
            match = re.fullmatch(r"\.\[([\w,\s-]+)\]", argument)
            if match:
                extras.update(name.strip() for name in match.group(1).split(","))
    return extras


def requirement_names(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """Return the distribution names an extra pulls in, following self-references."""
    names: set[str] = set()
    pending = [extra]
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for line in extras[current]:
            requirement = Requirement(line)
            if requirement.name == PROJECT:
                pending.extend(requirement.extras)
            else:
                names.add(requirement.name.lower())
    return names


def exec_form(value: str) -> list[str]:
    """Return the argv of a CMD or HEALTHCHECK CMD, in exec or shell form."""
    text = value.strip()
    if text.startswith("["):
        argv: list[str] = json.loads(text)
        return argv
    words = shlex.split(text)
    return words[1:] if words[:1] == ["exec"] else words


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    """Return the argv of the final stage's HEALTHCHECK."""
    checks = [i for i in final_stage(instructions) if i.name == "HEALTHCHECK"]
    assert len(checks) == 1, (
        f"expected one HEALTHCHECK in the final stage, got {checks}"
    )
    _, _, command = checks[0].value.partition("CMD")
    return exec_form(command)


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_bases_are_slim_python(component: Component) -> None:
    parser, _ = parse(component.dockerfile)
    stage_names = {
        match.group(1)
        for match in re.finditer(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", parser.content)
    }
    external = [image for image in parser.parent_images if image not in stage_names]

    assert external, f"{component.dockerfile} has no FROM image"
    for image in external:
        assert image == BASE_IMAGE, (
            f"{component.dockerfile}: FROM {image}, not {BASE_IMAGE}"
        )


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_is_multi_stage(component: Component) -> None:
    _, instructions = parse(component.dockerfile)
    installs_in_final = pip_installs(final_stage(instructions))

    assert max(i.stage for i in instructions) >= 1, f"{component.dockerfile}: one stage"
    assert not installs_in_final, (
        f"{component.dockerfile}: the final stage runs pip install "
        f"{installs_in_final}; install in the build stage and copy the venv"
    )


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_final_user_is_not_root(component: Component) -> None:
    _, instructions = parse(component.dockerfile)
    users = [
        i.value.split(":")[0] for i in final_stage(instructions) if i.name == "USER"
    ]

    assert users, f"{component.dockerfile}: no USER in the final stage"
    assert users[-1] not in ("root", "0"), f"{component.dockerfile}: USER {users[-1]}"


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_healthcheck_uses_health_route(component: Component) -> None:
    _, instructions = parse(component.dockerfile)
    command = " ".join(healthcheck_command(instructions))
    expected = f"http://127.0.0.1:{component.port}{component.health_path}'"
    exposed = [i.value for i in final_stage(instructions) if i.name == "EXPOSE"]

    assert expected in command, f"{component.dockerfile}: HEALTHCHECK {command!r}"
    assert str(component.port) in " ".join(exposed).split(), (
        f"{component.dockerfile}: port {component.port} not in EXPOSE {exposed}"
    )


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_installs_component_extra(
    component: Component, optional_dependencies: dict[str, list[str]]
) -> None:
    _, instructions = parse(component.dockerfile)
    extras = installed_extras(instructions)

    assert component.extra in optional_dependencies, (
        f"pyproject.toml has no extra {component.extra!r}"
    )
    assert extras == {component.extra}, (
        f"{component.dockerfile} installs extras {sorted(extras)}, "
        f"expected exactly [{component.extra!r}]"
    )


@pytest.mark.parametrize("component", NO_TORCH, ids=_ids)
def test_dockerfile_installs_no_torch(
    component: Component, optional_dependencies: dict[str, list[str]]
) -> None:
    _, instructions = parse(component.dockerfile)
    extras = installed_extras(instructions)
    direct = [word for args in pip_installs(instructions) for word in args]
    pulled = set().union(*(requirement_names(e, optional_dependencies) for e in extras))

    for extra in TORCH_EXTRAS:
        assert extra not in extras, (
            f"{component.dockerfile} installs the {extra!r} extra"
        )
    assert "torch" not in pulled, f"{component.dockerfile}: {sorted(extras)} pull torch"
    assert not any(word.startswith("torch") for word in direct), (
        f"{component.dockerfile} installs torch directly: {direct}"
    )


def test_backend_dockerfile_torch_index_is_build_arg() -> None:
    _, instructions = parse(REPO / "backend/Dockerfile")
    args = [i.value for i in instructions if i.name == "ARG"]
    installs = pip_installs(instructions)

    assert any(a.startswith("TORCH_INDEX_URL=") for a in args), f"ARGs: {args}"
    assert any(
        "--extra-index-url" in words and "${TORCH_INDEX_URL}" in words
        for words in installs
    ), f"no pip install uses --extra-index-url ${{TORCH_INDEX_URL}}: {installs}"


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.name == "ENV":
            for pair in shlex.split(instruction.value):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_backend_dockerfile_trains_model_at_build() -> None:
    _, instructions = parse(REPO / "backend/Dockerfile")
    runtime_env = _env(final_stage(instructions))
    model_path = runtime_env.get("FRONTBENCH_MODEL_PATH", "")
    trains = [
        shlex.split(i.value)
        for i in instructions
        if i.name == "RUN" and "frontbench train" in i.value
    ]
    copies = [i.value for i in final_stage(instructions) if i.name == "COPY"]

    assert model_path, "the runtime stage sets no FRONTBENCH_MODEL_PATH"
    assert trains, "no RUN frontbench train in backend/Dockerfile"
    assert any(
        words[words.index("--out") + 1] == model_path
        for words in trains
        if "--out" in words
    ), f"frontbench train does not write --out {model_path}: {trains}"
    assert any(str(Path(model_path).parent) in copy.split() for copy in copies), (
        f"the runtime stage copies no {Path(model_path).parent}: {copies}"
    )


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_cmd_is_a_real_command(
    component: Component, command_problems: Callable[[list[str]], list[str]]
) -> None:
    _, instructions = parse(component.dockerfile)
    commands = [i.value for i in final_stage(instructions) if i.name == "CMD"]

    assert commands, f"{component.dockerfile}: no CMD"
    argv = exec_form(commands[-1])
    assert command_problems(argv) == [], f"{component.dockerfile}: CMD {argv}"


def test_locust_dockerfile_default_locustfile_exists(
    locustfile_in_repository: Callable[[str], Path],
) -> None:
    _, instructions = parse(REPO / "loadtests/Dockerfile")
    locustfile = _env(final_stage(instructions)).get("LOCUST_LOCUSTFILE", "")

    assert locustfile, "loadtests/Dockerfile sets no LOCUST_LOCUSTFILE"
    assert locustfile_in_repository(locustfile).is_file(), locustfile


def test_locust_dockerfile_links_installed_package() -> None:
    _, instructions = parse(REPO / "loadtests/Dockerfile")
    base = [
        i.value for i in instructions if i.name == "ARG" and "PYTHON_IMAGE" in i.value
    ]
    version = re.search(r"python:(\d+\.\d+)", base[0]) if base else None
    links = [i.value for i in final_stage(instructions) if "ln -s" in i.value]

    assert version, f"no PYTHON_IMAGE ARG with a python version: {base}"
    assert any(
        f"/opt/venv/lib/python{version.group(1)}/site-packages/frontbench_loadtests"
        in link
        for link in links
    ), f"/opt/locustfiles does not link the python{version.group(1)} package: {links}"


@functools.cache
def _context_files(repo: Path) -> list[str]:
    from docker.utils.build import exclude_paths

    lines = (repo / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [
        line.strip() for line in lines if line.strip() and not line.startswith("#")
    ]
    return sorted(
        path for path in exclude_paths(str(repo), patterns) if (repo / path).is_file()
    )


def _copy_sources(instructions: list[Instruction]) -> list[str]:
    sources: list[str] = []
    for instruction in instructions:
        if instruction.name != "COPY" or "--from=" in instruction.value:
            continue
        words = shlex.split(instruction.value)
        sources.extend(words[:-1])
    return sources


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerignore_keeps_copied_sources(component: Component) -> None:
    files = _context_files(REPO)
    _, instructions = parse(component.dockerfile)

    for source in _copy_sources(instructions):
        assert any(path == source or path.startswith(source + "/") for path in files), (
            f"{component.dockerfile} copies {source!r}, which .dockerignore excludes"
        )


def test_dockerignore_keeps_tracked_package_files() -> None:
    # Package data (example digit PNGs, Dash assets) must reach the wheel too.
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: git ls-files lists the tracked files")
    folders = sorted({package.split("/")[0] for package in _pyproject_packages(REPO)})
    tracked = subprocess.run(
        ["git", "ls-files", "--", *folders],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    context = set(_context_files(REPO))
    missing = [
        path
        for path in tracked
        if path not in context and Path(path).name != "Dockerfile"
    ]

    assert tracked, f"git ls-files found nothing under {folders}"
    assert missing == [], f".dockerignore leaves out package files {missing}"


@pytest.mark.parametrize(
    "folder", [".git", ".github", "tests", "docs", "deploy", ".venv", "bench-results"]
)
def test_dockerignore_excludes_folder(folder: str) -> None:
    leaked = [path for path in _context_files(REPO) if path.startswith(folder + "/")]

    assert leaked == [], f".dockerignore lets {folder}/ into the build context"


@pytest.mark.parametrize("pattern", [r"(^|/)__pycache__/", r"\.py[cod]$", r"\.pt$"])
def test_dockerignore_excludes_by_products(pattern: str) -> None:
    leaked = [path for path in _context_files(REPO) if re.search(pattern, path)]

    assert leaked == [], f".dockerignore lets {leaked} into the build context"


def test_dockerignore_context_is_small() -> None:
    files = _context_files(REPO)
    size = sum((REPO / path).stat().st_size for path in files)

    # The package sources and example images are a few hundred kilobytes.
    assert size < 10 * 1024 * 1024, f"build context is {size} bytes: {files}"


def _pyproject_packages(repo: Path) -> list[str]:
    import tomllib

    with (repo / "pyproject.toml").open("rb") as file:
        data: dict[str, Any] = tomllib.load(file)
    packages: list[str] = data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return packages


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_dockerfile_copies_every_wheel_package(component: Component) -> None:
    # Hatchling builds the wheel from every package listed in pyproject.toml,
    # so the build fails unless all of them are in the image's source tree.
    _, instructions = parse(component.dockerfile)
    sources = _copy_sources(instructions)

    for package in _pyproject_packages(REPO):
        top = package.split("/")[0]
        assert top in sources, (
            f"{component.dockerfile} does not COPY {top}/ ({package})"
        )
    assert "pyproject.toml" in sources, (
        f"{component.dockerfile} does not COPY pyproject"
    )
    assert "README.md" in sources, f"{component.dockerfile} does not COPY README.md"
