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


@pytest.mark.slow
def test_bench_smoke_run_writes_report(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "frontbench_shared.cli",
            "bench",
            *SMOKE_ARGS,
            "--out",
            str(out),
            "--model-path",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
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
