"""Fixtures for the exercise checks: the servers of the app under test.

exercise_tracks.py selects that app file. The browser fixtures come
from tests/browser/conftest.py.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from exercise_tracks import HOST, SERVER_ENV, app_under_test

from frontbench_shared.processes import free_port


def _load_browser_fixtures() -> object:
    # tests/ is no package, so the browser tests' conftest is loaded by path.
    path = Path(__file__).parents[1] / "browser" / "conftest.py"
    spec = importlib.util.spec_from_file_location("frontbench_browser_fixtures", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_browser_fixtures = _load_browser_fixtures()
browser = _browser_fixtures.browser  # type: ignore[attr-defined]
page = _browser_fixtures.page  # type: ignore[attr-defined]

ExerciseServer = Callable[[str], str]


@pytest.fixture(scope="session")
def exercise_server(
    start_frontend: Callable[..., str], backend_url: str
) -> ExerciseServer:
    """Return a function that serves a framework's app under test, once each.

    The server sends its predictions to the shared test backend.
    """
    urls: dict[str, str] = {}

    def serve(framework: str) -> str:
        if framework not in urls:
            urls[framework] = start_frontend(
                framework,
                backend_url,
                "--app",
                str(app_under_test(framework)),
                **SERVER_ENV.get(framework, {}),
            )
        return urls[framework]

    return serve


@pytest.fixture(scope="session")
def unreachable_server(start_frontend: Callable[..., str]) -> ExerciseServer:
    """Return a function that serves the app under test with no backend to reach.

    The server's BACKEND_URL is a free loopback port where nothing listens,
    as if the backend had stopped.
    """
    urls: dict[str, str] = {}

    def serve(framework: str) -> str:
        if framework not in urls:
            urls[framework] = start_frontend(
                framework,
                f"http://{HOST}:{free_port(HOST)}",
                "--app",
                str(app_under_test(framework)),
                **SERVER_ENV.get(framework, {}),
            )
        return urls[framework]

    return serve
