"""The `frontbench frontend streamlit` command: serve the app with Streamlit.

The Streamlit server runs in this process, headless, as `streamlit run` would
run it. Its own signal handlers stop it cleanly on SIGTERM and SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from frontbench_streamlit.app import Settings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8501
READY_PATH = "/_stcore/health"
APP_PATH = Path(__file__).with_name("app.py")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for the command's options."""
    parser = argparse.ArgumentParser(
        prog="frontbench frontend streamlit",
        description=(
            "Serve the Streamlit frontend. Options override the environment "
            "variables named in their help."
        ),
    )
    parser.add_argument(
        "--host",
        help="address to listen on (FRONTBENCH_STREAMLIT_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"port to listen on (FRONTBENCH_STREAMLIT_PORT, default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--backend-url",
        help="base URL of the model backend (BACKEND_URL, default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        default=APP_PATH,
        metavar="PATH",
        help="Streamlit script to serve, such as an exercise (default: the reference "
        "app.py of this package)",
    )
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    """Read the settings from the environment, with the given flags taking precedence.

    Raises:
        ValueError: A setting is invalid; the message names the variable.
    """
    flags = {"host": args.host, "port": args.port, "backend_url": args.backend_url}
    overrides = {name: value for name, value in flags.items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            variable = (
                "BACKEND_URL"
                if field == "BACKEND_URL"
                else f"FRONTBENCH_STREAMLIT_{field.upper()}"
            )
            problems.append(
                f"invalid {variable}={error.get('input')!r}: {error['msg']}"
            )
        raise ValueError("; ".join(problems)) from exc


def streamlit_flags(settings: Settings) -> list[str]:
    """Return the `streamlit run` options for a production server."""
    options = {
        "server.headless": "true",
        "server.address": settings.host,
        "server.port": str(settings.port),
        "server.maxUploadSize": str(settings.max_upload_mb),
        "server.enableWebsocketCompression": str(settings.websocket_compression),
        "server.enableXsrfProtection": "true",
        # A server that serves users watches no files and never reloads itself.
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "runner.fastReruns": str(settings.fast_reruns),
        "browser.gatherUsageStats": "false",
        # An unexpected exception shows a generic message, never a traceback;
        # the traceback goes to the server's log.
        "client.showErrorDetails": "none",
        "client.toolbarMode": "minimal",
    }
    return [part for name, value in options.items() for part in (f"--{name}", value)]


def main(argv: list[str]) -> int:
    """Run `frontbench frontend streamlit` and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"frontbench frontend streamlit: {exc}", file=sys.stderr)
        return 2
    if not args.app.is_file():
        print(
            f"frontbench frontend streamlit: --app {str(args.app)!r} is not a file; "
            "give the path of a Streamlit script",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO, one line per poll of every open tab.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The app reads its settings from the environment in every session, so
    # a --backend-url flag reaches it through BACKEND_URL.
    os.environ["BACKEND_URL"] = settings.backend_url
    logger.info(
        "starting Streamlit with %s on http://%s:%d with backend %s, "
        "max upload %d MB, status every %.1f s, request timeout %.1f s",
        args.app,
        settings.host,
        settings.port,
        settings.backend_url,
        settings.max_upload_mb,
        settings.status_interval_s,
        settings.request_timeout_s,
    )

    # Imported here so that `--help` and setting errors need no Streamlit start.
    from streamlit.web import cli as streamlit_cli

    streamlit_cli.main(
        ["run", str(args.app), *streamlit_flags(settings)],
        prog_name="streamlit",
        standalone_mode=False,
    )
    logger.info("Streamlit stopped")
    return 0
