"""Fixtures that run the project's real servers on free loopback ports.

Every server is a child process in its own process group and is stopped by
the fixture that started it, whatever the test did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from frontbench_shared.examples import Example, list_examples
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the default model once per test run and return its checkpoint.

    Set FRONTBENCH_TEST_CHECKPOINT to the path of a checkpoint that
    `frontbench train` wrote to reuse it and skip the training.
    """
    reused = os.environ.get("FRONTBENCH_TEST_CHECKPOINT")
    if reused:
        if not Path(reused).is_file():
            pytest.fail(
                f"FRONTBENCH_TEST_CHECKPOINT={reused!r} is not a file; train one "
                "with 'frontbench train' or unset the variable"
            )
        return Path(reused)

    pytest.importorskip("torch")
    from frontbench_backend.training import train_and_save

    path = tmp_path_factory.mktemp("model") / "digits-cnn.pt"
    train_and_save(path)
    return path


StartBackend = Callable[..., str]


@pytest.fixture(scope="session")
def start_backend(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartBackend]:
    """Return a function that starts a real backend and returns its base URL.

    Keyword arguments become `FRONTBENCH_*` environment variables, so
    `start_backend(max_batch_size=1)` sets `FRONTBENCH_MAX_BATCH_SIZE=1`.
    """
    started: list[ManagedProcess] = []

    def start(workers: int = 1, **settings: object) -> str:
        port = free_port(HOST)
        env = {
            "FRONTBENCH_MODEL_PATH": str(checkpoint),
            "FRONTBENCH_TORCH_THREADS": "1",
        }
        env.update({f"FRONTBENCH_{k.upper()}": str(v) for k, v in settings.items()})
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
                "--workers",
                str(workers),
            ),
            env=env,
        )
        started.append(process.start())
        url = f"http://{HOST}:{port}"
        process.wait_ready(f"{url}/readyz")
        return url

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="session")
def backend_url(start_backend: StartBackend) -> str:
    """Return the base URL of one backend shared by the whole test run."""
    return start_backend()


StartFrontend = Callable[..., str]


@pytest.fixture(scope="session")
def start_frontend() -> Iterator[StartFrontend]:
    """Return a function that starts a real frontend server and returns its URL.

    `start_frontend("dash", backend_url, FRONTBENCH_DASH_WORKERS="1")` runs
    `frontbench frontend dash` on a free port with those environment variables,
    waits until the framework's ready path answers, and stops it at the end of
    the test run. Positional arguments after the backend URL are passed on to
    the command, such as `"--app", "exercises/dash/app.py"`.
    """
    import importlib

    started: list[ManagedProcess] = []

    def start(framework: str, backend_url: str, *args: str, **env: str) -> str:
        cli = importlib.import_module(f"frontbench_{framework}.cli")
        port = free_port(HOST)
        process = ManagedProcess(
            f"{framework}-{port}",
            python_argv(
                "-m",
                "frontbench_shared.cli",
                "frontend",
                framework,
                "--host",
                HOST,
                "--port",
                str(port),
                "--backend-url",
                backend_url,
                *args,
            ),
            env=env,
        )
        started.append(process.start())
        url = f"http://{HOST}:{port}"
        process.wait_ready(url + cli.READY_PATH)
        return url

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="session")
def examples() -> list[Example]:
    """Return the example digits shipped with the shared package."""
    found = list_examples()
    assert found, "no example digits shipped in frontbench_shared/example_digits"
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, str]], None]:
    """Remove every FRONTBENCH_* and BACKEND_URL variable, then set the given ones."""
    for name in list(os.environ):
        if name.startswith("FRONTBENCH_") or name == "BACKEND_URL":
            monkeypatch.delenv(name)

    def set_env(values: Mapping[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env
