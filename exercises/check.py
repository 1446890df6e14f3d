"""Check an exercise app step by step and print in plain words what is missing.

Run it through nox, which installs the project first:

    nox -s exercise -- streamlit 3

or directly, in an environment with `pip install -e '.[all,test]'`:

    python exercises/check.py streamlit 3 [--app PATH]

It serves the app file (default: exercises/<framework>/app.py) with the real
frontend server, sends it digits through a real Chromium and a real backend,
and runs the checks of steps 1 to STEP (default: all six) in order. It stops
at the first step that is not done, prints what that step is missing, and
exits with status 0 when every checked step passes, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "tests" / "exercises"
sys.path.insert(0, str(CHECKS))

from exercise_tracks import (  # noqa: E402
    APP_ENV,
    FRAMEWORK_ENV,
    FRAMEWORKS,
    STEP_ENV,
    STEPS,
)


class StepCollector:
    """A pytest plugin that records which steps passed and why one failed."""

    def __init__(self) -> None:
        self.passed: list[int] = []
        self.failed: dict[int, str] = {}

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        """Print which step is being checked, as progress."""
        step = _step_of(nodeid)
        if step is not None:
            print(f"Checking step {step} ({STEPS[step]}) ...", flush=True)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record a step's outcome from the report of its test."""
        step = _step_of(report.nodeid)
        if step is None:
            return
        if report.when == "call" and report.passed:
            self.passed.append(step)
        elif report.failed:
            self.failed[step] = _failure_message(report)


def _step_of(nodeid: str) -> int | None:
    marker = "-step"
    if marker not in nodeid:
        return None
    return int(nodeid.rsplit(marker, 1)[1].rstrip("]"))


def _failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    # An assert's message comes first, then pytest's explanation of the assert.
    text = text.removeprefix("AssertionError: ").split("\nassert ")[0]
    if report.when == "setup":
        return (
            "The app did not start, so no step could be checked. The server said:\n"
            + text.removeprefix("frontbench_shared.processes.ProcessFailed: ")
        )
    return text


def summarize(collector: StepCollector, last_step: int) -> tuple[str, bool]:
    """Return the closing line and whether steps 1 to `last_step` all passed."""
    done = sorted(collector.passed)
    if len(done) == last_step:
        return f"Steps 1-{last_step} done." if last_step > 1 else "Step 1 done.", True

    missing = next(step for step in range(1, last_step + 1) if step not in done)
    if missing == 1:
        return "Step 1 not yet.", False
    if missing == 2:
        return "Step 1 done, step 2 not yet.", False
    return f"Steps 1-{missing - 1} done, step {missing} not yet.", False


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the check's arguments."""
    parser = argparse.ArgumentParser(
        prog="nox -s exercise --",
        description="Check steps 1 to STEP of an exercise and name what is missing.",
    )
    parser.add_argument("framework", choices=FRAMEWORKS, help="the track to check")
    parser.add_argument(
        "step",
        nargs="?",
        type=int,
        choices=list(STEPS),
        default=len(STEPS),
        help=f"check steps 1 to this one (default: {len(STEPS)}, every step)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        help="the app file to check (default: exercises/<framework>/app.py)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the checks and print the summary; return 0 when every step passed."""
    args = build_parser().parse_args(argv)
    app = (args.app or ROOT / "exercises" / args.framework / "app.py").resolve()
    if not app.is_file():
        print(f"check: the app file {app} does not exist; give it with --app PATH")
        return 2

    os.environ[FRAMEWORK_ENV] = args.framework
    os.environ[STEP_ENV] = str(args.step)
    os.environ[APP_ENV] = str(app)
    os.environ.setdefault("FRONTBENCH_TORCH_THREADS", "1")
    print(f"Checking {app} against steps 1-{args.step} of the {args.framework} track.")
    collector = StepCollector()
    pytest.main(
        [
            str(CHECKS / "test_steps.py"),
            "--exitfirst",
            "--quiet",
            "--no-header",
            "--tb=no",
            # The summary below replaces pytest's lists of failures and warnings.
            "-rN",
            "-p",
            "no:warnings",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
        ],
        plugins=[collector],
    )

    print()
    for step in range(1, args.step + 1):
        if step in collector.failed:
            print(collector.failed[step])
            break
        if step in collector.passed:
            print(f"Step {step} ({STEPS[step]}) is done.")
    summary, passed = summarize(collector, args.step)
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
