"""End-to-end test of the Dash app in a real Chromium, with a backend that goes away.

The test starts its own backend, so that it can stop it and start it again on
the same port while the page stays open.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frontbench_dash import app as dash_app
from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

expect = pytest.importorskip("playwright.sync_api").expect
# Assertions wait this long (ms), because the machine may be loaded.
expect.set_options(timeout=30_000)

HOST = "127.0.0.1"
# Set FRONTBENCH_SCREENSHOT_DIR to keep a screenshot of a successful prediction.
SCREENSHOT_DIR = os.environ.get("FRONTBENCH_SCREENSHOT_DIR")


class RestartableBackend:
    """A real backend on a fixed port that a test can stop and start again."""

    def __init__(self, checkpoint: Path) -> None:
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.checkpoint = checkpoint
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.process = ManagedProcess(
            f"backend-{self.port}",
            python_argv(
                "-m",
                "frontbench_shared.cli",
                "backend",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ),
            env={
                "FRONTBENCH_MODEL_PATH": str(self.checkpoint),
                "FRONTBENCH_TORCH_THREADS": "1",
            },
        ).start()
        try:
            self.process.wait_ready(f"{self.url}/readyz")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def backend(checkpoint: Path) -> Iterator[RestartableBackend]:
    """Start a backend of this test's own and stop it at the end."""
    restartable = RestartableBackend(checkpoint)
    try:
        restartable.start()
        yield restartable
    finally:
        restartable.stop()


def upload(page: Any, path: Path) -> None:
    """Choose a file in the upload's file input, as the file dialog does.

    Chromium fires no change event when the input gets the file that it
    already has, so two uploads in a row must use different files. A person
    is not affected, because dcc.Upload clears the input before the dialog.
    """
    page.locator("#upload input[type=file]").set_input_files(str(path))


def test_dash_page_survives_backend_restart(
    page: Any,
    backend: RestartableBackend,
    start_frontend: Callable[..., str],
    examples: list[Example],
) -> None:
    url = start_frontend(
        "dash", backend.url, FRONTBENCH_DASH_WORKERS="1", FRONTBENCH_DASH_THREADS="4"
    )
    first, second, third = examples[0], examples[-1], examples[1]

    page.goto(url)

    expect(page).to_have_title(dash_app.TITLE)
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Handwritten digit recognition"
    )
    expect(page.locator("#backend-state")).to_have_text("Backend: ready")
    expect(page.locator("#model-info")).to_contain_text("Held-out accuracy")

    # An upload shows the label, the confidence, the latency and the chart.
    upload(page, first.path)
    expect(page.get_by_text(f"Predicted digit: {first.label}")).to_be_visible()
    expect(page.get_by_text("Confidence: ")).to_be_visible()
    expect(page.get_by_text("Backend latency: ")).to_be_visible()
    # dcc.Graph loads plotly.js, several MB, when the first chart appears.
    expect(page.locator("#chart .main-svg").first).to_be_visible(timeout=90_000)
    expect(page.locator("#preview")).to_be_visible()
    if SCREENSHOT_DIR:
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "dash-prediction.png"))

    # One click on an example predicts it.
    example_name = f"Example digit {second.label}-{second.index}"
    page.get_by_role("button", name=example_name).click()
    expect(page.get_by_text(f"Predicted digit: {second.label}")).to_be_visible()

    # Without the backend, the state line and an upload show the failure.
    backend.stop()
    expect(page.locator("#backend-state")).to_have_text("Backend: unreachable")
    upload(page, third.path)
    expect(page.locator("#error")).to_contain_text("is not reachable")
    expect(page.get_by_text("Predicted digit: ")).to_have_count(0)

    # The same page recovers once the backend is back on the same port.
    backend.start()
    expect(page.locator("#backend-state")).to_have_text("Backend: ready")
    upload(page, first.path)
    expect(page.get_by_text(f"Predicted digit: {first.label}")).to_be_visible()
    expect(page.locator("#error")).to_be_empty()
