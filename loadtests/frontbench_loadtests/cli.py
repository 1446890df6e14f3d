"""The `frontbench bench` command: run the backend scaling experiment."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from frontbench_loadtests.bench import (
    SETUPS,
    BenchConfig,
    environment_record,
    parse_int_list,
    parse_setups,
    run_experiment,
    runs_with_problems,
)
from frontbench_loadtests.common import IMAGE_KINDS
from frontbench_loadtests.report import write_report

logger = logging.getLogger(__name__)


def _argument(parse: object) -> object:
    def convert(text: str) -> object:
        try:
            return parse(text)  # type: ignore[operator]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def _positive(kind: type[float] | type[int], name: str) -> object:
    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {name} {text!r}; use a positive number"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(
                f"invalid {name} {text!r}; use a number above 0"
            )
        return value

    return convert


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for the command's options."""
    parser = argparse.ArgumentParser(
        prog="frontbench bench",
        description=(
            "Measure each setup (the backend alone, or a frontend in front of it) "
            "with Locust while the backend runs 1, 2, 4... replicas. Writes "
            "Locust's CSV files, summary.csv/json, report.md and PNG plots."
        ),
    )
    parser.add_argument(
        "--setups",
        type=_argument(parse_setups),  # type: ignore[arg-type]
        default=tuple(SETUPS),
        help=f"comma-separated setups to run (default: {','.join(SETUPS)})",
    )
    parser.add_argument(
        "--replicas",
        type=_argument(parse_int_list),  # type: ignore[arg-type]
        default=(1, 2, 4),
        help="comma-separated backend worker counts (default: 1,2,4)",
    )
    parser.add_argument(
        "--users",
        type=_positive(int, "user count"),  # type: ignore[arg-type]
        default=8,
        help="concurrent Locust users (default: 8)",
    )
    parser.add_argument(
        "--spawn-rate",
        type=_positive(float, "spawn rate"),  # type: ignore[arg-type]
        default=8.0,
        help="users started per second (default: 8)",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float, "duration"),  # type: ignore[arg-type]
        default=30.0,
        help="measured seconds per run (default: 30)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds per run before measuring starts (default: 5)",
    )
    parser.add_argument(
        "--image",
        choices=IMAGE_KINDS,
        default="small",
        help="small: the 8x8 example PNGs; large: 12-megapixel JPEG photos of them",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: bench-results/<UTC date and time>)",
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="backend checkpoint (default: FRONTBENCH_MODEL_PATH, else the default)",
    )
    parser.add_argument(
        "--torch-threads",
        type=_positive(int, "torch thread count"),  # type: ignore[arg-type]
        default=None,
        help="torch threads per backend worker (default: CPUs divided by replicas)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run the experiment; exit 0 when every run succeeded, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.warmup < 0:
        print(
            f"frontbench bench: invalid --warmup {args.warmup}; use 0 or more seconds",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # One line per readiness poll would bury the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = args.out or Path("bench-results") / time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime()
    )
    config = BenchConfig(
        setups=args.setups,
        replicas=args.replicas,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.duration,
        warmup=args.warmup,
        image=args.image,
        out=out,
        model_path=args.model_path,
        torch_threads=args.torch_threads,
    )
    environment = environment_record(config)
    # SIGTERM ends the command like Ctrl-C, so that the servers are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_experiment(config)
    except KeyboardInterrupt:
        print(
            "\nfrontbench bench: interrupted; every server was stopped", file=sys.stderr
        )
        return 130
    report = write_report(results, environment, out)
    print(f"report: {report}")

    problems = runs_with_problems(results)
    for result in problems:
        reason = result.error or (
            f"{result.failures} failures" if result.failures else "no throughput"
        )
        print(
            f"frontbench bench: {result.setup} with {result.replicas} replicas: "
            f"{reason}",
            file=sys.stderr,
        )
    return 1 if problems else 0
