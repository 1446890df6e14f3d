"""Checks on the project as a whole: dependency boundaries and tooling."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from frontbench_loadtests.compare import dependency_closure

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "frontbench"
LIGHT_EXTRAS = ["streamlit", "dash", "gradio", "loadtests"]
FORBIDDEN_IMPORTS = {"torch", "frontbench_backend"}
CLIENT_SIDE_DIRS = ["shared", "frontends"]
CLIENT_SIDE_PACKAGES = [
    "frontbench_shared",
    "frontbench_streamlit",
    "frontbench_dash",
    "frontbench_gradio",
]


@pytest.mark.parametrize("extra", [None, *LIGHT_EXTRAS])
def test_dependency_closure_without_torch(extra: str | None) -> None:
    extras = frozenset() if extra is None else frozenset({extra})

    closure = dependency_closure(DISTRIBUTION, extras)

    assert "torch" not in closure, f"frontbench[{extra or ''}] pulls in torch"


def test_dependency_closure_backend_has_torch() -> None:
    closure = dependency_closure(DISTRIBUTION, frozenset({"backend"}))

    assert "torch" in closure
    assert "fastapi" in closure


def python_files(directories: list[str]) -> Iterator[Path]:
    for directory in directories:
        yield from sorted((ROOT / directory).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Return the top-level names of every module that `path` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path",
    list(python_files(CLIENT_SIDE_DIRS)),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_client_side_source_no_torch(path: Path) -> None:
    forbidden = imported_modules(path) & FORBIDDEN_IMPORTS

    assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
loaded = {}
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if module.name.endswith("__main__"):
        continue
    importlib.import_module(module.name)
    loaded[module.name] = sorted(
        name for name in ("torch", "frontbench_backend") if name in sys.modules
    )
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("package", CLIENT_SIDE_PACKAGES)
def test_client_side_import_no_torch(package: str, tmp_path: Path) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE, package],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, list[str]] = json.loads(result.stdout.splitlines()[-1])

    assert loaded, f"no module of {package} was imported"
    for module, forbidden in loaded.items():
        assert forbidden == [], f"importing {module} loads {forbidden}"


@pytest.mark.parametrize("name", ["backend", "shared", "frontends", "loadtests"])
def test_no_bare_top_level_package(name: str, tmp_path: Path) -> None:
    # A fresh interpreter outside the repository finds only installed
    # packages, not the folders of the current directory.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys; "
            "print(importlib.util.find_spec(sys.argv[1]) is None)",
            name,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == "True", f"a package named {name!r} is importable"


@functools.cache
def registered_nox_sessions() -> frozenset[str]:
    """Import noxfile.py once and return the names of the sessions it defines."""
    nox = pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return frozenset(nox.registry.get())


def ci_nox_sessions() -> set[str]:
    """Return the nox sessions that the CI workflow's steps run."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    commands = [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if "run" in step
    ]
    # A step that runs .ci/run runs the commands of that script.
    if any(".ci/run" in command for command in commands):
        commands.append((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    names: set[str] = set()
    for command in commands:
        for match in re.finditer(
            r"\bnox\b[^\n]*?\s(?:-s|--sessions?)\s+([\w\-]+)", command
        ):
            names.add(match.group(1))
    return names


def test_ci_workflow_sessions_exist() -> None:
    named = ci_nox_sessions()
    defined = registered_nox_sessions()

    assert {"lint", "typecheck", "tests", "docs", "loadtest"} <= named
    assert named <= defined, f"ci.yml runs undefined sessions {sorted(named - defined)}"


def test_nox_default_sessions() -> None:
    nox = pytest.importorskip("nox")
    registered_nox_sessions()

    assert nox.options.sessions == ["lint", "typecheck", "tests"]


def readme_quick_start() -> list[str]:
    """Return the commands of the README's first shell code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh|console|shell)\n(.*?)```", text, re.DOTALL)
    assert block, "README.md has no shell code block"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_readme_quick_start_two_commands() -> None:
    commands = readme_quick_start()

    assert commands == [
        "python3 -m pip install -e '.[all]' && frontbench up",
        "python3 -m pip install nox && nox -s tests",
    ]


def test_ci_run_uses_readme_test_command() -> None:
    test_command = readme_quick_start()[-1]
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

    assert test_command in ci_run
    assert ci_run.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ci_run


def test_precommit_ruff_matches_noxfile() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    pinned = re.search(r'RUFF = "(ruff==[\d.]+)"', noxfile)
    assert pinned, "noxfile.py pins no ruff version"

    assert {hook["id"] for hook in hooks} == {"ruff-check", "ruff-format"}
    for hook in hooks:
        assert hook["additional_dependencies"] == [pinned.group(1)], hook["id"]


def setting_variables(settings: Any) -> set[str]:
    """Return the environment variable of each field of a settings class."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else prefix + name.upper())
    return names


@pytest.mark.parametrize(
    "module",
    [
        "frontbench_backend.settings",
        "frontbench_streamlit.app",
        "frontbench_dash.app",
        "frontbench_gradio.app",
    ],
)
def test_readme_lists_every_setting(module: str) -> None:
    settings = importlib.import_module(module).Settings
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    variables = setting_variables(settings)

    missing = sorted(name for name in variables if f"`{name}`" not in readme)

    assert len(variables) >= 3, f"{module}.Settings has too few fields"
    assert missing == [], f"README.md's configuration table lacks {missing}"


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)\)", readme)

    assert targets, "README.md links to no file"
    for target in targets:
        assert (ROOT / target).exists(), f"README.md links to missing {target}"
