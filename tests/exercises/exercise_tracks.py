"""The steps of the exercise tracks, and which app, steps and frameworks to check.

The checks run against one app file per framework, chosen with environment
variables so that `exercises/check.py` can point them at a student's file:

- FRONTBENCH_EXERCISE_FRAMEWORK: streamlit, dash or gradio (default: all three)
- FRONTBENCH_EXERCISE_STEP: check steps 1 to this step (default: 6, every step)
- FRONTBENCH_EXERCISE_APP: the app file to serve (default: each reference app)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

FRAMEWORKS = ("streamlit", "dash", "gradio")
STEPS = {
    1: "upload and preview",
    2: "call the backend through the client",
    3: "show the label",
    4: "draw the probability chart",
    5: "handle errors",
    6: "load test it with Locust",
}
FRAMEWORK_ENV = "FRONTBENCH_EXERCISE_FRAMEWORK"
STEP_ENV = "FRONTBENCH_EXERCISE_STEP"
APP_ENV = "FRONTBENCH_EXERCISE_APP"
HOST = "127.0.0.1"
# One gunicorn worker is enough for one browser, and it starts faster.
SERVER_ENV = {"dash": {"FRONTBENCH_DASH_WORKERS": "1"}}


def selected_frameworks() -> list[str]:
    """Return the frameworks that FRONTBENCH_EXERCISE_FRAMEWORK selects."""
    value = os.environ.get(FRAMEWORK_ENV, "")
    if not value:
        return list(FRAMEWORKS)
    if value not in FRAMEWORKS:
        raise pytest.UsageError(
            f"invalid {FRAMEWORK_ENV}={value!r}; use one of: {', '.join(FRAMEWORKS)}"
        )
    return [value]


def selected_steps() -> list[int]:
    """Return steps 1 to FRONTBENCH_EXERCISE_STEP, or every step when unset."""
    value = os.environ.get(STEP_ENV, "")
    if not value:
        return list(STEPS)
    if not (value.isdigit() and int(value) in STEPS):
        raise pytest.UsageError(
            f"invalid {STEP_ENV}={value!r}; use a step from 1 to {len(STEPS)}"
        )
    return list(range(1, int(value) + 1))


def reference_app(framework: str) -> Path:
    """Return the path of a framework's reference app.py."""
    # find_spec imports the package but not the app, which reads settings.
    spec = importlib.util.find_spec(f"frontbench_{framework}.app")
    if spec is None or spec.origin is None:
        raise pytest.UsageError(
            f"frontbench_{framework} is not installed; install it with "
            f"pip install -e '.[{framework}]'"
        )
    return Path(spec.origin)


def app_under_test(framework: str) -> Path:
    """Return FRONTBENCH_EXERCISE_APP, or the framework's reference app."""
    value = os.environ.get(APP_ENV, "")
    return Path(value).resolve() if value else reference_app(framework)
