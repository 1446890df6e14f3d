"""A short run of the whole scaling experiment: every setup at 1 and 2 replicas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE_ARGS = [
    "--setups", "direct,streamlit,dash,gradio",
    "--replicas", "1,2",
    "--users", "2",
    "--spawn-rate", "2",
    "--duration", "4",
    "--warmup", "1",
]  # fmt: skip
EXPECTED_FILES = [
    "report.md",
    "summary.csv",
    "summary.json",
    "throughput.png",
    "p95_latency.png",
    "cpu_by_process.png",
]


# The run takes minutes on a busy 2-CPU machine. The bench gets SIGTERM at
# BENCH_TIMEOUT_S, which makes it stop its servers, and pytest-timeout
# fires only after that.
BENCH_TIMEOUT_S = 720


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 120)
def test_bench_smoke_run_writes_report(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "frontbench_shared.cli", "bench", *SMOKE_ARGS,
            "--out", str(out), "--model-path", str(checkpoint),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"the bench ran longer than {BENCH_TIMEOUT_S} s:\n{stderr[-4000:]}")

    assert process.returncode == 0, stderr[-4000:]
    for name in EXPECTED_FILES:
        assert (out / name).stat().st_size > 0, f"{name} is missing or empty"
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [(run["setup"], run["replicas"]) for run in runs] == [
        (setup, replicas)
        for setup in ("direct", "streamlit", "dash", "gradio")
        for replicas in (1, 2)
    ]
    for run in runs:
        where = f"{run['setup']} with {run['replicas']} replicas"
        assert run["throughput"] > 0, f"{where}: no throughput ({run['error']})"
        assert run["failures"] == 0, f"{where}: {run['failure_messages']}"
        assert (out / f"{run['csv_prefix']}_stats.csv").exists(), where
