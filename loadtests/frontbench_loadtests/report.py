"""Write an experiment's summary CSV and JSON, Markdown report and PNG plots."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from frontbench_loadtests.bench import RunResult

logger = logging.getLogger(__name__)

ROLES = ("backend", "frontend", "locust")
_ROLE_NAMES = {
    "backend": "the backend",
    "frontend": "the frontend",
    "locust": "the load generator (Locust)",
}
# A Python process whose mean CPU is above this share of one core is taken
# as CPU-bound: its GIL lets one thread run at a time, so it cannot go faster.
SATURATED_CORE_PERCENT = 85.0
# The machine counts as CPU-bound above this share of all its cores.
SATURATED_MACHINE_PERCENT = 90.0

_SUMMARY_FIELDS = [
    "setup",
    "replicas",
    "users",
    "duration_s",
    "interactions",
    "failures",
    "throughput",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "backend_cpu_percent",
    "frontend_cpu_percent",
    "locust_cpu_percent",
    "backend_peak_rss_mb",
    "frontend_peak_rss_mb",
    "locust_peak_rss_mb",
    "machine_cpu_mean_percent",
    "torch_threads",
    "failures_by_kind",
    "error",
]


def summary_row(result: RunResult) -> dict[str, Any]:
    """Return the flat summary of one run, as written to summary.csv."""
    row: dict[str, Any] = {
        key: getattr(result, key) for key in _SUMMARY_FIELDS if hasattr(result, key)
    }
    for role in ROLES:
        row[f"{role}_cpu_percent"] = round(result.role_cpu_percent(role), 1)
        row[f"{role}_peak_rss_mb"] = round(result.role_peak_rss_bytes(role) / 2**20, 1)
    row["throughput"] = round(result.throughput, 2)
    row["failures_by_kind"] = json.dumps(result.failures_by_kind, sort_keys=True)
    return row


def diagnose(result: RunResult, cores: int) -> tuple[str, list[str]]:
    """Return where the run's bottleneck is and the warnings it deserves.

    The bottleneck is read from the CPU figures: a process near a full core,
    or the whole machine near all of its cores, limits the throughput. When
    neither is the case, the limit is waiting, for example a queue with a
    concurrency limit.
    """
    warnings = []
    if result.error:
        return "none measured (the run failed)", [f"the run failed: {result.error}"]
    if result.failures:
        warnings.append(
            f"{result.failures} of {result.interactions} interactions failed: "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.failures_by_kind.items()))
        )

    busiest: dict[str, float] = {}
    for process in result.processes:
        role = process["role"]
        busiest[role] = max(busiest.get(role, 0.0), process["mean_cpu_percent"])
    if busiest.get("locust", 0.0) >= SATURATED_CORE_PERCENT:
        warnings.append(
            f"the load generator was saturated ({busiest['locust']:.0f} % of a "
            "core): the setup may be faster than measured"
        )

    machine_share = result.machine_cpu_mean_percent
    saturated = [
        role for role in ROLES if busiest.get(role, 0.0) >= SATURATED_CORE_PERCENT
    ]
    role_cpu = {role: result.role_cpu_percent(role) for role in ROLES}
    top_role = max(role_cpu, key=lambda role: role_cpu[role])
    if machine_share >= SATURATED_MACHINE_PERCENT:
        bottleneck = (
            f"the machine's CPU ({machine_share:.0f} % of {cores} cores); "
            f"{_ROLE_NAMES[top_role]} uses the most "
            f"({role_cpu[top_role]:.0f} % of a core)"
        )
    elif saturated:
        bottleneck = ", ".join(
            f"{_ROLE_NAMES[role]} ({busiest[role]:.0f} % of one core in one process)"
            for role in saturated
        )
    else:
        bottleneck = (
            "waiting, not CPU, because no process is CPU-bound (a queue, a "
            "concurrency limit or too few users)"
        )
    return bottleneck, warnings


def write_summary(
    results: Sequence[RunResult], environment: dict[str, Any], out: Path
) -> None:
    """Write summary.csv and summary.json with every run's figures."""
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=_SUMMARY_FIELDS)
        writer.writeheader()
        for result in results:
            writer.writerow(summary_row(result))
    document = {"environment": environment, "runs": [asdict(r) for r in results]}
    (out / "summary.json").write_text(
        json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def write_plots(results: Sequence[RunResult], out: Path) -> list[Path]:
    """Draw throughput, p95 latency and CPU per process as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = list(dict.fromkeys(result.setup for result in results))
    paths = []
    for metric, ylabel, filename in (
        ("throughput", "interactions per second", "throughput.png"),
        ("p95_ms", "p95 latency of an interaction (ms)", "p95_latency.png"),
    ):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for setup in setups:
            points = [
                (r.replicas, getattr(r, metric))
                for r in results
                if r.setup == setup and getattr(r, metric) is not None and not r.error
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                axes.plot(xs, ys, marker="o", label=setup)
        axes.set_xlabel("backend replicas (uvicorn workers)")
        axes.set_ylabel(ylabel)
        axes.set_xticks(sorted({r.replicas for r in results}))
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out / filename
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)

    figure, axes = plt.subplots(figsize=(max(7, len(results) * 0.8), 4.5))
    labels = [f"{r.setup}\nx{r.replicas}" for r in results]
    bottom = [0.0] * len(results)
    for role in ROLES:
        values = [r.role_cpu_percent(role) for r in results]
        axes.bar(labels, values, bottom=bottom, label=role)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("mean CPU (% of one core)")
    axes.set_title("CPU by process per run")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out / "cpu_by_process.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    paths.append(path)
    return paths


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _shared_machine_warning(machine: dict[str, Any], cores: int) -> list[str]:
    load = machine["load_average_at_start"][0]
    if load < cores:
        return []
    return [
        f"**Warning: the machine was busy before the experiment started** (load "
        f"average {load:.1f} on {cores} CPUs): other work competed for the CPUs, "
        "so the figures are lower and noisier than on an idle machine, and the "
        "machine CPU figures include that work.",
        "",
    ]


# Established with strace and a TCP_QUICKACK client (see docs/loadtesting.md),
# so the report can state where the Streamlit latency is spent.
STREAMLIT_LATENCY_NOTE = (
    "Streamlit latency: each rerun includes a delay of about 40-50 ms inside "
    "the Streamlit server, before the script runs. It is not a delayed-ACK "
    "stall: the server sets TCP_NODELAY on every socket, the Locust user sets "
    "it on its own socket as browsers do, and TCP_QUICKACK on the client did "
    "not remove it. A browser waits for it too, so the latency above includes "
    "it, as a browser would see it."
)


def render_markdown(results: Sequence[RunResult], environment: dict[str, Any]) -> str:
    """Return the Markdown report of an experiment."""
    machine = environment["machine"]
    settings = environment["settings"]
    cores = int(machine.get("cpus_available") or 1)
    lines = [
        "# Backend scaling experiment",
        "",
        f"Command: `{environment['command']}`, started {environment['started_at']}.",
        "",
        f"Machine: {machine['cpu_model']}, {cores} CPUs available "
        f"({machine['logical_cores']} logical cores), "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB memory, {machine['platform']}. "
        f"Load average at start: {machine['load_average_at_start']}.",
        "",
        *_shared_machine_warning(machine, cores),
        f"Load: {settings['users']} Locust users (spawn rate "
        f"{settings['spawn_rate']}/s), no think time, {settings['image']} images, "
        f"{settings['warmup_s']:.0f} s warm-up then {settings['duration_s']:.0f} s "
        "measured per run. Throughput counts interactions that returned the "
        "expected label; latency is of the whole interaction (every request it "
        "needs, streams read to the end).",
        "",
        "## Results",
        "",
        "| setup | replicas | interactions/s | p50 ms | p95 ms | p99 ms | failures "
        "| backend CPU % | frontend CPU % | Locust CPU % | machine CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.replicas} | {r.throughput:.1f} | {_ms(r.p50_ms)} "
            f"| {_ms(r.p95_ms)} | {_ms(r.p99_ms)} | {r.failures} "
            f"| {r.role_cpu_percent('backend'):.0f} "
            f"| {r.role_cpu_percent('frontend'):.0f} "
            f"| {r.role_cpu_percent('locust'):.0f} "
            f"| {r.machine_cpu_mean_percent:.0f} |"
        )
    lines += [
        "",
        "CPU figures are means over the measured part of the run, in percent of "
        "one core, summed over every process of that role (a backend with 4 "
        "replicas has a parent and 4 workers). Machine CPU is in percent of all "
        "cores.",
        "",
        "![throughput](throughput.png)",
        "",
        "![p95 latency](p95_latency.png)",
        "",
        "![CPU by process](cpu_by_process.png)",
        "",
        "## Bottlenecks and warnings",
        "",
    ]
    for r in results:
        bottleneck, warnings = diagnose(r, cores)
        lines.append(
            f"- **{r.setup}, {_replicas(r.replicas)}**: limited by {bottleneck}."
        )
        lines.extend(f"  - Warning: {warning}" for warning in warnings)
        lines.extend(f"  - Failure: `{message}`" for message in r.failure_messages)
    if any(r.setup == "streamlit" for r in results):
        lines += ["", STREAMLIT_LATENCY_NOTE]
    lines += ["", "## Settings", ""]
    lines.append(
        "Torch threads per backend worker: "
        + ", ".join(
            f"{threads} with {_replicas(int(replicas))}"
            for replicas, threads in settings["torch_threads_per_replica"].items()
        )
        + "."
    )
    seen: set[str] = set()
    for r in results:
        if r.backend_info and "backend" not in seen:
            seen.add("backend")
            lines.append(f"- backend: `{json.dumps(r.backend_info, sort_keys=True)}`")
        if r.frontend_info and r.setup not in seen:
            seen.add(r.setup)
            lines.append(
                f"- {r.setup}: `{json.dumps(r.frontend_info, sort_keys=True)}`"
            )
    if settings.get("frontend_env"):
        lines.append(f"- frontend environment: `{settings['frontend_env']}`")
    lines += ["", "## Versions", ""]
    lines += [
        f"- {name} {version}" for name, version in environment["versions"].items()
    ]
    lines.append("")
    return "\n".join(lines)


def write_report(
    results: Sequence[RunResult], environment: dict[str, Any], out: Path
) -> Path:
    """Write the summary files, the plots and report.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_summary(results, environment, out)
    write_plots(results, out)
    path = out / "report.md"
    path.write_text(render_markdown(results, environment), encoding="utf-8")
    logger.info("wrote the report to %s", path)
    return path
