"""End-to-end tests of the Streamlit app in a real Chromium.

Each test drives the page the way a person would. It uploads a file through
the page's file input, clicks an example or draws on the canvas with the
mouse. The last test stops and starts the backend and watches the state line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

HOST = "127.0.0.1"
# Time for a prediction or a state change to appear, on a loaded machine.
APPEAR_TIMEOUT_MS = 60_000
SCREENSHOT_ENV = "FRONTBENCH_SCREENSHOT_DIR"


@pytest.fixture(scope="module")
def streamlit_url(start_frontend: Callable[..., str], backend_url: str) -> str:
    """Return the URL of one Streamlit server for the tests of this module."""
    return start_frontend("streamlit", backend_url)


def open_app(page: Any, url: str) -> None:
    """Load the app and wait until the script has rendered the page."""
    page.goto(url)
    page.get_by_text("Handwritten digit recognition").wait_for()


def expect_text(page: Any, text: str) -> None:
    page.get_by_text(text, exact=True).first.wait_for(timeout=APPEAR_TIMEOUT_MS)


def upload(page: Any, path: Path) -> None:
    page.locator("input[type=file]").set_input_files(str(path))


def test_upload_shows_label_and_chart(
    page: Any, streamlit_url: str, examples: list[Example], tmp_path: Path
) -> None:
    example = examples[2]
    open_app(page, streamlit_url)
    assert page.title() == "frontbench · Streamlit"

    upload(page, example.path)

    expect_text(page, f"Predicted digit: {example.label}")
    page.get_by_text("Confidence: ").first.wait_for()
    page.get_by_text("Backend latency: ").first.wait_for()
    chart = page.locator("[data-testid=stVegaLiteChart]")
    chart.wait_for()
    assert chart.count() == 1
    # Set FRONTBENCH_SCREENSHOT_DIR to keep the screenshot for a person to read.
    directory = Path(os.environ.get(SCREENSHOT_ENV, tmp_path))
    chart.scroll_into_view_if_needed()
    page.screenshot(path=str(directory / "streamlit-prediction.png"))


def test_example_click_shows_label(
    page: Any, streamlit_url: str, examples: list[Example]
) -> None:
    example = examples[7]
    open_app(page, streamlit_url)

    page.get_by_role("button", name=example.label, exact=True).click()

    expect_text(page, f"Predicted digit: {example.label}")


def test_drawing_shows_a_prediction(page: Any, streamlit_url: str) -> None:
    open_app(page, streamlit_url)
    # Fabric.js stacks two canvases and listens on the upper one.
    canvas = page.locator("canvas.upper-canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    assert box is not None

    # A vertical stroke down the middle, drawn like a "1". The pauses give
    # Fabric.js time to handle each event, as a person's hand would.
    center_x = box["x"] + box["width"] / 2
    canvas.hover()
    page.mouse.move(center_x, box["y"] + box["height"] * 0.15)
    page.wait_for_timeout(100)
    page.mouse.down()
    for step in range(1, 11):
        y = box["y"] + box["height"] * (0.15 + 0.07 * step)
        page.mouse.move(center_x, y, steps=5)
        page.wait_for_timeout(30)
    page.mouse.up()
    # The canvas sends the stroke to the server when the button is released.
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Predict drawing").click()

    page.get_by_text("Predicted digit: ").first.wait_for(timeout=APPEAR_TIMEOUT_MS)
    assert page.get_by_text("drawing.png").count() == 1


def test_uploader_rejects_large_and_text_files(
    page: Any,
    start_frontend: Callable[..., str],
    backend_url: str,
    examples: list[Example],
    tmp_path: Path,
) -> None:
    frontend_url = start_frontend(
        "streamlit", backend_url, FRONTBENCH_STREAMLIT_MAX_UPLOAD_MB="1"
    )
    # Random pixels do not compress, so this PNG is about 1.7 MB.
    large = tmp_path / "large.png"
    Image.frombytes("L", (1300, 1300), os.urandom(1300 * 1300)).save(large)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    open_app(page, frontend_url)

    upload(page, large)
    page.get_by_text("or smaller", exact=False).first.wait_for()
    upload(page, notes)
    page.get_by_text("files are not allowed", exact=False).first.wait_for()
    assert page.get_by_text("Predicted digit: ").count() == 0

    upload(page, examples[1].path)
    expect_text(page, f"Predicted digit: {examples[1].label}")


@pytest.fixture
def restartable_backend(checkpoint: Path) -> Iterator[Callable[[], ManagedProcess]]:
    """Return a function that starts a backend on one fixed port, again and again."""
    port = free_port(HOST)
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        process = ManagedProcess(
            f"backend-{port}",
            python_argv(
                "-m",
                "frontbench_shared.cli",
                "backend",
                "--host",
                HOST,
                "--port",
                str(port),
            ),
            env={
                "FRONTBENCH_MODEL_PATH": str(checkpoint),
                "FRONTBENCH_TORCH_THREADS": "1",
            },
        )
        started.append(process.start())
        process.wait_ready(f"http://{HOST}:{port}/readyz")
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def test_backend_restart_recovers_without_reload(
    page: Any,
    start_frontend: Callable[..., str],
    restartable_backend: Callable[[], ManagedProcess],
    examples: list[Example],
) -> None:
    backend = restartable_backend()
    backend_url = f"http://{HOST}:{backend.argv[-1]}"
    frontend_url = start_frontend("streamlit", backend_url)
    open_app(page, frontend_url)
    expect_text(page, "Backend: ready")

    backend.stop()

    expect_text(page, "Backend: unreachable")
    upload(page, examples[4].path)
    error = page.get_by_text("is not reachable")
    error.wait_for(timeout=APPEAR_TIMEOUT_MS)
    assert page.get_by_text("Predicted digit: ").count() == 0

    restartable_backend()

    expect_text(page, "Backend: ready")
    upload(page, examples[6].path)
    expect_text(page, f"Predicted digit: {examples[6].label}")
    assert page.get_by_text("is not reachable").count() == 0
