"""The `frontbench backend` and `frontbench train` commands, run for real."""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from frontbench_backend import cli
from frontbench_backend.model import DigitsCNN
from frontbench_shared.api import (
    HEALTH_PATH,
    PREDICT_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
)
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

HOST = "127.0.0.1"
ACCESS_LINE = re.compile(
    r"\[(?P<pid>\d+)\] frontbench_backend\.access: GET /healthz 200 [\d.]+ ms "
    r"request_id=(?P<request_id>\S+)"
)


def test_backend_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--workers", "--log-level"):
        assert option in out, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "port 70000 is not in 0..65535"),
        (["--port", "http"], "invalid port 'http'"),
        (["--workers", "0"], "need at least 1 worker"),
        (["--log-level", "loud"], "invalid choice"),
    ],
)
def test_backend_bad_option_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_backend_log_config_silences_uvicorn_access() -> None:
    config = cli.log_config("info")
    assert config["loggers"]["uvicorn.access"]["handlers"] == []
    assert config["loggers"]["frontbench_backend"]["level"] == "INFO"


def _wait_for(process: ManagedProcess, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = process.output(last=200)
        if re.search(pattern, output):
            return output
        if process.returncode is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no line matching {pattern!r}; output:\n{process.output()}")


@pytest.mark.timeout(240)
def test_backend_two_workers_share_one_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
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
            "2",
        ),
        env={"FRONTBENCH_MODEL_PATH": str(path), "FRONTBENCH_TORCH_THREADS": "1"},
    )
    # Holding the checkpoint's lock makes the command wait where it would
    # train, so the test can see that it waits before any worker starts.
    with open(path.with_name(path.name + ".lock"), "a+b") as lock, process:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _wait_for(process, "waiting for another process to finish writing")
        assert "Started server process" not in process.output(last=200)
        shutil.copyfile(checkpoint, path)
        fcntl.flock(lock, fcntl.LOCK_UN)

        process.wait_ready(url + READY_PATH)
        output = _wait_for(process, "backend starting on")
        start_line = next(
            line for line in output.splitlines() if "backend starting" in line
        )
        for setting in (
            f"http://{HOST}:{port}",
            "workers=2",
            "device=cpu",
            "torch_threads=1",
            "batching=True",
            "max_upload_bytes=",
            "max_image_pixels=",
        ):
            assert setting in start_line, start_line

        # The kernel spreads new connections over the workers, so the test
        # keeps sending requests until both workers have responded.
        pids: set[str] = set()
        for _ in range(200):
            with httpx.Client() as client:
                assert client.get(url + HEALTH_PATH).status_code == 200
            pids = {match["pid"] for match in ACCESS_LINE.finditer(process.output(200))}
            if len(pids) == 2:
                break
        assert len(pids) == 2, process.output()

    output = process.output(last=200)
    assert output.count("Started server process") == 2, output
    assert "training the default model" not in output


@pytest.mark.timeout(240)
def test_backend_logs_requests_once_with_request_id(checkpoint: Path) -> None:
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    process = ManagedProcess(
        f"backend-{port}",
        python_argv("-m", "frontbench_backend", "--host", HOST, "--port", str(port)),
        env={"FRONTBENCH_MODEL_PATH": str(checkpoint), "FRONTBENCH_TORCH_THREADS": "1"},
    )
    with process:
        process.wait_ready(url + READY_PATH)
        httpx.get(url + HEALTH_PATH, headers={REQUEST_ID_HEADER: "good-1"})
        httpx.post(
            url + PREDICT_PATH,
            files={"file": ("a.svg", b"<svg></svg>", "image/svg+xml")},
            headers={REQUEST_ID_HEADER: "bad-1"},
        )
        output = _wait_for(process, r"POST /v1/predict 415 .*request_id=bad-1")

    lines = output.splitlines()
    good = [line for line in lines if "good-1" in line]
    assert len(good) == 1, good
    assert ACCESS_LINE.search(good[0]), good[0]

    bad = [line for line in lines if "bad-1" in line]
    warnings = [line for line in bad if " WARNING " in line]
    assert len(warnings) == 1, bad
    assert "unsupported_format" in warnings[0]
    assert len(bad) == 2, bad

    assert '"GET /healthz HTTP/1.1"' not in output, "uvicorn's access log is on"
    assert re.search(r"worker \d+ stopped", process.output(last=20))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_train_command_writes_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "trained.pt"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "frontbench_shared.cli",
            "train",
            "--out",
            str(out),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert out.is_file()
    assert f"wrote {out}" in completed.stdout


@pytest.mark.timeout(120)
def test_python_m_backend_prints_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "frontbench_backend", "--help"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "frontbench backend" in completed.stdout


@pytest.mark.timeout(120)
def test_backend_corrupt_checkpoint_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    completed = subprocess.run(
        [sys.executable, "-m", "frontbench_backend", "--port", "0"],
        env={**os.environ, "FRONTBENCH_MODEL_PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert str(path) in completed.stderr
    assert "frontbench train --out" in completed.stderr
    assert "Traceback" not in completed.stderr


def _write_text(path: Path) -> None:
    path.write_text("this is a text file, not a checkpoint\n")


def _write_word(path: Path) -> None:
    # torch's weights-only unpickler reads "e" as an opcode and raises KeyError.
    path.write_text("hello\n")


def _write_truncated(path: Path) -> None:
    # torch raises OSError (EINVAL), not a pickle error, on a zip archive
    # cut short, so the cut is made from a real checkpoint layout.
    buffer = io.BytesIO()
    torch.save({"state_dict": DigitsCNN().state_dict()}, buffer)
    path.write_bytes(buffer.getvalue()[:20_000])


def _make_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_write_text, "is corrupt or not a torch file"),
        (_write_word, "is corrupt or not a torch file"),
        (_write_truncated, "is corrupt or not a torch file"),
        (_make_directory, "is a directory, not a file"),
    ],
    ids=["text", "word", "truncated", "directory"],
)
def test_backend_bad_checkpoint_path_exits_2(
    tmp_path: Path, make: Callable[[Path], None], message: str
) -> None:
    path = tmp_path / "model.pt"
    make(path)
    completed = _run_backend(path)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "invalid FRONTBENCH_MODEL_PATH" in lines[0]
    assert f"checkpoint {path} {message}" in lines[0]
    assert "frontbench train --out" in lines[0]


@pytest.mark.timeout(120)
def test_backend_unwritable_checkpoint_folder_exits_2() -> None:
    # /proc rejects new folders, even for root.
    path = Path("/proc/nope/x.pt")
    completed = _run_backend(path)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "invalid FRONTBENCH_MODEL_PATH" in lines[0]
    assert f"cannot create /proc/nope for checkpoint {path}" in lines[0]
    assert "choose a path in a writable folder" in lines[0]


def _run_backend(model_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "frontbench_backend", "--port", "0"],
        env={
            **os.environ,
            "FRONTBENCH_MODEL_PATH": str(model_path),
            "FRONTBENCH_TORCH_THREADS": "1",
        },
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
