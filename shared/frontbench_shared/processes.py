"""Start, watch and stop the project's servers as child processes.

`frontbench up`, the scaling experiment and the tests all run real servers in
child processes. Each child gets its own process group, so stopping it also
stops the workers it forked (uvicorn and gunicorn workers), and nothing is
left running.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import httpx

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.2
_KEPT_LINES = 200


class ProcessFailed(RuntimeError):
    """A child process exited, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that no socket is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


LineSink = Callable[[str], None]


class ManagedProcess:
    """A child process whose output is kept and optionally forwarded.

    Args:
        name: A short name used in log lines and as the output prefix.
        argv: The command and its arguments.
        env: Extra environment variables, added to the current environment.
        sink: Called with each output line (prefixed with the name), for
            example to forward it to the terminal. Lines are kept either way.
        cwd: The working directory of the child.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        sink: LineSink | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.sink = sink
        self.cwd = cwd
        self.lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self._popen: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The process id of the child; the child leads its own process group."""
        if self._popen is None:
            raise ProcessFailed(f"{self.name} was never started; call start() first")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of the child, or None while it runs."""
        return None if self._popen is None else self._popen.poll()

    def start(self) -> ManagedProcess:
        """Start the child in a new process group and begin reading its output."""
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self._popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._read_output, name=f"{self.name}-output", daemon=True
        )
        self._reader.start()
        return self

    def _read_output(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.sink is not None:
                self.sink(f"[{self.name}] {line}")

    def output(self, last: int = 40) -> str:
        """Return the last `last` lines the child printed."""
        return "\n".join(list(self.lines)[-last:])

    def wait_ready(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_READY_TIMEOUT,
        accept: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        """Poll `url` until it answers 200 (or `accept` returns True).

        Raises:
            ProcessFailed: The child exited first, or `timeout` seconds passed.
        """
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ProcessFailed(
                    f"{self.name} exited with status {self.returncode} before "
                    f"{url} answered; its last output:\n{self.output()}"
                )
            try:
                response = httpx.get(url, timeout=2.0)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                ok = accept(response) if accept else response.status_code == 200
                if ok:
                    logger.info("%s is ready at %s", self.name, url)
                    return
                last_error = f"status {response.status_code}"
            time.sleep(_POLL_INTERVAL)
        raise ProcessFailed(
            f"{self.name} did not answer {url} within {timeout:.0f} s "
            f"({last_error}); its last output:\n{self.output()}"
        )

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Stop the child's whole process group: SIGTERM, then SIGKILL.

        Returns:
            The child's exit status, or None if it was never started.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            logger.info("stopping %s (pid %d)", self.name, self._popen.pid)
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop within %.0f s; killing it", self.name, timeout
                )
                self._signal_group(signal.SIGKILL)
                self._popen.wait(timeout)
        # Workers forked by the child may outlive it; the group is killed
        # either way so that none of them keeps a port open.
        self._signal_group(signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout)
        return self._popen.returncode

    def _signal_group(self, signum: int) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)

    def __enter__(self) -> ManagedProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def python_argv(*args: str) -> list[str]:
    """Return argv that runs this interpreter with `args`, like `python args`."""
    return [sys.executable, *args]
