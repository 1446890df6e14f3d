"""The exercise check, run as students run it, on the starter files.

test_steps.py checks that each reference app passes every step. These tests
run exercises/check.py on each untouched starter file and check that it
fails step 1 with the message that names the code to write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from exercise_tracks import FRAMEWORKS

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "exercises" / "check.py"
# The check starts a backend, a frontend and Chromium, then waits 30 s for the
# upload input that a starter lacks. That is about a minute on a loaded machine.
CHECK_TIMEOUT_S = 300


def run_check(checkpoint: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run exercises/check.py with the test run's checkpoint, and capture its output."""
    return subprocess.run(
        [sys.executable, str(CHECK), *args],
        cwd=ROOT,
        env={**os.environ, "FRONTBENCH_TEST_CHECKPOINT": str(checkpoint)},
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_check_starter_fails_step_1(framework: str, checkpoint: Path) -> None:
    completed = run_check(checkpoint, framework, "1")
    output = completed.stdout + completed.stderr

    assert completed.returncode == 1, output
    assert "Step 1 (upload and preview) is not done yet" in completed.stdout, output
    assert "the page has no file upload input" in completed.stdout, output
    assert completed.stdout.rstrip().endswith("Step 1 not yet."), output


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["flask"], "invalid choice: 'flask'"),
        (["dash", "7"], "invalid choice: 7"),
        (["dash", "1", "--app", "no/such/app.py"], "does not exist"),
    ],
)
def test_check_rejects_bad_arguments(
    argv: list[str], expected: str, tmp_path: Path
) -> None:
    completed = run_check(tmp_path / "unused.pt", *argv)

    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert expected in completed.stdout + completed.stderr
