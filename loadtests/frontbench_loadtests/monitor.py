"""Sample the CPU and memory of the processes in one benchmark run.

A `ProcessMonitor` thread samples each watched process tree (a server and
every process it forked, such as uvicorn or gunicorn workers) every
`interval` seconds with psutil, and the whole machine's CPU at the same
times.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import psutil

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5


@dataclass
class ProcessUsage:
    """CPU and memory of one process, summed over the samples of a run.

    CPU percentages are of one core, as `top` shows them: 200 % is two
    cores fully busy.
    """

    role: str
    pid: int
    name: str
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    max_cpu_percent: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0

    def mean_cpu_percent(self) -> float:
        """Return the mean CPU % of one core over the time the process was seen."""
        seen = self.last_seen - self.first_seen
        return 100.0 * self.cpu_seconds / seen if seen > 0 else 0.0


@dataclass
class _Tracked:
    usage: ProcessUsage
    process: psutil.Process
    start_cpu: float
    last_cpu: float
    last_time: float


@dataclass
class MachineUsage:
    """CPU of the whole machine over a run, in percent of all cores."""

    samples: list[float] = field(default_factory=list)

    def mean_percent(self) -> float:
        """Return the mean CPU % of all cores together."""
        return sum(self.samples) / len(self.samples) if self.samples else 0.0

    def max_percent(self) -> float:
        """Return the highest sampled CPU % of all cores together."""
        return max(self.samples, default=0.0)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class ProcessMonitor:
    """Sample named process trees in a background thread until stopped.

    Args:
        interval: Seconds between samples.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.machine = MachineUsage()
        self._roots: dict[str, int] = {}
        self._tracked: dict[int, _Tracked] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, role: str, pid: int) -> None:
        """Sample the process `pid` and its descendants under the name `role`."""
        with self._lock:
            self._roots[role] = pid
        self._sample_once()

    def start(self) -> None:
        """Start the sampling thread."""
        psutil.cpu_percent(interval=None)  # The first call only sets a baseline.
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="process-monitor", daemon=True
        )
        self._thread.start()

    def stop(self) -> list[ProcessUsage]:
        """Stop the thread, take a last sample, and return the usage per process."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval * 4)
        self._sample_once()
        with self._lock:
            return [tracked.usage for tracked in self._tracked.values()]

    def reset(self) -> None:
        """Forget what was measured so far, for example at the end of a warm-up."""
        self._sample_once()
        now = time.monotonic()
        with self._lock:
            self.machine.samples.clear()
            for tracked in self._tracked.values():
                tracked.start_cpu = tracked.last_cpu
                tracked.usage.cpu_seconds = 0.0
                tracked.usage.max_cpu_percent = 0.0
                tracked.usage.first_seen = now
                tracked.usage.last_seen = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.machine.samples.append(psutil.cpu_percent(interval=None))
            self._sample_once()

    def _sample_once(self) -> None:
        with self._lock:
            roots = dict(self._roots)
        now = time.monotonic()
        for role, pid in roots.items():
            for process in self._tree(pid):
                self._sample_process(role, process, now)

    @staticmethod
    def _tree(pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample_process(self, role: str, process: psutil.Process, now: float) -> None:
        try:
            with process.oneshot():
                cpu = _cpu_seconds(process)
                rss = int(process.memory_info().rss)
                name = process.name()
        except psutil.Error:
            return  # The process exited between listing and sampling.

        with self._lock:
            tracked = self._tracked.get(process.pid)
            if tracked is None:
                usage = ProcessUsage(role, process.pid, name, first_seen=now)
                tracked = _Tracked(usage, process, cpu, cpu, now)
                self._tracked[process.pid] = tracked
            usage = tracked.usage
            if now > tracked.last_time:
                percent = 100.0 * (cpu - tracked.last_cpu) / (now - tracked.last_time)
                usage.max_cpu_percent = max(usage.max_cpu_percent, percent)
            tracked.last_cpu = cpu
            tracked.last_time = now
            usage.cpu_seconds = cpu - tracked.start_cpu
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss)
            usage.last_seen = now
