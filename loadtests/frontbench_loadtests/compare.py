"""Measure what the framework comparison reports beside the scaling experiment.

For each frontend this starts its real server against one backend and, in a
real headless Chromium, measures:

- the cold start: from starting the server process to the first rendered
  page, the median of several starts;
- the memory per session: how much the resident memory of the server's
  process tree grows when several browser sessions each open the page and get
  one prediction, divided by the number of sessions;
- the installed size of the frontend's dependencies: the files of every
  distribution in the closure of its extra.

Run it with `nox -s compare`, or directly::

    python -m frontbench_loadtests.compare --out docs/benchmarks/comparison.json

It needs the `test` extra for Playwright and Debian's Chromium (or the browser
at `CHROMIUM_PATH`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from frontbench_loadtests import environment_info
from frontbench_shared.examples import list_examples
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

logger = logging.getLogger(__name__)

FRAMEWORKS = ("streamlit", "dash", "gradio")
HOST = "127.0.0.1"
HEADING = "Handwritten digit recognition"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DEFAULT_STARTS = 3
DEFAULT_SESSIONS = 8
# Long enough for a cold start on a loaded 2-core machine.
PAGE_TIMEOUT_MS = 120_000
_FILE_INPUT = {
    "streamlit": "input[type=file]",
    "dash": "#upload input[type=file]",
    "gradio": "#upload input[type=file]",
}


def dependency_closure(distribution: str, extras: Iterable[str] = ()) -> set[str]:
    """Return the names of every distribution that installing one pulls in.

    The walk follows the Requires-Dist metadata of the installed
    distributions, with markers evaluated for the requested extras, so it
    describes what `pip install 'distribution[extras]'` installed here. A
    requirement that is not installed is named but not walked further.
    """
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(canonicalize_name(distribution), frozenset(extras))]
    while pending:
        name, wanted_extras = pending.pop()
        if (name, wanted_extras) in seen:
            continue
        seen.add((name, wanted_extras))
        names.add(name)
        try:
            requirements = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue

        # "" evaluates the markers of the distribution's own requirements.
        environments = [{"extra": extra} for extra in ("", *wanted_extras)]
        for text in requirements:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                pending.append(
                    (canonicalize_name(requirement.name), frozenset(requirement.extras))
                )
    return names


def installed_bytes(names: Iterable[str]) -> int:
    """Return the size in bytes of the installed files of these distributions."""
    total = 0
    for name in names:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        for file in files:
            path = Path(str(file.locate()))
            if path.is_file():
                total += path.stat().st_size
    return total


def tree_rss_bytes(pid: int) -> int:
    """Return the resident memory of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _frontend_process(framework: str, backend_url: str) -> tuple[ManagedProcess, str]:
    port = free_port(HOST)
    process = ManagedProcess(
        f"{framework}-{port}",
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
    return process, f"http://{HOST}:{port}"


def _open_page(browser: Any, url: str) -> Any:
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    # The server may not listen yet: retry the navigation until it does.
    while True:
        try:
            page.goto(url)
            break
        except Exception as exc:  # Playwright raises its own Error type.
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load: {exc}") from exc
            time.sleep(0.1)
    page.get_by_role("heading", name=HEADING).first.wait_for()
    return page


def measure_cold_start(browser: Any, framework: str, backend_url: str) -> float:
    """Return the seconds from starting a frontend to its first rendered page."""
    process, url = _frontend_process(framework, backend_url)
    ready_path = importlib.import_module(f"frontbench_{framework}.cli").READY_PATH
    started = time.monotonic()
    with process:
        # A page opened before the server responds can stay broken, because Dash's
        # page does not fetch its layout again after a failed first try.
        process.wait_ready(url + ready_path, timeout=PAGE_TIMEOUT_MS / 1000)
        page = _open_page(browser, url)
        elapsed = time.monotonic() - started
        page.context.close()
    return elapsed


def measure_sessions(
    browser: Any, framework: str, backend_url: str, sessions: int
) -> dict[str, float]:
    """Return the idle memory of a frontend and its growth per browser session."""
    example = list_examples()[0]
    process, url = _frontend_process(framework, backend_url)
    with process:
        first = _open_page(browser, url)
        first.context.close()
        time.sleep(2)
        idle = tree_rss_bytes(process.pid)
        pages = []
        for _ in range(sessions):
            page = _open_page(browser, url)
            page.locator(_FILE_INPUT[framework]).first.set_input_files(
                str(example.path)
            )
            page.get_by_text(f"Predicted digit: {example.label}").first.wait_for()
            pages.append(page)
        time.sleep(2)
        loaded = tree_rss_bytes(process.pid)
        for page in pages:
            page.context.close()
    return {
        "idle_rss_mb": idle / 2**20,
        "rss_per_session_mb": max(0, loaded - idle) / sessions / 2**20,
    }


@contextmanager
def _chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError as exc:
        raise SystemExit(
            "frontbench compare needs Playwright: pip install 'frontbench[test]'"
        ) from exc
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not Path(path).exists():
        raise SystemExit(
            f"Chromium not found at {path}; install Debian's chromium or set "
            "CHROMIUM_PATH to a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def measure(frameworks: Iterable[str], *, starts: int, sessions: int) -> dict[str, Any]:
    """Measure every framework against one backend and return the record."""
    port = free_port(HOST)
    backend_url = f"http://{HOST}:{port}"
    backend = ManagedProcess(
        "backend",
        python_argv(
            "-m",
            "frontbench_shared.cli",
            "backend",
            "--host",
            HOST,
            "--port",
            str(port),
        ),
    )
    results: dict[str, Any] = {}
    with backend, _chromium() as browser:
        backend.wait_ready(f"{backend_url}/readyz")
        for framework in frameworks:
            closure = dependency_closure("frontbench", [framework])
            record: dict[str, Any] = {
                "installed_mb": installed_bytes(closure) / 2**20,
                "distributions": len(closure),
            }
            times = []
            for attempt in range(1, starts + 1):
                print(f"{framework}: cold start {attempt}/{starts}", file=sys.stderr)
                times.append(measure_cold_start(browser, framework, backend_url))
            record["cold_start_s"] = statistics.median(times)
            record["cold_start_runs_s"] = times
            print(f"{framework}: {sessions} browser sessions", file=sys.stderr)
            record.update(measure_sessions(browser, framework, backend_url, sessions))
            record["sessions"] = sessions
            results[framework] = record
            logger.info("measured %s: %s", framework, record)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": environment_info.machine(),
        "versions": environment_info.versions(),
        "command": "python -m frontbench_loadtests.compare",
        "frameworks": results,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the comparison measurements and write them as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m frontbench_loadtests.compare",
        description="Measure cold start, memory per session and installed size.",
    )
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated frontends to measure (default: all three)",
    )
    parser.add_argument(
        "--starts", type=int, default=DEFAULT_STARTS, help="cold starts per frontend"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=DEFAULT_SESSIONS,
        help="browser sessions opened to measure memory per session",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks/comparison.json"),
        help="where to write the JSON record",
    )
    args = parser.parse_args(argv)
    frameworks = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    unknown = sorted(set(frameworks) - set(FRAMEWORKS))
    if unknown:
        known = ", ".join(FRAMEWORKS)
        parser.error(f"unknown framework {', '.join(unknown)}; choose from {known}")
    if args.starts < 1 or args.sessions < 1:
        parser.error("--starts and --sessions must be at least 1")

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    record = measure(frameworks, starts=args.starts, sessions=args.sessions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
