"""The starters match the reference apps that they are cut from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_starters_match_reference_apps() -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "exercises" / "make_starters.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
