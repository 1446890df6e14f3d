"""The `frontbench` command.

Each subcommand belongs to one component and is imported only when it runs, so
`frontbench frontend gradio` works in an environment that has only the Gradio
extra installed, and a missing extra is named in the error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class _Subcommand(NamedTuple):
    module: str
    function: str
    extra: str
    help: str


_SUBCOMMANDS: dict[str, _Subcommand] = {
    "train": _Subcommand(
        "frontbench_backend.cli", "train_main", "backend", "train the digits model"
    ),
    "backend": _Subcommand(
        "frontbench_backend.cli", "main", "backend", "start the model backend"
    ),
    "up": _Subcommand(
        "frontbench_shared.up",
        "main",
        "all",
        "start the backend and the frontends together",
    ),
    "bench": _Subcommand(
        "frontbench_loadtests.cli",
        "main",
        "loadtests",
        "run the backend scaling experiment",
    ),
}

FRONTENDS: dict[str, _Subcommand] = {
    "streamlit": _Subcommand(
        "frontbench_streamlit.cli", "main", "streamlit", "start the Streamlit app"
    ),
    "dash": _Subcommand("frontbench_dash.cli", "main", "dash", "start the Dash app"),
    "gradio": _Subcommand(
        "frontbench_gradio.cli", "main", "gradio", "start the Gradio app"
    ),
}


def _load(subcommand: _Subcommand) -> Callable[[list[str]], int]:
    try:
        module = importlib.import_module(subcommand.module)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"frontbench: this command needs the {subcommand.extra!r} extra, "
            f"which is not installed (missing module {exc.name!r}). Install it "
            f"with: pip install 'frontbench[{subcommand.extra}]'"
        ) from exc
    function: Callable[[list[str]], int] = getattr(module, subcommand.function)
    return function


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand parses its own options."""
    parser = argparse.ArgumentParser(
        prog="frontbench",
        description=(
            "Serve one PyTorch model to Streamlit, Dash and Gradio, and measure "
            "each setup with Locust. Run 'frontbench COMMAND --help' for the "
            "options of a command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, subcommand in _SUBCOMMANDS.items():
        commands.add_parser(name, help=subcommand.help, add_help=False)
    frontend = commands.add_parser(
        "frontend", help="start one frontend: " + ", ".join(FRONTENDS)
    )
    frontend.add_argument("framework", choices=sorted(FRONTENDS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `frontbench` command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args and args[0] in _SUBCOMMANDS:
        return _load(_SUBCOMMANDS[args[0]])(args[1:])

    if args and args[0] == "frontend" and len(args) > 1 and args[1] in FRONTENDS:
        return _load(FRONTENDS[args[1]])(args[2:])

    # Anything else is a usage error or a request for help: argparse prints it.
    parser.parse_args(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
