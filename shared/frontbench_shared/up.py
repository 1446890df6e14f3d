"""The `frontbench up` command: run the backend and the frontends together.

It checks the ports and installed extras, starts every server as a child
process in its own process group, waits until each one responds, prints
their URLs and forwards their output with a `[name]` prefix. It stops all of
them on Ctrl-C, SIGTERM or SIGHUP, or as soon as one of them exits:

    frontbench up                      # backend, Streamlit, Dash and Gradio
    frontbench up gradio --backend-workers 2
    frontbench up --backend-only --backend-port 9000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

import httpx

from frontbench_shared.api import READY_PATH
from frontbench_shared.processes import ManagedProcess, python_argv

logger = logging.getLogger(__name__)

PROG = "frontbench up"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BACKEND_PORT = 8000
DEFAULT_FRONTEND_PORTS = {"streamlit": 8501, "dash": 8050, "gradio": 7860}
FRAMEWORKS = tuple(DEFAULT_FRONTEND_PORTS)

# The modules each server imports, by the extra that installs them. Checking
# them before anything starts turns a missing extra into one clear error.
REQUIRED_MODULES = {
    "backend": ("frontbench_backend", "torch", "fastapi", "uvicorn"),
    "streamlit": ("frontbench_streamlit", "streamlit"),
    "dash": ("frontbench_dash", "dash"),
    "gradio": ("frontbench_gradio", "gradio"),
}

# The backend trains its model before it starts to serve when the checkpoint
# is missing. That takes minutes on a slow or busy CPU (an estimate), and it
# counts toward this timeout.
DEFAULT_READY_TIMEOUT = 900.0
_POLL_INTERVAL = 0.2
_PROBE_TIMEOUT = 2.0
_LAST_LINES = 30
_EXIT_USAGE = 2
_EXIT_FAILED = 1


class _StopRequested(Exception):
    """Raised in the main thread by the handlers of SIGINT, SIGTERM and SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


@dataclass(frozen=True)
class Server:
    """One server that `frontbench up` runs."""

    name: str
    port: int
    argv: list[str]
    url: str
    ready_url: str


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for the options of `frontbench up`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Start the model backend and the named frontends (all three by "
            "default), wait until each responds, and print their URLs. "
            "Ctrl-C, SIGTERM or SIGHUP stops all of them, and so does the exit of any "
            "one of them."
        ),
    )
    parser.add_argument(
        "frameworks",
        nargs="*",
        metavar="FRAMEWORK",
        help="frontends to start: " + ", ".join(FRAMEWORKS) + " (default: all)",
    )
    parser.add_argument(
        "--backend-only",
        action="store_true",
        help="start only the backend, with no frontend",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address every server listens on (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--backend-port",
        type=_port,
        metavar="PORT",
        default=DEFAULT_BACKEND_PORT,
        help=f"TCP port of the backend (default {DEFAULT_BACKEND_PORT})",
    )
    parser.add_argument(
        "--backend-workers",
        type=_positive_int,
        metavar="N",
        default=1,
        help="number of backend worker processes (default 1)",
    )
    for framework, port in DEFAULT_FRONTEND_PORTS.items():
        parser.add_argument(
            f"--{framework}-port",
            type=_port,
            metavar="PORT",
            default=port,
            help=f"TCP port of the {framework} frontend (default {port})",
        )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        metavar="SECONDS",
        default=DEFAULT_READY_TIMEOUT,
        help=(
            "seconds to wait for every server to respond before giving up, "
            "including the model training on a first start "
            f"(default {DEFAULT_READY_TIMEOUT:.0f})"
        ),
    )
    return parser


def _port(text: str) -> int:
    port = _positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: use a TCP port from 1 to 65535"
        )
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: use a whole number of 1 or more"
        )
    return value


def _url_host(host: str) -> str:
    """Return the host to put in a URL for a server that listens on `host`."""
    # A server that listens on every interface is reached on the loopback one.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def plan_servers(args: argparse.Namespace) -> list[Server]:
    """Return the backend and the frontends that `args` requests, in start order."""
    host = args.host
    url_host = _url_host(host)
    backend_url = f"http://{url_host}:{args.backend_port}"
    backend_argv = python_argv(
        "-m", "frontbench_shared.cli", "backend",
        "--host", host,
        "--port", str(args.backend_port),
        "--workers", str(args.backend_workers),
    )  # fmt: skip
    servers = [
        Server(
            "backend",
            args.backend_port,
            backend_argv,
            backend_url,
            backend_url + READY_PATH,
        )
    ]
    if args.backend_only:
        return servers

    for framework in dict.fromkeys(args.frameworks or FRAMEWORKS):
        port: int = getattr(args, f"{framework}_port")
        url = f"http://{url_host}:{port}"
        argv = python_argv(
            "-m", "frontbench_shared.cli", "frontend", framework,
            "--host", host,
            "--port", str(port),
            "--backend-url", backend_url,
        )  # fmt: skip
        # Each framework serves its root page with 200 once it takes requests.
        servers.append(Server(framework, port, argv, url, url + "/"))
    return servers


def check_extras(servers: Sequence[Server]) -> list[str]:
    """Return one error message per server whose extra is not installed."""
    problems = []
    for server in servers:
        missing = [
            module
            for module in REQUIRED_MODULES[server.name]
            if importlib.util.find_spec(module) is None
        ]
        if missing:
            problems.append(
                f"{server.name} needs the {server.name!r} extra, which is not "
                f"installed (missing module {missing[0]!r}). Install it with: "
                f"pip install 'frontbench[{server.name}]'"
            )
    return problems


def check_ports(host: str, servers: Sequence[Server]) -> list[str]:
    """Return one error message per port that is shared or already in use."""
    problems = []
    owners: dict[int, str] = {}
    for server in servers:
        option = (
            "--backend-port" if server.name == "backend" else f"--{server.name}-port"
        )
        if server.port in owners:
            problems.append(
                f"{server.name} and {owners[server.port]} are both set to port "
                f"{server.port}; give {server.name} another port with {option}"
            )
            continue

        owners[server.port] = server.name
        reason = _bind_error(host, server.port)
        if reason is not None:
            problems.append(
                f"port {server.port} on {host} is not available for "
                f"{server.name} ({reason}); stop the program that uses it or "
                f"pass {option} with a free port"
            )
    return problems


def _bind_error(host: str, port: int) -> str | None:
    """Return why `port` on `host` cannot be bound, or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"the host cannot be resolved: {exc}"

    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as sock:
        # uvicorn and gunicorn bind with SO_REUSEADDR too, so a port with
        # connections left in TIME_WAIT counts as free, and only a listening
        # socket blocks it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


class _Output:
    """Write lines from several threads to stdout without mixing them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        self._write(sys.stdout, text)

    def status(self, text: str) -> None:
        self._write(sys.stdout, f"{PROG}: {text}")

    def error(self, text: str) -> None:
        self._write(sys.stderr, f"{PROG}: {text}")

    def _write(self, stream: TextIO, text: str) -> None:
        # When the terminal or the pipe that reads the output is gone, the
        # line is dropped, so that the servers are still stopped and the
        # reader threads keep draining their output.
        with self._lock, contextlib.suppress(OSError, ValueError):
            print(text, file=stream, flush=True)


# SIGHUP arrives when the terminal that runs `frontbench up` closes.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested(signum)


def _report_signals_while_stopping() -> None:
    """Keep a second Ctrl-C from cutting the shutdown short."""

    def report(signum: int, frame: FrameType | None) -> None:
        # The handler can interrupt a print that holds the output lock, so it
        # writes to the file descriptor directly.
        message = (
            f"{PROG}: {signal.Signals(signum).name} received while stopping; "
            "the servers are already being stopped\n"
        )
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), message.encode())

    for signum in _STOP_SIGNALS:
        signal.signal(signum, report)


def _stop_all(processes: Sequence[ManagedProcess], output: _Output) -> None:
    """Stop every started process at the same time and wait for all of them."""
    running = [process for process in processes if process.returncode is None]
    if running:
        output.status("stopping " + ", ".join(process.name for process in running))
    with concurrent.futures.ThreadPoolExecutor(max(1, len(processes))) as pool:
        list(pool.map(lambda process: process.stop(), processes))
    output.status("all servers stopped")


def _describe_exit(process: ManagedProcess) -> str:
    last_lines = process.output(_LAST_LINES) or "(no output)"
    return (
        f"{process.name} (pid {process.pid}) exited with status "
        f"{process.returncode}; its last output:\n{last_lines}"
    )


def _wait_for_exit(processes: Sequence[ManagedProcess]) -> None:
    """Return when one of `processes` exits."""
    while all(process.returncode is None for process in processes):
        time.sleep(_POLL_INTERVAL)


def run(servers: Sequence[Server], *, ready_timeout: float) -> int:
    """Start `servers`, supervise them until a signal or an exit, and stop them.

    Returns:
        0 after a stop on SIGINT, SIGTERM or SIGHUP, 1 when a server failed to start
        or exited on its own.
    """
    output = _Output()
    processes = [
        ManagedProcess(server.name, server.argv, sink=output.line) for server in servers
    ]
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    status = _EXIT_FAILED
    try:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _request_stop)
        status = _start_and_watch(servers, processes, output, ready_timeout)
    except _StopRequested as stop:
        output.status(f"received {stop.signal_name}")
        status = 0
    finally:
        _report_signals_while_stopping()
        try:
            _stop_all(processes, output)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return status


def _wait_until_ready(
    servers: Sequence[Server],
    processes: Sequence[ManagedProcess],
    output: _Output,
    timeout: float,
) -> bool:
    """Poll every server until all respond; return False once one exits or times out.

    All servers are polled in turn, so a frontend that crashes at start is
    reported at once, even while the backend is still training its model.
    """
    deadline = time.monotonic() + timeout
    # Keyed by name, because a Server contains a list and so is not hashable.
    pending = {
        server.name: (server, process)
        for server, process in zip(servers, processes, strict=True)
    }
    last_errors = {server.name: "no response yet" for server in servers}
    with httpx.Client(timeout=_PROBE_TIMEOUT) as http:
        while pending:
            for process in processes:
                if process.returncode is not None:
                    output.error("failed to start: " + _describe_exit(process))
                    return False

            for server, process in list(pending.values()):
                try:
                    response = http.get(server.ready_url)
                except httpx.HTTPError as exc:
                    last_errors[server.name] = f"{type(exc).__name__}: {exc}"
                    continue
                if response.status_code != 200:
                    last_errors[server.name] = f"status {response.status_code}"
                    continue
                del pending[server.name]
                output.status(
                    f"{server.name} is ready at {server.url} (pid {process.pid})"
                )

            if pending and time.monotonic() > deadline:
                for server, _ in pending.values():
                    output.error(
                        f"{server.name} did not respond at {server.ready_url} "
                        f"within {timeout:.0f} s ({last_errors[server.name]}); "
                        "pass a larger --ready-timeout if it is only slow"
                    )
                return False
            if pending:
                time.sleep(_POLL_INTERVAL)
    return True


def _start_and_watch(
    servers: Sequence[Server],
    processes: Sequence[ManagedProcess],
    output: _Output,
    ready_timeout: float,
) -> int:
    """Start the servers and supervise them, and return 1 once one fails or exits."""
    # The frontends need no backend to start, so all servers start together.
    for process in processes:
        process.start()

    if not _wait_until_ready(servers, processes, output, ready_timeout):
        return _EXIT_FAILED

    width = max(len(server.name) for server in servers)
    output.status("every server is ready; press Ctrl-C to stop them")
    for server in servers:
        extra = f"  (API docs: {server.url}/docs)" if server.name == "backend" else ""
        output.line(f"  {server.name:<{width}}  {server.url}{extra}")

    _wait_for_exit(processes)
    for process in processes:
        if process.returncode is not None:
            output.error(_describe_exit(process))
    return _EXIT_FAILED


def main(argv: Sequence[str]) -> int:
    """Run `frontbench up` with `argv` and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    unknown = [name for name in args.frameworks if name not in FRAMEWORKS]
    if unknown:
        parser.error(
            f"invalid FRAMEWORK {unknown[0]!r}: choose from " + ", ".join(FRAMEWORKS)
        )
    if args.backend_only and args.frameworks:
        parser.error("--backend-only starts no frontend; drop it or the frameworks")
    if args.ready_timeout <= 0:
        parser.error(
            f"invalid --ready-timeout {args.ready_timeout!r}: use a number of "
            "seconds above 0"
        )

    servers = plan_servers(args)
    problems = check_extras(servers) + check_ports(args.host, servers)
    if problems:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        print(f"{PROG}: nothing was started", file=sys.stderr)
        return _EXIT_USAGE

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    # httpx logs every readiness probe at INFO, which would flood the output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logger.info(
        "starting %s on %s (backend workers: %d)",
        ", ".join(server.name for server in servers),
        args.host,
        args.backend_workers,
    )
    return run(servers, ready_timeout=args.ready_timeout)
