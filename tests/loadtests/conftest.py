"""Run the Locust users as real Locust processes against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from frontbench_loadtests.bench import (
    PACKAGE_DIR,
    SETUPS,
    RunResult,
    read_locust_results,
)

RunLocust = Callable[..., RunResult]
LOCUST_SECONDS = 5


@pytest.fixture
def run_locust(tmp_path: Path) -> RunLocust:
    """Return a function that runs one setup's user headless and reads its CSVs."""

    def run(
        setup: str,
        host: str,
        *,
        users: int = 2,
        seconds: int = LOCUST_SECONDS,
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        prefix = tmp_path / f"{setup}-{len(list(tmp_path.iterdir()))}"
        argv = [
            sys.executable,
            "-m",
            "locust",
            "--headless",
            "--only-summary",
            "-f",
            str(PACKAGE_DIR / SETUPS[setup]),
            "--host",
            host,
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--csv",
            str(prefix),
            "--loglevel",
            "WARNING",
        ]
        completed = subprocess.run(
            argv,
            env={**os.environ, "FRONTBENCH_BENCH_WARMUP": "0", **(env or {})},
            capture_output=True,
            text=True,
            timeout=seconds + 90,
            check=False,
        )
        result = RunResult(setup=setup, replicas=1, users=users, duration_s=seconds)
        read_locust_results(prefix, result)
        # Not a run error: the tests show Locust's own output from here.
        result.error = completed.stderr[-3000:]
        return result

    return run
