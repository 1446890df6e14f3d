"""The `frontbench backend` and `frontbench train` commands.

`frontbench backend --workers N` runs uvicorn with N worker processes, and
each worker loads its own copy of the model. The checkpoint is trained here,
in the parent process, before any worker starts, so that N workers never
train at once.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from typing import Any

import torch
import uvicorn

from frontbench_backend.model import CheckpointError, load_checkpoint, resolve_device
from frontbench_backend.settings import (
    Settings,
    SettingsError,
    default_torch_threads,
    env_name,
    load_settings,
)
from frontbench_backend.training import ensure_checkpoint
from frontbench_backend.training import main as train_main

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main", "train_main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
APP_FACTORY = "frontbench_backend.app:create_app_from_env"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 worker, not {workers}")
    return workers


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of `frontbench backend`."""
    parser = argparse.ArgumentParser(
        prog="frontbench backend",
        description=(
            "Serve the digits model over HTTP with uvicorn. The model and its "
            "limits are set with FRONTBENCH_* environment variables, such as "
            "FRONTBENCH_MODEL_PATH, FRONTBENCH_DEVICE and FRONTBENCH_BATCHING."
        ),
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="TCP port (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes, each with its own model (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=_LOG_LEVELS,
        default=None,
        help="log level; overrides FRONTBENCH_LOG_LEVEL (default: info)",
    )
    return parser


def log_config(level: str) -> dict[str, Any]:
    """Return the logging configuration that uvicorn applies in every worker."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    project_logger = {
        "handlers": ["stderr"],
        "level": level.upper(),
        "propagate": False,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": _LOG_FORMAT}},
        "handlers": {"stderr": handler},
        "loggers": {
            "frontbench_backend": project_logger,
            "frontbench_shared": project_logger,
            "uvicorn": project_logger,
            # The app writes its own access log line, with the request id.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def _export_for_workers(settings: Settings, *, log_level: str | None) -> None:
    # Workers are new processes that read their settings from the
    # environment, so the values decided here are passed on that way.
    if log_level is not None:
        os.environ[env_name("log_level")] = log_level
    if env_name("torch_threads") not in os.environ:
        os.environ[env_name("torch_threads")] = str(settings.torch_threads)


def main(argv: list[str]) -> int:
    """Run `frontbench backend` and return its exit status."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if env_name("torch_threads") not in os.environ:
        overrides["torch_threads"] = default_torch_threads(args.workers)
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"frontbench backend: {exc}", file=sys.stderr)
        return 2

    logging.config.dictConfig(log_config(settings.log_level))
    _export_for_workers(settings, log_level=args.log_level)

    try:
        metadata = ensure_checkpoint(settings.model_path)
        # Loading once here, on the CPU, stops the start with a clear message
        # when the checkpoint's weights no longer fit the network, instead of
        # leaving every worker not ready.
        load_checkpoint(settings.model_path, torch.device("cpu"))
    except (CheckpointError, OSError) as exc:
        print(
            f"frontbench backend: invalid {env_name('model_path')}: {exc}",
            file=sys.stderr,
        )
        return 2

    logger.info(
        "backend starting on http://%s:%d: workers=%d model=%s %s (%s) "
        "device=%s torch_threads=%d batching=%s max_batch_size=%d "
        "max_batch_wait_ms=%.1f max_upload_bytes=%d max_image_pixels=%d",
        args.host,
        args.port,
        args.workers,
        metadata.name,
        metadata.version,
        settings.model_path,
        resolve_device(settings.device),
        settings.torch_threads,
        settings.batching,
        settings.max_batch_size,
        settings.max_batch_wait_ms,
        settings.max_upload_bytes,
        settings.max_image_pixels,
    )

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    # After SIGTERM or Ctrl+C, uvicorn re-raises the signal once it has shut
    # down, so the process ends there. Each worker logs its own stop instead.
    return 0
