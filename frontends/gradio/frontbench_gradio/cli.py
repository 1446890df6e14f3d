"""The `frontbench frontend gradio` command: serve the app with Gradio's server.

Gradio's server is uvicorn running inside this process, so the command stays
in the foreground, and SIGTERM or SIGINT closes the server and returns.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
from pathlib import Path
from types import FrameType, ModuleType

from pydantic import ValidationError

DEFAULT_PORT = 7860
# Gradio's index page returns 200 once the server accepts connections.
READY_PATH = "/"

logger = logging.getLogger(__name__)

# The settings, besides backend_url, that have a command-line option.
_FLAG_FIELDS = ("host", "port")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser. Its flags override the environment variables."""
    parser = argparse.ArgumentParser(
        prog="frontbench frontend gradio",
        description=(
            "Serve the Gradio frontend. Settings come from FRONTBENCH_GRADIO_* "
            "environment variables and BACKEND_URL; these flags override them."
        ),
    )
    parser.add_argument(
        "--host", help="interface to bind (FRONTBENCH_GRADIO_HOST, 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"TCP port to listen on (FRONTBENCH_GRADIO_PORT, {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--backend-url",
        help="base URL of the model backend (BACKEND_URL, http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        metavar="PATH",
        help="Python file with the app's Settings, create_client, "
        "create_status_client and build_demo, such as an exercise (default: the "
        "reference app, frontbench_gradio.app)",
    )
    return parser


def load_app_module(path: Path | None) -> ModuleType:
    """Import the reference app, or the Gradio app in the file at `path`.

    Raises:
        FileNotFoundError: `path` is not a file.
    """
    if path is None:
        from frontbench_gradio import app

        return app

    if not path.is_file():
        raise FileNotFoundError(f"--app {str(path)!r} is not a file")
    spec = importlib.util.spec_from_file_location("frontbench_gradio_app", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--app {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_port_free(host: str, port: int) -> str | None:
    """Bind `host`:`port` once and return why it failed, or None if it is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return (
            f"cannot resolve host {host!r}: {exc.strerror}; set --host or "
            "FRONTBENCH_GRADIO_HOST"
        )
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # uvicorn sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return (
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another "
                "port with --port or FRONTBENCH_GRADIO_PORT"
            )
    return None


def describe_invalid_settings(exc: ValidationError) -> str:
    """Return one line per invalid setting, naming its flag or variable."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]).lower() if error["loc"] else "settings"
        if field == "backend_url":
            source = "--backend-url or BACKEND_URL"
        elif field in _FLAG_FIELDS:
            source = f"--{field} or FRONTBENCH_GRADIO_{field.upper()}"
        else:
            # The other settings have no command-line option.
            source = f"FRONTBENCH_GRADIO_{field.upper()}"
        lines.append(f"{source}: {error['msg']} (got {error['input']!r})")
    return "\n".join(lines)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Gradio's main-thread loop closes the server on KeyboardInterrupt.
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """Run the Gradio server in the foreground until SIGTERM or SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO, and each open page checks the backend
    # every few seconds. The client logs its own retries and failures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Gradio reads this before every analytics request and version check.
    # build_demo also passes analytics_enabled=False to its Blocks.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

    try:
        app = load_app_module(args.app)
    except FileNotFoundError as exc:
        logger.error("%s; give the path of a Gradio app file", exc)
        return 2
    names = ("Settings", "create_client", "create_status_client", "build_demo")
    missing = [name for name in names if not hasattr(app, name)]
    if missing:
        logger.error(
            "%s does not define %s, which this command calls",
            app.__file__,
            ", ".join(missing),
        )
        return 2

    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("backend_url", args.backend_url),
        )
        if value is not None
    }
    try:
        settings = app.Settings(**overrides)
        client = app.create_client(settings)
        status_client = app.create_status_client(settings)
    except ValidationError as exc:
        logger.error(
            "invalid Gradio frontend settings:\n%s", describe_invalid_settings(exc)
        )
        return 2
    except ValueError as exc:
        # The client rejects a backend URL that is not http:// or https://.
        logger.error("invalid Gradio frontend settings: %s", exc)
        return 2

    port_error = check_port_free(settings.host, settings.port)
    if port_error is not None:
        logger.error("%s", port_error)
        client.close()
        status_client.close()
        return 2

    demo = app.build_demo(settings, client, status_client)
    logger.info(
        "starting Gradio with %s on http://%s:%d (backend %s, concurrency limit %d, "
        "max queue size %d, max upload %d bytes)",
        app.__file__,
        settings.host,
        settings.port,
        settings.backend_url,
        settings.concurrency_limit,
        settings.max_queue_size,
        settings.max_upload_bytes,
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        demo.launch(
            server_name=settings.host,
            server_port=settings.port,
            share=False,
            max_file_size=settings.max_upload_bytes,
            footer_links=["api", "gradio"],
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            run_history=False,
            enable_monitoring=False,
            quiet=True,
        )
    except KeyboardInterrupt:
        # The signal came while launch() was still starting, for example
        # while it checked its own URL, before Gradio's loop that handles it.
        demo.close()
    finally:
        client.close()
        status_client.close()
        logger.info("stopped Gradio on http://%s:%d", settings.host, settings.port)
    return 0
