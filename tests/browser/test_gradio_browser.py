"""End-to-end tests of the Gradio app in a real Chromium.

The tests use the page as a person would. They upload files through the
image component's file input, click an example and draw on the sketchpad
with the mouse. They also watch the backend state while the backend stops
and starts again on the same port.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

pytest.importorskip("gradio")

HOST = "127.0.0.1"
# Time for a prediction or a state change to appear, on a loaded machine.
APPEAR_TIMEOUT_MS = 60_000
SCREENSHOT_ENV = "FRONTBENCH_SCREENSHOT_DIR"


@pytest.fixture(scope="module")
def gradio_url(start_frontend: Callable[..., str], backend_url: str) -> str:
    """Return the URL of one Gradio server for the tests of this module."""
    return start_frontend("gradio", backend_url)


def open_app(page: Any, url: str) -> None:
    """Load the app and wait until the first backend check has finished."""
    page.goto(url)
    page.get_by_text("Handwritten digit recognition").wait_for()
    page.locator("#backend-state").get_by_text("Backend: checking").wait_for(
        state="detached", timeout=APPEAR_TIMEOUT_MS
    )


def expect_text(page: Any, text: str) -> None:
    page.get_by_text(text, exact=True).first.wait_for(timeout=APPEAR_TIMEOUT_MS)


def upload(page: Any, path: Path) -> None:
    """Put a file into the image component, replacing the image it shows."""
    remove = page.get_by_role("button", name="Remove Image")
    if remove.count():
        remove.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def example_by_label(examples: list[Example], label: str) -> tuple[int, Example]:
    """Return the position in the example gallery and the example of `label`."""
    # The app shows the first example of each label, in label order.
    labels = sorted({example.label for example in examples})
    chosen = next(example for example in examples if example.label == label)
    return labels.index(label), chosen


def test_upload_shows_label_and_chart(
    page: Any, gradio_url: str, examples: list[Example], tmp_path: Path
) -> None:
    example = examples[2]
    open_app(page, gradio_url)
    assert page.title() == "frontbench · Gradio"

    upload(page, example.path)

    expect_text(page, f"Predicted digit: {example.label}")
    page.get_by_text("Confidence: ").first.wait_for()
    page.get_by_text("Backend latency: ").first.wait_for()
    chart = page.locator("#probabilities canvas, #probabilities svg.marks")
    chart.first.wait_for(timeout=APPEAR_TIMEOUT_MS)
    assert chart.count() >= 1
    expect_text(page, "Backend: ready")
    page.get_by_text("Held-out accuracy: ").wait_for(timeout=APPEAR_TIMEOUT_MS)
    # Set FRONTBENCH_SCREENSHOT_DIR to keep the screenshot for a person to read.
    directory = Path(os.environ.get(SCREENSHOT_ENV, tmp_path))
    page.screenshot(path=str(directory / "gradio-prediction.png"), full_page=True)


def test_example_click_shows_label(
    page: Any, gradio_url: str, examples: list[Example]
) -> None:
    position, example = example_by_label(examples, "7")
    open_app(page, gradio_url)

    page.locator(".gallery-item").nth(position).click()

    expect_text(page, f"Predicted digit: {example.label}")


def test_drawing_shows_a_prediction(page: Any, gradio_url: str) -> None:
    open_app(page, gradio_url)
    page.get_by_role("tab", name="Draw").click()
    # The sketchpad draws only once its brush tool is chosen.
    page.locator("#drawing button[aria-label='Brush']").click()
    box = page.locator("#drawing canvas").first.bounding_box()
    assert box is not None

    # A vertical stroke down the middle, drawn like a "1".
    center_x = box["x"] + box["width"] / 2
    page.mouse.move(center_x, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(center_x, box["y"] + box["height"] * (0.2 + 0.05 * step))
    page.mouse.up()
    page.get_by_role("button", name="Predict drawing").click()

    page.get_by_text("Predicted digit: ").first.wait_for(timeout=APPEAR_TIMEOUT_MS)
    assert page.locator("#error").inner_text().strip() == ""


def test_broken_image_shows_invalid_image(
    page: Any, gradio_url: str, tmp_path: Path
) -> None:
    # A .png name gets past the browser's image-type check, so the backend
    # decides that the contents are no image.
    broken = tmp_path / "broken.png"
    broken.write_text("this is not an image\n")
    open_app(page, gradio_url)

    upload(page, broken)

    page.get_by_text("could not be used as an image").wait_for(
        timeout=APPEAR_TIMEOUT_MS
    )
    assert page.get_by_text("Predicted digit: ").count() == 0


def test_text_file_rejected_by_gradio(
    page: Any, gradio_url: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    open_app(page, gradio_url)

    upload(page, notes)

    page.get_by_text("Invalid file type: notes.txt").wait_for(timeout=APPEAR_TIMEOUT_MS)


def test_file_over_gradio_limit_shows_message(
    page: Any,
    start_frontend: Callable[..., str],
    backend_url: str,
    tmp_path: Path,
) -> None:
    url = start_frontend(
        "gradio", backend_url, FRONTBENCH_GRADIO_MAX_UPLOAD_BYTES="20000"
    )
    large = tmp_path / "large.png"
    large.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(30_000))
    open_app(page, url)

    upload(page, large)

    page.get_by_text("exceed the maximum allowed size").wait_for(
        timeout=APPEAR_TIMEOUT_MS
    )
    assert page.get_by_text("Predicted digit: ").count() == 0


@pytest.fixture
def restartable_backend(checkpoint: Path) -> Iterator[Callable[[], ManagedProcess]]:
    """Return a function that starts a backend on one fixed port, again and again."""
    port = free_port(HOST)
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        process = ManagedProcess(
            f"backend-{port}",
            python_argv(
                "-m", "frontbench_shared.cli", "backend",
                "--host", HOST, "--port", str(port),
            ),
            env={
                "FRONTBENCH_MODEL_PATH": str(checkpoint),
                "FRONTBENCH_TORCH_THREADS": "1",
            },
        )  # fmt: skip
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
    frontend_url = start_frontend("gradio", backend_url)
    open_app(page, frontend_url)
    expect_text(page, "Backend: ready")

    backend.stop()

    expect_text(page, "Backend: unreachable")
    upload(page, examples[4].path)
    page.get_by_text("is not reachable").wait_for(timeout=APPEAR_TIMEOUT_MS)
    assert page.get_by_text("Predicted digit: ").count() == 0

    restartable_backend()

    expect_text(page, "Backend: ready")
    upload(page, examples[5].path)
    expect_text(page, f"Predicted digit: {examples[5].label}")
    assert page.locator("#error").inner_text().strip() == ""
