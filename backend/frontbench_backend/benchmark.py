"""Measure POST /v1/predict against two floors on the same machine.

Run it with `nox -s bench` or `python -m frontbench_backend.benchmark
[--duration S] [--out FILE]`. For a small PNG digit and a 12-megapixel JPEG
photo of a digit, it measures one backend worker with batching on and off
at each concurrency level, and two floors:

- the framework floor: a bare FastAPI endpoint in its own uvicorn process
  that reads the same upload and returns a fixed response of the same size;
- the model floor: decode, preprocess and predict in one process, one image
  at a time, without HTTP.

The load comes from a separate process (`benchmark load ...`) that runs an
asyncio httpx client on the loopback interface for a bounded time and
request count, printing its progress. The table is printed and written as
Markdown, with the machine and library versions, to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from frontbench_shared.api import (
    PREDICT_PATH,
    READY_PATH,
    Health,
    Prediction,
    Timings,
)
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_CONCURRENCY = (1, 8, 32)
DEFAULT_DURATION_S = 10.0
DEFAULT_MAX_REQUESTS = 100_000
DEFAULT_OUT = Path("docs/benchmarks/backend.md")
REQUEST_TIMEOUT_S = 300.0
PHOTO_SIZE = (4000, 3000)
# The digit drawn on the photo, as tall as most of the page.
PHOTO_DIGIT_SIZE = 2400
# Target ratios to the floors, printed beside the measured ratios.
FRAMEWORK_FLOOR_GOAL = 0.7
MODEL_FLOOR_GOAL = 0.8

_PACKAGES = ("torch", "fastapi", "starlette", "uvicorn", "pillow", "numpy", "httpx")


@dataclasses.dataclass(frozen=True)
class Load:
    """Results of one load run."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured setup: an input, a concurrency level and a server."""

    image: str
    concurrency: int
    server: str
    load: Load


# --- Inputs -------------------------------------------------------------


def small_png() -> tuple[bytes, str]:
    """Return an example digit PNG shipped with the package and its label."""
    from frontbench_shared.examples import list_examples

    example = list_examples()[3]
    return example.read_bytes(), example.label


def large_jpeg(seed: int = 0) -> tuple[bytes, str]:
    """Return a 4000x3000 JPEG photo of a held-out digit and its label.

    The digit is drawn large in dark ink on a noisy, unevenly lit sheet of
    paper, as a phone photo of a handwritten digit would look.
    """
    from frontbench_backend.data import LABELS, load_split, pick_examples, render_digit

    split = load_split()
    position = pick_examples(split)[7]
    label = LABELS[int(split.heldout_labels[position])]
    digit = np.asarray(
        render_digit(split.heldout_images[position], size=PHOTO_DIGIT_SIZE),
        dtype=np.float32,
    )

    width, height = PHOTO_SIZE
    rng = np.random.default_rng(seed)
    # Light falls off towards one corner, and the paper has grain.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 - 0.12 * (xs / width + ys / height) / 2
    paper = 236.0 * light + rng.normal(0.0, 5.0, (height, width)).astype(np.float32)

    top = (height - PHOTO_DIGIT_SIZE) // 2
    left = (width - PHOTO_DIGIT_SIZE) // 2
    window = paper[top : top + PHOTO_DIGIT_SIZE, left : left + PHOTO_DIGIT_SIZE]
    window *= digit / 255.0
    gray = np.clip(paper, 0, 255).astype(np.uint8)
    # A warm tint, as paper under indoor light.
    rgb = np.stack(
        [gray, (gray * 0.97).astype(np.uint8), (gray * 0.9).astype(np.uint8)], -1
    )

    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), label


# --- The load generator (runs in its own process) -------------------------


async def _generate_load(
    url: str, data: bytes, *, concurrency: int, duration: float, max_requests: int
) -> Load:
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    issued = 0
    files = {"file": ("input", data, "application/octet-stream")}
    limits = httpx.Limits(max_connections=concurrency)

    # A 12-megapixel JPEG at concurrency 32 on two busy cores can take tens
    # of seconds, so the timeout is generous and a timeout counts as an error.
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout
    ) as client:
        # One round before the clock starts opens the connections. Its
        # failures show up again in the measured requests, so they are dropped.
        await asyncio.gather(
            *(client.post(PREDICT_PATH, files=files) for _ in range(concurrency)),
            return_exceptions=True,
        )
        started = time.perf_counter()
        deadline = started + duration

        async def user() -> None:
            nonlocal errors, issued
            while time.perf_counter() < deadline and issued < max_requests:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(PREDICT_PATH, files=files)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code != 200:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                batch_sizes.append(int(response.json().get("batch_size", 1)))

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                print(
                    f"  {time.perf_counter() - started:4.0f} s: {len(latencies)} ok, "
                    f"{errors} errors",
                    file=sys.stderr,
                    flush=True,
                )

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(user() for _ in range(concurrency)))
        reporter.cancel()
        seconds = time.perf_counter() - started

    return _summarise(latencies, batch_sizes, errors, seconds)


def _summarise(
    latencies: list[float], batch_sizes: list[int], errors: int, seconds: float
) -> Load:
    if not latencies:
        return Load(0, errors, seconds, float("nan"), float("nan"), float("nan"))
    ordered = np.sort(np.asarray(latencies))
    return Load(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=float(np.percentile(ordered, 50)),
        p99_ms=float(np.percentile(ordered, 99)),
        mean_batch_size=statistics.fmean(batch_sizes),
    )


def _load_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="frontbench_backend.benchmark load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    args = parser.parse_args(argv)
    load = asyncio.run(
        _generate_load(
            args.url,
            args.file.read_bytes(),
            concurrency=args.concurrency,
            duration=args.duration,
            max_requests=args.max_requests,
        )
    )
    print(json.dumps(dataclasses.asdict(load)))
    return 0


def run_load(
    url: str, path: Path, *, concurrency: int, duration: float, max_requests: int
) -> Load:
    """Run the load generator in a separate process and return what it measured."""
    completed = subprocess.run(
        python_argv(
            "-m", "frontbench_backend.benchmark", "load",
            "--url", url, "--file", str(path),
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--max-requests", str(max_requests),
        ),
        stdout=subprocess.PIPE,
        text=True,
        timeout=duration + 2 * REQUEST_TIMEOUT_S,
        check=True,
    )  # fmt: skip
    return Load(**json.loads(completed.stdout.strip().splitlines()[-1]))


# --- The floors -----------------------------------------------------------


def _fixed_prediction() -> Prediction:
    labels = [str(digit) for digit in range(10)]
    return Prediction(
        label="3",
        confidence=0.9,
        probabilities={label: 0.9 if label == "3" else 0.1 / 9 for label in labels},
        model_name="digits-cnn",
        model_version="1.0.0",
        batch_size=1,
        timings=Timings(
            decode_ms=0.1,
            preprocess_ms=0.1,
            queue_ms=0.1,
            inference_ms=0.1,
            total_ms=0.5,
        ),
        request_id="0" * 32,
    )


def create_floor_app() -> FastAPI:
    """Build the framework floor: read the upload, return a fixed Prediction."""
    app = FastAPI()
    fixed = _fixed_prediction()

    @app.post(PREDICT_PATH, response_model=Prediction)
    async def predict(file: UploadFile = File(...)) -> Prediction:  # noqa: B008
        await file.read()
        return fixed

    @app.get(READY_PATH, response_model=Health)
    async def ready() -> Health:
        return Health(status="ready")

    return app


def model_floor(data: bytes, model_path: Path, *, duration: float) -> Load:
    """Decode, preprocess and predict one image at a time for `duration` seconds."""
    import torch

    from frontbench_backend.model import load_checkpoint
    from frontbench_backend.preprocess import decode_image, to_model_input
    from frontbench_backend.settings import (
        DEFAULT_MAX_IMAGE_PIXELS,
        default_torch_threads,
    )

    torch.set_num_threads(default_torch_threads(1))
    model = load_checkpoint(model_path, torch.device("cpu"))
    size = model.metadata.input_size

    def once() -> None:
        image = decode_image(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
        model.predict_proba(to_model_input(image, size)[np.newaxis])

    once()
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        sent = time.perf_counter()
        once()
        latencies.append((time.perf_counter() - sent) * 1000)
    return _summarise(latencies, [1] * len(latencies), 0, time.perf_counter() - started)


# --- Running the servers --------------------------------------------------


def _start(
    name: str, argv: list[str], env: dict[str, str]
) -> tuple[ManagedProcess, str]:
    port = free_port(HOST)
    process = ManagedProcess(
        name, [*argv, "--host", HOST, "--port", str(port)], env=env
    )
    process.start()
    url = f"http://{HOST}:{port}"
    process.wait_ready(url + READY_PATH)
    return process, url


def _measure_server(
    name: str,
    argv: list[str],
    env: dict[str, str],
    inputs: dict[str, Path],
    args: argparse.Namespace,
) -> list[Row]:
    rows = []
    process, url = _start(name, argv, env)
    try:
        for image, path in inputs.items():
            for concurrency in args.concurrency:
                print(
                    f"{name}: {image}, concurrency {concurrency}",
                    file=sys.stderr,
                    flush=True,
                )
                load = run_load(
                    url,
                    path,
                    concurrency=concurrency,
                    duration=args.duration,
                    max_requests=args.max_requests,
                )
                rows.append(Row(image, concurrency, name, load))
    finally:
        process.stop()
    return rows


def _machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    memory = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            cpu = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in file
                    if line.startswith("model name")
                ),
                cpu,
            )
        with open("/proc/meminfo", encoding="utf-8") as file:
            kib = int(
                next(line for line in file if line.startswith("MemTotal")).split()[1]
            )
            memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass

    from frontbench_backend.settings import available_cpus

    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{available_cpus()} available of {os.cpu_count()}",
        "memory": memory,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": ", ".join(versions),
    }


# --- The report -----------------------------------------------------------


def _noise_warning(machine: dict[str, str]) -> list[str]:
    load_average = float(machine["load average at start"].split()[0])
    cpus = int(machine["cores"].split()[0])
    if load_average <= cpus:
        return []
    return [
        f"The load average at the start ({load_average:.1f}) was above the number "
        f"of CPUs ({cpus}), so other work shared the machine and these figures "
        "are noisy.",
        "",
    ]


def _ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}" if floor > 0 else "n/a"


def render_markdown(
    rows: list[Row],
    model_floors: dict[str, Load],
    machine: dict[str, str],
    *,
    duration: float,
) -> str:
    """Return the report: the machine, the results table and the floors."""
    floors = {
        (row.image, row.concurrency): row.load
        for row in rows
        if row.server == "framework floor"
    }
    lines = [
        "# Backend benchmark",
        "",
        "Written by `python -m frontbench_backend.benchmark` (`nox -s bench`). "
        f"Each cell ran for {duration:g} s after one warm-up round, with the load "
        "generator in a separate process on the same machine, so the two compete "
        "for the same CPUs.",
        "",
        "The framework floor is a bare FastAPI endpoint in its own uvicorn process "
        "that reads the same upload and returns a fixed Prediction of the same "
        "size. The model floor decodes, preprocesses and predicts one image at a "
        "time in one process, without HTTP. Each ratio divides the backend's "
        "requests per second by the floor's.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
        *_noise_warning(machine),
        "## POST /v1/predict, one worker",
        "",
        f"Goals: at least {FRAMEWORK_FLOOR_GOAL} of the framework floor for the "
        f"small PNG, and at least {MODEL_FLOOR_GOAL} of the model floor for the "
        "large JPEG.",
        "",
        "| input | concurrency | server | req/s | p50 ms | p99 ms | errors "
        "| mean batch | / framework floor | / model floor |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        load = row.load
        framework = floors.get((row.image, row.concurrency))
        versus_framework = (
            _ratio(load.throughput, framework.throughput) if framework else "n/a"
        )
        versus_model = _ratio(load.throughput, model_floors[row.image].throughput)
        lines.append(
            f"| {row.image} | {row.concurrency} | {row.server} "
            f"| {load.throughput:.1f} | {load.p50_ms:.1f} | {load.p99_ms:.1f} "
            f"| {load.errors} | {load.mean_batch_size:.2f} "
            f"| {versus_framework} | {versus_model} |"
        )
    lines += [
        "",
        "## Model floor: decode, preprocess and predict in one process, no HTTP",
        "",
        "| input | images/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *(
            f"| {image} | {load.throughput:.1f} | {load.p50_ms:.1f} "
            f"| {load.p99_ms:.1f} |"
            for image, load in model_floors.items()
        ),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the benchmark command."""
    parser = argparse.ArgumentParser(
        prog="python -m frontbench_backend.benchmark",
        description="Measure POST /v1/predict against the framework and model floors.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help="seconds of load per cell (default: %(default)s)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help="maximum requests per cell (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(DEFAULT_CONCURRENCY),
        help="comma-separated concurrency levels (default: 1,8,32)",
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="checkpoint to serve; trained if missing (default: FRONTBENCH_MODEL_PATH)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="Markdown file to write (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, or with `load ...` as arguments, the load generator."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["load"]:
        return _load_main(args_list[1:])

    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    # One INFO line per readiness poll would bury the progress output.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from frontbench_backend.settings import load_settings
    from frontbench_backend.training import ensure_checkpoint

    model_path = args.model_path or load_settings().model_path
    ensure_checkpoint(model_path)
    machine = _machine()

    with tempfile.TemporaryDirectory(prefix="frontbench-bench-") as work:
        inputs: dict[str, Path] = {}
        for name, (data, label) in {
            "small PNG": small_png(),
            "12 MP JPEG": large_jpeg(),
        }.items():
            path = Path(work) / name.replace(" ", "-")
            path.write_bytes(data)
            inputs[name] = path
            logger.info("input %s: %d bytes, label %s", name, len(data), label)
        rows, model_floors = _measure_all(inputs, model_path, args)

    report = render_markdown(rows, model_floors, machine, duration=args.duration)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


def _measure_all(
    inputs: dict[str, Path], model_path: Path, args: argparse.Namespace
) -> tuple[list[Row], dict[str, Load]]:
    model_floors = {}
    for name, path in inputs.items():
        print(f"model floor: {name}", file=sys.stderr, flush=True)
        model_floors[name] = model_floor(
            path.read_bytes(), model_path, duration=args.duration
        )

    env = {"FRONTBENCH_MODEL_PATH": str(model_path)}
    rows = _measure_server(
        "framework floor",
        python_argv(
            "-m", "uvicorn", "frontbench_backend.benchmark:create_floor_app",
            "--factory", "--no-access-log", "--log-level", "warning",
        ),
        env,
        inputs,
        args,
    )  # fmt: skip
    for batching in ("on", "off"):
        rows += _measure_server(
            f"backend, batching {batching}",
            python_argv("-m", "frontbench_backend"),
            {**env, "FRONTBENCH_BATCHING": "true" if batching == "on" else "false"},
            inputs,
            args,
        )

    return rows, model_floors


if __name__ == "__main__":
    sys.exit(main())
