"""The machine, library versions and frontend settings that a report states."""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from typing import Any

import httpx
import psutil

logger = logging.getLogger(__name__)

_PACKAGES = (
    "frontbench",
    "torch",
    "fastapi",
    "uvicorn",
    "streamlit",
    "dash",
    "gunicorn",
    "gradio",
    "locust",
    "httpx",
    "psutil",
)
# Environment variables with these prefixes configure the frontends and are
# recorded as they were when the experiment ran.
_FRONTEND_PREFIXES = ("FRONTBENCH_STREAMLIT_", "FRONTBENCH_DASH_", "FRONTBENCH_GRADIO_")


def cpu_count() -> int:
    """Return how many CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no sched_getaffinity.
        return max(1, os.cpu_count() or 1)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Return the CPU model, core counts, memory and operating system."""
    return {
        "cpu_model": _cpu_model(),
        "cpus_available": cpu_count(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    """Return the installed version of each library the experiment depends on."""
    found = {}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def frontend_env() -> dict[str, str]:
    """Return the frontend settings set in the environment, by variable name."""
    return {
        name: value
        for name, value in sorted(os.environ.items())
        if name.startswith(_FRONTEND_PREFIXES)
    }


def frontend_settings(setup: str, url: str) -> dict[str, Any]:
    """Return the settings of a running frontend, its concurrency included.

    The frontend's own `Settings` class, read from this environment, gives
    the values it was started with (the experiment passes it no other
    settings). Gradio's `/config` adds each event's concurrency limit.
    """
    settings = _settings_of(setup)
    if setup == "gradio":
        settings.update(_gradio_limits(url))
    return settings


def _settings_of(setup: str) -> dict[str, Any]:
    import importlib

    try:
        app = importlib.import_module(f"frontbench_{setup}.app")
        values: dict[str, Any] = app.Settings().model_dump(mode="json")
    except Exception as exc:  # The frontend's import or validation failed.
        logger.warning("could not read the %s frontend's settings: %s", setup, exc)
        return {}
    for name in ("backend_url", "host", "port"):
        values.pop(name, None)
    return values


def process_counts(pid: int) -> dict[str, int]:
    """Return the number of processes and threads in the tree of `pid`."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        return {
            "processes": len(tree),
            "threads": sum(process.num_threads() for process in tree),
        }
    except psutil.Error:
        return {}


def _gradio_limits(url: str) -> dict[str, Any]:
    try:
        config = httpx.get(url + "/config", timeout=10.0).json()
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("could not read Gradio's /config: %s", exc)
        return {}
    limits = {
        str(dependency.get("api_name") or dependency.get("id")): dependency.get(
            "concurrency_limit"
        )
        for dependency in config.get("dependencies", [])
        if dependency.get("api_name")
    }
    return {
        "gradio_concurrency_limit_per_event": limits,
        "gradio_default_concurrency_limit": config.get("default_concurrency_limit"),
        "gradio_max_threads": config.get("max_threads"),
    }
