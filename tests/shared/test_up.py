"""Tests of `frontbench up`: real servers in a real subprocess, and its checks."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from frontbench_shared import up
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

READY_LINE = re.compile(r"(?P<name>\w+) is ready at (?P<url>\S+) \(pid (?P<pid>\d+)\)")
ALL_READY = "every server is ready"
START_TIMEOUT = 240.0
EXIT_TIMEOUT = 60.0


@dataclass
class UpRun:
    """One `frontbench up` subprocess and the servers it reported."""

    process: ManagedProcess
    descendants: list[psutil.Process]

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.process.output(1000):
            if self.process.returncode is not None:
                pytest.fail(
                    f"frontbench up exited with {self.process.returncode} before "
                    f"printing {text!r}:\n{self.process.output(80)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {text!r} within {timeout:.0f} s:\n{self.process.output(80)}"
                )
            time.sleep(0.2)

    def wait_until_ready(self) -> dict[str, tuple[str, int]]:
        """Wait for the ready summary and return each server's URL and pid."""
        self.wait_for(ALL_READY)
        self.descendants = psutil.Process(self.process.pid).children(recursive=True)
        servers = {}
        for match in READY_LINE.finditer(self.process.output(1000)):
            servers[match["name"]] = (match["url"], int(match["pid"]))
        return servers

    def wait_for_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.process.returncode is None:
            if time.monotonic() > deadline:
                pytest.fail(f"frontbench up still runs after {timeout:.0f} s")
            time.sleep(0.2)
        return self.process.returncode

    def alive_descendants(self) -> list[psutil.Process]:
        _, alive = psutil.wait_procs(self.descendants, timeout=10)
        return [
            process
            for process in alive
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        ]


@pytest.fixture
def run_up(checkpoint: Path) -> Iterator[Callable[..., UpRun]]:
    """Return a function that runs `frontbench up ARGS` and stops it afterwards."""
    runs: list[UpRun] = []

    def start(*args: str, **env: str) -> UpRun:
        process = ManagedProcess(
            "up",
            python_argv("-m", "frontbench_shared.cli", "up", *args),
            env={
                "FRONTBENCH_MODEL_PATH": str(checkpoint),
                "FRONTBENCH_TORCH_THREADS": "1",
                **env,
            },
        )
        run = UpRun(process.start(), [])
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            if run.process.returncode is None:
                os.kill(run.process.pid, signal.SIGTERM)
                deadline = time.monotonic() + EXIT_TIMEOUT
                while run.process.returncode is None and time.monotonic() < deadline:
                    time.sleep(0.2)
            run.process.stop()
            # The servers lead their own process groups, so a failed `up`
            # could leave them behind; nothing may outlive the test.
            for child in run.descendants:
                if child.is_running():
                    child.kill()


def servers_started_with(options: list[str]) -> list[psutil.Process]:
    """Return the running servers whose command line has the ports in `options`."""
    ports = {option for option in options if option.isdigit()}
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        is_server = "frontbench_shared.cli" in cmdline and "up" not in cmdline
        if not is_server or not ports & set(cmdline):
            continue
        if process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def installed_frameworks() -> list[str]:
    return [
        framework
        for framework in up.FRAMEWORKS
        if importlib.util.find_spec(f"frontbench_{framework}.cli") is not None
        and importlib.util.find_spec(framework) is not None
    ]


def port_options(frameworks: list[str]) -> list[str]:
    options = ["--backend-port", str(free_port())]
    for framework in frameworks:
        options += [f"--{framework}-port", str(free_port())]
    return options


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_backend_only_stops_on_signal(
    signum: signal.Signals, run_up: Callable[..., UpRun]
) -> None:
    options = port_options([])
    run = run_up("--backend-only", *options)

    servers = run.wait_until_ready()

    assert set(servers) == {"backend"}
    url, pid = servers["backend"]
    assert url == f"http://127.0.0.1:{options[1]}"
    assert httpx.get(url + "/readyz").status_code == 200
    assert pid in {child.pid for child in run.descendants}

    os.kill(run.process.pid, signum)

    assert run.wait_for_exit() == 0
    assert f"received {signum.name}" in run.process.output(1000)
    assert run.alive_descendants() == [], "a server outlived frontbench up"


def test_up_closed_terminal_stops_servers(checkpoint: Path) -> None:
    """Stop every server on SIGHUP even when up's stdout pipe is closed."""
    options = port_options([])
    env = {
        **os.environ,
        "FRONTBENCH_MODEL_PATH": str(checkpoint),
        "FRONTBENCH_TORCH_THREADS": "1",
    }
    up_process = subprocess.Popen(
        python_argv("-m", "frontbench_shared.cli", "up", "--backend-only", *options),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert up_process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        for line in up_process.stdout:
            if ALL_READY in line or time.monotonic() > deadline:
                break
        assert servers_started_with(options), "the backend never started"
        # Like a closed terminal: nobody reads the output any more.
        up_process.stdout.close()
        up_process.send_signal(signal.SIGHUP)

        status = up_process.wait(EXIT_TIMEOUT)

        assert status == 0
        assert servers_started_with(options) == [], "the backend outlived up"
    finally:
        if up_process.poll() is None:
            up_process.kill()
            up_process.wait(EXIT_TIMEOUT)
        for server in servers_started_with(options):
            server.kill()


def test_up_backend_exit_stops_workers(run_up: Callable[..., UpRun]) -> None:
    run = run_up("--backend-only", "--backend-workers", "2", *port_options([]))
    servers = run.wait_until_ready()
    _, backend_pid = servers["backend"]

    os.kill(backend_pid, signal.SIGKILL)

    assert run.wait_for_exit() == 1
    output = run.process.output(1000)
    assert f"backend (pid {backend_pid}) exited with status -9" in output
    assert run.alive_descendants() == [], "a backend worker outlived frontbench up"


def test_up_frontends_serve_and_stop(run_up: Callable[..., UpRun]) -> None:
    frameworks = installed_frameworks()
    if not frameworks:
        pytest.skip("no frontend with a cli module is installed")
    run = run_up(*frameworks, *port_options(frameworks))

    servers = run.wait_until_ready()

    assert set(servers) == {"backend", *frameworks}
    for framework in frameworks:
        url, _ = servers[framework]
        assert httpx.get(url + "/").status_code == 200, framework
    # Killing one frontend makes `up` stop the backend and the others.
    _, first_pid = servers[frameworks[0]]
    os.kill(first_pid, signal.SIGKILL)

    assert run.wait_for_exit() == 1
    assert f"{frameworks[0]} (pid {first_pid}) exited" in run.process.output(1000)
    assert run.alive_descendants() == [], "a server outlived frontbench up"


def test_up_frontend_crash_at_start(run_up: Callable[..., UpRun]) -> None:
    if "dash" not in installed_frameworks():
        pytest.skip("the Dash frontend is not installed")
    options = port_options(["dash"])
    # An invalid setting makes the Dash command exit with status 2 at once.
    run = run_up("dash", *options, FRONTBENCH_DASH_WORKERS="0")

    assert run.wait_for_exit() == 1
    output = run.process.output(1000)
    assert "failed to start: dash (pid" in output
    assert "exited with status 2" in output
    assert "FRONTBENCH_DASH_WORKERS" in output, "the child's last lines are shown"
    assert ALL_READY not in output
    assert servers_started_with(options) == [], "the backend outlived frontbench up"


def test_up_ready_timeout_stops_all(run_up: Callable[..., UpRun]) -> None:
    options = port_options([])
    run = run_up("--backend-only", "--ready-timeout", "0.1", *options)

    assert run.wait_for_exit() == 1
    output = run.process.output(1000)
    assert "backend did not respond at" in output
    assert "--ready-timeout" in output, "the message names the option to change"
    assert servers_started_with(options) == [], "the backend outlived frontbench up"


# Checks that run before anything starts, called in this process


def test_up_port_in_use_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]

        status = up.main(["--backend-only", "--backend-port", str(taken)])

    errors = capsys.readouterr().err
    assert status == 2
    assert f"port {taken} on 127.0.0.1 is not available for backend" in errors
    assert "--backend-port" in errors, "the message names the option to change"
    assert "nothing was started" in errors


def test_up_shared_port_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())

    status = up.main(["dash", "--backend-port", port, "--dash-port", port])

    errors = capsys.readouterr().err
    assert status == 2
    assert f"dash and backend are both set to port {port}" in errors
    assert "--dash-port" in errors


def test_up_missing_extra_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry in sys.modules makes the module look not installed.
    monkeypatch.setitem(sys.modules, "gradio", None)

    status = up.main(["gradio", *port_options(["gradio"])])

    errors = capsys.readouterr().err
    assert status == 2
    assert "gradio needs the 'gradio' extra" in errors
    assert "pip install 'frontbench[gradio]'" in errors
    assert "nothing was started" in errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid FRAMEWORK 'bogus'"),
        (["dash", "--backend-only"], "--backend-only starts no frontend"),
        (["--backend-port", "0"], "invalid value '0'"),
        (["--backend-port", "70000"], "invalid port '70000'"),
        (["--backend-workers", "two"], "invalid value 'two'"),
        (["--ready-timeout", "-1"], "invalid --ready-timeout -1.0"),
    ],
)
def test_up_invalid_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        up.main(argv)

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def plan(*argv: str) -> list[up.Server]:
    args: argparse.Namespace = up.build_parser().parse_args(list(argv))
    return up.plan_servers(args)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([], ["backend", "streamlit", "dash", "gradio"]),
        (["--backend-only"], ["backend"]),
        (["gradio"], ["backend", "gradio"]),
        (["gradio", "dash", "gradio"], ["backend", "gradio", "dash"]),
    ],
)
def test_plan_servers_names(argv: list[str], names: list[str]) -> None:
    assert [server.name for server in plan(*argv)] == names


def test_plan_servers_default_ports() -> None:
    ports = {server.name: server.port for server in plan()}

    assert ports == {"backend": 8000, "streamlit": 8501, "dash": 8050, "gradio": 7860}


def test_plan_servers_any_interface_urls() -> None:
    servers = plan("dash", "--host", "0.0.0.0", "--dash-port", "9050")
    backend, dash = servers

    assert backend.url == "http://127.0.0.1:8000"
    assert backend.ready_url == "http://127.0.0.1:8000/readyz"
    assert dash.url == "http://127.0.0.1:9050"
    assert dash.argv[-2:] == ["--backend-url", "http://127.0.0.1:8000"]
    assert dash.argv[dash.argv.index("--host") + 1] == "0.0.0.0"
