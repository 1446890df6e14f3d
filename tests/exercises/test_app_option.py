"""The frontends' --app option rejects a path that is not a file."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

FRAMEWORKS = ["streamlit", "dash", "gradio"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cli_app_missing_file_exits_2(
    framework: str,
    tmp_path: Path,
    clean_env: Callable[[Mapping[str, str]], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cli = importlib.import_module(f"frontbench_{framework}.cli")
    missing = tmp_path / "no-such-app.py"

    status = cli.main(["--app", str(missing)])

    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert status == 2, output
    assert str(missing) in output, output
    assert "is not a file" in output, output
