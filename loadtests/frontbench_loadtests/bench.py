"""The backend scaling experiment: every setup against 1, 2, 4... backend replicas.

For each setup, the frontend is started once and never scaled. For each
replica count, the backend is started with that many uvicorn workers behind
one port, Locust runs headless in its own process for the warm-up plus the
measured duration, and the CPU and memory of every process are sampled.
Everything binds 127.0.0.1 and is stopped before the next run starts.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from frontbench_loadtests import environment_info
from frontbench_loadtests.common import (
    IMAGE_ENV,
    PHASE_FILE_ENV,
    WARMUP_ENV,
    ImageKind,
    load_images,
)
from frontbench_loadtests.monitor import ProcessMonitor, ProcessUsage
from frontbench_shared.api import MODEL_PATH, READY_PATH
from frontbench_shared.processes import (
    ManagedProcess,
    ProcessFailed,
    free_port,
    python_argv,
)

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PACKAGE_DIR = Path(__file__).parent
SETUPS: dict[str, str] = {
    "direct": "direct.py",
    "streamlit": "streamlit_user.py",
    "dash": "dash_user.py",
    "gradio": "gradio_user.py",
}
# Used when a frontend's cli module defines no READY_PATH.
_DEFAULT_READY_PATHS = {"streamlit": "/_stcore/health", "dash": "/", "gradio": "/"}
_PROGRESS_INTERVAL = 1.0
# Locust needs a few seconds past its run time to stop users and write CSVs,
# and more than that to import the users on a busy machine.
_LOCUST_EXIT_GRACE = 30.0
_LOCUST_START_TIMEOUT = 120.0
# Each uvicorn worker imports torch and loads the model. On a busy 2-CPU
# machine, 4 workers once took longer than 120 s to answer.
_BACKEND_READY_TIMEOUT = 300.0


@dataclass(frozen=True)
class BenchConfig:
    """The settings of one experiment."""

    setups: tuple[str, ...] = tuple(SETUPS)
    replicas: tuple[int, ...] = (1, 2, 4)
    users: int = 8
    spawn_rate: float = 8.0
    duration: float = 30.0
    warmup: float = 5.0
    image: ImageKind = "small"
    out: Path = Path("bench-results")
    model_path: Path | None = None
    torch_threads: int | None = None

    def torch_threads_for(self, replicas: int) -> int:
        """Return the torch threads per worker, so workers share the CPUs."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, environment_info.cpu_count() // replicas)


@dataclass
class RunResult:
    """The measured figures of one setup at one replica count."""

    setup: str
    replicas: int
    users: int
    duration_s: float
    interactions: int = 0
    failures: int = 0
    throughput: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    failure_messages: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    machine_cpu_mean_percent: float = 0.0
    machine_cpu_max_percent: float = 0.0
    backend_info: dict[str, Any] = field(default_factory=dict)
    frontend_info: dict[str, Any] = field(default_factory=dict)
    torch_threads: int = 1
    locust_exit_status: int | None = None
    csv_prefix: str = ""
    error: str | None = None

    def role_cpu_percent(self, role: str) -> float:
        """Return the mean CPU % (of one core) of every process in `role`."""
        return sum(
            float(process["mean_cpu_percent"])
            for process in self.processes
            if process["role"] == role
        )

    def role_peak_rss_bytes(self, role: str) -> int:
        """Return the summed peak RSS of every process in `role`."""
        return sum(
            int(process["peak_rss_bytes"])
            for process in self.processes
            if process["role"] == role
        )


ProgressSink = Callable[[str], None]


def _print_progress(line: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line.ljust(100))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _ready_path(framework: str) -> str:
    try:
        cli = importlib.import_module(f"frontbench_{framework}.cli")
    except ModuleNotFoundError:
        return _DEFAULT_READY_PATHS[framework]
    return str(getattr(cli, "READY_PATH", _DEFAULT_READY_PATHS[framework]))


def start_backend(
    config: BenchConfig, port: int, replicas: int, log_dir: Path
) -> ManagedProcess:
    """Start `frontbench backend` with `replicas` workers and wait until it is ready."""
    env = {
        "FRONTBENCH_TORCH_THREADS": str(config.torch_threads_for(replicas)),
        "FRONTBENCH_LOG_LEVEL": "warning",
    }
    if config.model_path is not None:
        env["FRONTBENCH_MODEL_PATH"] = str(config.model_path)
    process = ManagedProcess(
        f"backend-x{replicas}",
        python_argv(
            "-m",
            "frontbench_shared.cli",
            "backend",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(replicas),
        ),
        env=env,
    )
    process.start()
    try:
        process.wait_ready(f"http://{HOST}:{port}{READY_PATH}", accept=_ready_or_failed)
    except (
        BaseException
    ):  # Also on Ctrl-C, so that the child never outlives this process.
        _save_output(process, log_dir / f"backend-x{replicas}.log")
        process.stop()
        raise
    return process


def _ready_or_failed(response: httpx.Response) -> bool:
    """Accept a ready backend; raise at once when the model failed to load."""
    if response.status_code == 200:
        return True
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = ""
    if "failed to load" in detail:
        raise ProcessFailed(f"the backend is not ready: {detail}")
    return False


def start_frontend(framework: str, backend_url: str) -> tuple[ManagedProcess, str]:
    """Start `frontbench frontend FRAMEWORK` on a free port; wait until it is ready."""
    port = free_port(HOST)
    process = ManagedProcess(
        framework,
        python_argv(
            "-m",
            "frontbench_shared.cli",
            "frontend",
            framework,
            "--host",
            HOST,
            "--port",
            str(port),
            "--backend-url",
            backend_url,
        ),
    )
    process.start()
    url = f"http://{HOST}:{port}"
    try:
        process.wait_ready(url + _ready_path(framework))
    except (
        BaseException
    ):  # Also on Ctrl-C, so that the child never outlives this process.
        process.stop()
        raise
    return process, url


def _save_output(process: ManagedProcess, path: Path) -> None:
    path.write_text(process.output(last=200) + "\n", encoding="utf-8")


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _number(value: str | None) -> float | None:
    if value in (None, "", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def failure_kind(error: str) -> str:
    """Return the exception class name at the start of a Locust error string."""
    head = error.split("(", 1)[0].strip()
    return head.rsplit(".", 1)[-1] or "unknown"


def read_locust_results(prefix: Path, result: RunResult) -> None:
    """Fill `result` from Locust's `PREFIX_stats.csv` and `PREFIX_failures.csv`."""
    rows = _read_csv_rows(Path(f"{prefix}_stats.csv"))
    total = next((row for row in rows if row.get("Name") == "Aggregated"), None)
    if total is not None:
        result.interactions = int(_number(total.get("Request Count")) or 0)
        result.failures = int(_number(total.get("Failure Count")) or 0)
        result.p50_ms = _number(total.get("50%"))
        result.p95_ms = _number(total.get("95%"))
        result.p99_ms = _number(total.get("99%"))
        result.mean_ms = _number(total.get("Average Response Time"))
        completed = result.interactions - result.failures
        result.throughput = completed / result.duration_s if result.duration_s else 0.0

    for row in _read_csv_rows(Path(f"{prefix}_failures.csv")):
        error = row.get("Error", "")
        count = int(_number(row.get("Occurrences")) or 0)
        kind = failure_kind(error)
        result.failures_by_kind[kind] = result.failures_by_kind.get(kind, 0) + count
        if len(result.failure_messages) < 5:
            result.failure_messages.append(f"{count} x {error}")


def _read_phase(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _live_figures(prefix: Path) -> tuple[float, int, int] | None:
    """Return the current interactions/s, total and failures from Locust's history."""
    path = Path(f"{prefix}_stats_history.csv")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    rows = list(csv.DictReader([lines[0], lines[-1]]))
    if not rows:
        return None
    row = rows[-1]
    return (
        _number(row.get("Requests/s")) or 0.0,
        int(_number(row.get("Total Request Count")) or 0),
        int(_number(row.get("Total Failure Count")) or 0),
    )


def run_locust(
    config: BenchConfig,
    setup: str,
    host: str,
    prefix: Path,
    monitor: ProcessMonitor,
    progress: ProgressSink,
    label: str,
) -> int | None:
    """Run Locust headless against `host` and return its exit status."""
    run_time = config.warmup + config.duration
    argv = python_argv(
        "-m",
        "locust",
        "--headless",
        "--only-summary",
        "-f",
        str(PACKAGE_DIR / SETUPS[setup]),
        "--host",
        host,
        "-u",
        str(config.users),
        "-r",
        str(config.spawn_rate),
        "-t",
        f"{run_time:.0f}s",
        "--csv",
        str(prefix),
        "--loglevel",
        "WARNING",
    )
    phase_file = Path(f"{prefix}_phase")
    phase_file.unlink(missing_ok=True)
    env = {
        WARMUP_ENV: str(config.warmup),
        IMAGE_ENV: config.image,
        PHASE_FILE_ENV: str(phase_file),
    }
    locust = ManagedProcess(f"locust-{setup}", argv, env=env).start()
    monitor.watch("locust", locust.pid)
    deadline = time.monotonic() + _LOCUST_START_TIMEOUT + run_time
    test_started: float | None = None
    phase = "starting Locust"
    try:
        while locust.returncode is None and time.monotonic() < deadline:
            time.sleep(_PROGRESS_INTERVAL)
            new_phase = _read_phase(phase_file) or phase
            if new_phase != phase and test_started is None:
                test_started = time.monotonic()
                deadline = test_started + run_time + _LOCUST_EXIT_GRACE
            if new_phase == "measuring" and phase != "measuring":
                monitor.reset()
            phase = new_phase
            elapsed = 0.0 if test_started is None else time.monotonic() - test_started
            figures = _live_figures(prefix)
            live = (
                f", {figures[0]:.1f} interactions/s, {figures[1]} done, "
                f"{figures[2]} failed"
                if figures and test_started is not None
                else ""
            )
            progress(
                f"{label}: {phase} {min(elapsed, run_time):.0f}/{run_time:.0f} s{live}"
            )
        if locust.returncode is None:
            logger.warning("locust did not finish in time; stopping it")
    finally:
        status = locust.stop()
        _save_output(locust, Path(f"{prefix}_locust.log"))
    return status


def _backend_info(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(url + MODEL_PATH, timeout=10.0)
        response.raise_for_status()
        info: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("could not read the backend's model info: %s", exc)
        return {}
    return {
        key: info[key]
        for key in ("name", "version", "device", "torch_threads", "batching")
        if key in info
    }


def _usage_dicts(usages: list[ProcessUsage]) -> list[dict[str, Any]]:
    rows = []
    for usage in usages:
        row = asdict(usage)
        row["mean_cpu_percent"] = round(usage.mean_cpu_percent(), 1)
        row["max_cpu_percent"] = round(usage.max_cpu_percent, 1)
        row.pop("first_seen")
        row.pop("last_seen")
        rows.append(row)
    return rows


def measure_run(
    config: BenchConfig,
    setup: str,
    replicas: int,
    backend: ManagedProcess,
    backend_url: str,
    frontend: ManagedProcess | None,
    host: str,
    progress: ProgressSink,
    label: str,
) -> RunResult:
    """Run Locust once against running servers and return the figures."""
    prefix = config.out / "locust" / f"{setup}-x{replicas}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    result = RunResult(
        setup=setup,
        replicas=replicas,
        users=config.users,
        duration_s=config.duration,
        torch_threads=config.torch_threads_for(replicas),
        csv_prefix=str(prefix.relative_to(config.out)),
    )
    result.backend_info = _backend_info(backend_url)
    if frontend is not None:
        result.frontend_info = environment_info.frontend_settings(setup, host)
        result.frontend_info["process_tree"] = environment_info.process_counts(
            frontend.pid
        )

    monitor = ProcessMonitor()
    monitor.watch("backend", backend.pid)
    if frontend is not None:
        monitor.watch("frontend", frontend.pid)
    monitor.start()
    try:
        result.locust_exit_status = run_locust(
            config, setup, host, prefix, monitor, progress, label
        )
    finally:
        usages = monitor.stop()
    result.processes = _usage_dicts(usages)
    result.machine_cpu_mean_percent = round(monitor.machine.mean_percent(), 1)
    result.machine_cpu_max_percent = round(monitor.machine.max_percent(), 1)
    read_locust_results(prefix, result)
    if result.interactions == 0:
        result.error = (
            "Locust recorded no interactions; see "
            f"{result.csv_prefix}_locust.log for its output"
        )
    return result


@contextmanager
def _stopping(process: ManagedProcess | None) -> Iterator[None]:
    try:
        yield
    finally:
        if process is not None:
            process.stop()


def run_setup(
    config: BenchConfig,
    setup: str,
    run_number: int,
    total_runs: int,
    progress: ProgressSink,
    results: list[RunResult],
) -> None:
    """Run every replica count for one setup, with one frontend for all of them.

    Each run's result is appended to `results` as soon as it is measured, so
    the runs before a failure are kept when a later one raises.
    """
    backend_port = free_port(HOST)
    backend_url = f"http://{HOST}:{backend_port}"
    log_dir = config.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    frontend: ManagedProcess | None = None
    host = backend_url
    try:
        for offset, replicas in enumerate(config.replicas):
            label = (
                f"run {run_number + offset}/{total_runs} {setup}, "
                f"{replicas} backend replica{'s' if replicas > 1 else ''}"
            )
            progress(f"{label}: starting the backend")
            backend = start_backend(config, backend_port, replicas, log_dir)
            with _stopping(backend):
                if setup != "direct" and frontend is None:
                    progress(f"{label}: starting the {setup} frontend")
                    frontend, host = start_frontend(setup, backend_url)
                result = measure_run(
                    config,
                    setup,
                    replicas,
                    backend,
                    backend_url,
                    frontend,
                    host,
                    progress,
                    label,
                )
                _save_output(backend, log_dir / f"{setup}-backend-x{replicas}.log")
            results.append(result)
            progress(
                f"{label}: {result.throughput:.1f} interactions/s, "
                f"p95 {_format_ms(result.p95_ms)}, {result.failures} failures"
            )
            if sys.stderr.isatty():
                sys.stderr.write("\n")
    finally:
        if frontend is not None:
            _save_output(frontend, log_dir / f"{setup}-frontend.log")
            frontend.stop()


def _format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def run_experiment(
    config: BenchConfig, progress: ProgressSink = _print_progress
) -> list[RunResult]:
    """Run every setup at every replica count and return the results in order."""
    config.out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "benchmark: setups %s, replicas %s, %d users, %.0f s + %.0f s warm-up, "
        "%s images, output in %s",
        ",".join(config.setups),
        ",".join(map(str, config.replicas)),
        config.users,
        config.duration,
        config.warmup,
        config.image,
        config.out,
    )
    progress(f"preparing the {config.image} images")
    load_images(config.image)
    total = len(config.setups) * len(config.replicas)
    results: list[RunResult] = []
    for index, setup in enumerate(config.setups):
        run_number = index * len(config.replicas) + 1
        try:
            run_setup(config, setup, run_number, total, progress, results)
        except Exception as exc:
            logger.error("the %s setup failed: %s", setup, exc)
            for replicas in config.replicas:
                if not any(
                    r.setup == setup and r.replicas == replicas for r in results
                ):
                    results.append(
                        RunResult(
                            setup=setup,
                            replicas=replicas,
                            users=config.users,
                            duration_s=config.duration,
                            error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                        )
                    )
    return results


def environment_record(config: BenchConfig) -> dict[str, Any]:
    """Return the machine, versions and settings that the report states."""
    return {
        "machine": environment_info.machine(),
        "versions": environment_info.versions(),
        "settings": {
            "setups": list(config.setups),
            "replicas": list(config.replicas),
            "users": config.users,
            "spawn_rate": config.spawn_rate,
            "duration_s": config.duration,
            "warmup_s": config.warmup,
            "image": config.image,
            "torch_threads_per_replica": {
                str(replicas): config.torch_threads_for(replicas)
                for replicas in config.replicas
            },
            "frontend_env": environment_info.frontend_env(),
            "wait_time": "none: each user sends its next interaction at once",
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["frontbench", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        "pid": os.getpid(),
    }


def parse_int_list(text: str) -> tuple[int, ...]:
    """Parse "1,2,4" into (1, 2, 4); every number must be at least 1."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(
                f"invalid replica count {part!r} in {text!r}; "
                "use whole numbers of at least 1, such as 1,2,4"
            )
        values.append(int(part))
    return tuple(values)


def parse_setups(text: str) -> tuple[str, ...]:
    """Parse "direct,dash" into a tuple of known setup names."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SETUPS]
    if unknown or not names:
        raise ValueError(
            f"unknown setup {', '.join(unknown) or repr(text)}; "
            f"use a comma-separated list of: {', '.join(SETUPS)}"
        )
    return names


def runs_with_problems(results: Sequence[RunResult]) -> list[RunResult]:
    """Return the runs that failed, had failures or completed nothing."""
    return [
        result
        for result in results
        if result.error or result.failures or result.throughput <= 0
    ]
