"""`frontbench frontend dash`: serve the Dash app with gunicorn in the foreground.

gunicorn's arbiter runs in this process and forks the worker processes. It
stops them all on SIGTERM (gracefully) or SIGINT (at once) and then exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import logging.config
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from gunicorn.app.base import BaseApplication
from pydantic import ValidationError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8050
# The Dash index page, which returns 200 once a worker serves requests.
READY_PATH = "/"

_ENV_PREFIX = "FRONTBENCH_DASH_"
_BACKEND_URL_ENV = "BACKEND_URL"
# The module name of an app loaded with --app, so Dash finds its assets folder.
_APP_MODULE = "frontbench_dash_app"


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of `frontbench frontend dash`."""
    parser = argparse.ArgumentParser(
        prog="frontbench frontend dash",
        description=(
            "Serve the Dash app with gunicorn (gthread workers). Each option "
            "overrides its environment variable; FRONTBENCH_DASH_WORKERS and "
            "FRONTBENCH_DASH_THREADS set the concurrency."
        ),
    )
    parser.add_argument(
        "--host",
        help="interface to listen on (FRONTBENCH_DASH_HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"TCP port to listen on (FRONTBENCH_DASH_PORT; default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--backend-url",
        help="base URL of the model backend (BACKEND_URL; default "
        "http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        metavar="PATH",
        help="Python file whose `server` to serve, such as an exercise (default: "
        "the reference app, frontbench_dash.app)",
    )
    return parser


def load_app_module(path: Path | None) -> ModuleType:
    """Import the reference app, or the Dash app in the file at `path`.

    Raises:
        FileNotFoundError: `path` is not a file.
        ValidationError: A setting in the environment is invalid.
    """
    if path is None:
        from frontbench_dash import app

        return app

    if not path.is_file():
        raise FileNotFoundError(f"--app {str(path)!r} is not a file")
    spec = importlib.util.spec_from_file_location(_APP_MODULE, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--app {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Dash(__name__) looks the module up in sys.modules to find its folder.
    sys.modules[_APP_MODULE] = module
    spec.loader.exec_module(module)
    return module


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """A gunicorn application configured from a dict instead of its CLI."""

    def __init__(self, options: dict[str, Any], load_app: Callable[[], Any]) -> None:
        self._options = options
        self._load_app = load_app
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return self._load_app()


def _configure_logging() -> None:
    # gunicorn attaches handlers to its own loggers and stops them from
    # propagating. The app's loggers propagate to this root handler, which the
    # forked workers inherit, and which writes gunicorn's line format.
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "gunicorn": {
                    "format": "%(asctime)s [%(process)d] [%(levelname)s] "
                    "%(name)s: %(message)s",
                    "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
                }
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "gunicorn",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"level": "INFO", "handlers": ["stderr"]},
            # httpx logs every request at INFO, which the backend logs too.
            "loggers": {"httpx": {"level": "WARNING"}},
        }
    )


def check_port_free(host: str, port: int) -> str | None:
    """Bind `host`:`port` once and return why it failed, or None if it is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return (
            f"cannot resolve host {host!r}: {exc.strerror}; set --host or "
            f"{_ENV_PREFIX}HOST"
        )
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # gunicorn sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return (
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another "
                f"port with --port or {_ENV_PREFIX}PORT"
            )
    return None


def register_resources(server: Any) -> None:
    """Render the index page once, so that every forked worker serves all bundles.

    Dash serves /_dash-component-suites/ files only from its registered
    paths, which it fills during the first request that a process handles
    (dash 4.4). Requests running in other threads at that time can find no
    path registered. Rendering the page here, in the gunicorn master before
    the workers fork, gives each worker the full list from the start.

    Raises:
        RuntimeError: The index page did not render.
    """
    response = server.test_client().get(READY_PATH)
    if response.status_code != 200:
        raise RuntimeError(
            f"the Dash index page returned {response.status_code} before the "
            "workers started"
        )


def _describe(error: ValidationError) -> str:
    lines = []
    for detail in error.errors():
        field = str(detail["loc"][0]) if detail["loc"] else "?"
        name = field if field == _BACKEND_URL_ENV else _ENV_PREFIX + field.upper()
        lines.append(f"  {name}={detail.get('input')!r}: {detail['msg']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Start gunicorn with the Dash app and return its exit status."""
    args = build_parser().parse_args(argv)
    # The settings are read from the environment, in this process and in
    # every worker, so the options are passed on as environment variables.
    overrides = {
        _ENV_PREFIX + "HOST": args.host,
        _ENV_PREFIX + "PORT": args.port,
        _BACKEND_URL_ENV: args.backend_url,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)

    try:
        # Importing the app reads the settings. The workers are forked from
        # this process and so inherit the app without importing it again.
        dash_app = load_app_module(args.app)
    except ValidationError as exc:
        print(
            "frontbench frontend dash: invalid settings:\n" + _describe(exc),
            file=sys.stderr,
        )
        return 2
    except FileNotFoundError as exc:
        print(
            f"frontbench frontend dash: {exc}; give the path of a Dash app file",
            file=sys.stderr,
        )
        return 2
    server = getattr(dash_app, "server", None)
    if server is None:
        print(
            f"frontbench frontend dash: {dash_app.__file__} defines no `server`; "
            "end it with `server = app.server`",
            file=sys.stderr,
        )
        return 2

    settings = dash_app.settings
    port_error = check_port_free(settings.host, settings.port)
    if port_error is not None:
        print(
            f"frontbench frontend dash: {port_error}",
            file=sys.stderr,
        )
        return 2

    options: dict[str, Any] = {
        "bind": f"{settings.host}:{settings.port}",
        "worker_class": "gthread",
        "workers": settings.workers,
        "threads": settings.threads,
        "graceful_timeout": settings.graceful_timeout_s,
        "accesslog": "-" if settings.access_log else None,
        "errorlog": "-",
        "proc_name": "frontbench-dash",
        # gunicorn 27 serves a control socket at ~/.gunicorn/gunicorn.ctl by
        # default, and a second server of the same user deletes and replaces it.
        "control_socket_disable": True,
    }
    _configure_logging()
    register_resources(server)
    logger.info(
        "starting the Dash app %s on http://%s:%d with gunicorn: %d workers x %d "
        "threads, backend %s, max upload %d bytes",
        dash_app.__file__,
        settings.host,
        settings.port,
        settings.workers,
        settings.threads,
        settings.backend_url,
        settings.max_upload_bytes,
    )
    try:
        _Gunicorn(options, lambda: server).run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0
