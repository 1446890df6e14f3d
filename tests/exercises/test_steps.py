"""The exercise checks: one test per framework and step, in a real Chromium.

Each test serves the app under test with `frontbench frontend <fw> --app`,
opens it and checks what one step of the exercise adds to the page. Every
failure message states in plain words what is missing and where to write it,
because `exercises/check.py` shows these messages to students.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from exercise_tracks import STEPS, app_under_test, selected_frameworks, selected_steps
from prometheus_client.parser import text_string_to_metric_families

from frontbench_loadtests.bench import PACKAGE_DIR, SETUPS, RunResult
from frontbench_loadtests.bench import read_locust_results as read_locust_csv
from frontbench_shared.errors import InvalidImage, user_message
from frontbench_shared.examples import Example

HEADING = "Handwritten digit recognition"
# Time for an element to appear, on a loaded machine.
APPEAR_TIMEOUT_MS = 30_000
# The user_message wording up to the first detail that varies.
INVALID_IMAGE_TEXT = user_message(InvalidImage("")).split(":")[0]
UNREACHABLE_TEXT = "is not reachable"
LOCUST_USERS = 2
LOCUST_SECONDS = 5

ExerciseServer = Callable[[str], str]


@dataclass(frozen=True)
class Framework:
    """How the checks find one framework's elements, and the hints they give."""

    upload_input: str
    preview: str
    preview_hint: str
    chart: str
    # One hint per step: which function to write the missing code in, and how.
    hints: dict[int, str]


FRAMEWORKS = {
    "streamlit": Framework(
        upload_input="[data-testid=stFileUploaderDropzoneInput]",
        preview="[data-testid=stFileChip]",
        preview_hint="the uploader listing the file",
        chart="[data-testid=stVegaLiteChart]",
        hints={
            1: "Add st.file_uploader with key='upload' and on_change=predict_upload "
            "in show_inputs().",
            2: "Call client_for(settings, retry=True).predict(image, "
            "filename=filename) in predict() and store the Outcome in "
            "st.session_state.outcome.",
            3: "Write the label with st.subheader(f'Predicted digit: {label}') in "
            "show_prediction().",
            4: "Draw the probabilities with st.bar_chart in show_prediction().",
            5: "Catch BackendError in predict(), store user_message(exc) in "
            "st.session_state.error, and show it with st.error in show_error().",
            6: "Keep the uploader's key='upload' and the 'Predicted digit: <label>' "
            "text, which the Locust user reads.",
        },
    ),
    "dash": Framework(
        upload_input="#upload input[type=file]",
        preview="#preview",
        preview_hint="the image with id 'preview'",
        chart="#chart .main-svg",
        hints={
            1: "Add dcc.Upload(id='upload') and html.Img(id='preview') to "
            "upload_column, and the clientside_callback that sets the preview.",
            2: "Write the predict() callback from Input('upload', 'contents') to "
            "Output('result', 'children') and call get_client().predict() in it.",
            3: "Return html.P(f'Predicted digit: {prediction.label}') from "
            "render_prediction().",
            4: "Add dcc.Graph(id='chart') with a go.Bar figure to what "
            "render_prediction() returns.",
            5: "Catch BackendError in predict() and return "
            "render_error(user_message(exc)), which must return html.P(message).",
            6: "Keep the ids 'upload' and 'result' and the 'Predicted digit: <label>' "
            "text, which the Locust user reads.",
        },
    ),
    "gradio": Framework(
        upload_input="#upload input[type=file]",
        preview="#upload img",
        preview_hint="the gr.Image showing the upload",
        chart="#probabilities canvas, #probabilities svg.marks",
        hints={
            1: "Add gr.Image(elem_id='upload', sources=['upload']) in the Upload "
            "tab of build_demo().",
            2: "Connect upload.change() to predict_upload, and call "
            "client.predict() in predict().",
            3: "Return '### Predicted digit: {label}' as the first value of "
            "render_answer().",
            4: "Return a DataFrame with 'digit' and 'probability' columns as the "
            "second value of render_answer().",
            5: "Catch BackendError in predict() and return "
            "f'> {user_message(exc)}' as the third value from render_error().",
            6: "Keep api_name='predict' on upload.change() and the 'Predicted "
            "digit: <label>' text, which the Locust user reads.",
        },
    ),
}

CHECKS = [
    (framework, step)
    for framework in selected_frameworks()
    for step in selected_steps()
]


def not_done(framework: str, step: int, observed: str) -> str:
    """Return the message for a step that fails: what was seen and what to do."""
    return (
        f"Step {step} ({STEPS[step]}) is not done yet: {observed}. "
        f"{FRAMEWORKS[framework].hints[step]}"
    )


def appears(locator: Any, timeout_ms: int = APPEAR_TIMEOUT_MS) -> bool:
    """Wait until the first element of `locator` is visible; return whether it was."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible", timeout=timeout_ms)
    except PlaywrightTimeout:
        return False
    return True


def open_app(page: Any, url: str) -> None:
    """Load the app and check that it rendered its heading."""
    page.goto(url)
    assert appears(page.get_by_text(HEADING)), (
        f"The page at {url} never showed its heading '{HEADING}'. Keep the "
        "heading and the page layout that the starter file has."
    )


def upload(page: Any, framework: str, path: Path) -> None:
    """Put a file into the app's upload input, as a file dialog would."""
    page.locator(FRAMEWORKS[framework].upload_input).first.set_input_files(str(path))


def has_upload_input(page: Any, framework: str) -> bool:
    """Return whether the page has the framework's upload input, once attached."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    locator = page.locator(FRAMEWORKS[framework].upload_input).first
    try:
        locator.wait_for(state="attached", timeout=APPEAR_TIMEOUT_MS)
    except PlaywrightTimeout:
        return False
    return True


def predict_requests(backend_url: str) -> float:
    """Return how many POST /v1/predict requests the backend has completed."""
    text = httpx.get(f"{backend_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            is_predict = sample.labels.get("route") == "/v1/predict"
            if sample.name == "frontbench_requests_total" and is_predict:
                total += sample.value
    return total


def wait_for_more_requests(page: Any, backend_url: str, before: float) -> bool:
    """Poll the backend's counter until it exceeds `before`, for a while."""
    for _ in range(APPEAR_TIMEOUT_MS // 500):
        if predict_requests(backend_url) > before:
            return True
        page.wait_for_timeout(500)
    return False


def run_locust(framework: str, host: str, prefix: Path) -> RunResult:
    """Run the framework's Locust user headless and read its CSV results."""
    argv = [
        sys.executable,
        "-m",
        "locust",
        "--headless",
        "--only-summary",
        "-f",
        str(PACKAGE_DIR / SETUPS[framework]),
        "--host",
        host,
        "-u",
        str(LOCUST_USERS),
        "-r",
        str(LOCUST_USERS),
        "-t",
        f"{LOCUST_SECONDS}s",
        "--csv",
        str(prefix),
        "--loglevel",
        "WARNING",
    ]
    completed = subprocess.run(
        argv,
        env={**os.environ, "FRONTBENCH_BENCH_WARMUP": "0"},
        capture_output=True,
        text=True,
        timeout=LOCUST_SECONDS + 90,
        check=False,
    )
    result = RunResult(
        setup=framework, replicas=1, users=LOCUST_USERS, duration_s=LOCUST_SECONDS
    )
    read_locust_csv(prefix, result)
    result.error = completed.stderr[-3000:]
    return result


def check_step_1(framework: str, page: Any, example: Example) -> None:
    """Check that an uploaded file shows a preview."""
    table = FRAMEWORKS[framework]
    assert has_upload_input(page, framework), not_done(
        framework, 1, "the page has no file upload input"
    )

    upload(page, framework, example.path)

    assert appears(page.locator(table.preview)), not_done(
        framework,
        1,
        f"after uploading {example.path.name} the page never showed "
        f"{table.preview_hint}",
    )


def check_step_2(framework: str, page: Any, example: Example, backend_url: str) -> None:
    """Check that an upload makes the app send a prediction request."""
    before = predict_requests(backend_url)

    upload(page, framework, example.path)

    assert wait_for_more_requests(page, backend_url, before), not_done(
        framework,
        2,
        f"after uploading {example.path.name} the backend received no "
        "POST /v1/predict request",
    )


def check_step_3(framework: str, page: Any, example: Example) -> None:
    """Check that the predicted label of an example shows."""
    expected = f"Predicted digit: {example.label}"

    upload(page, framework, example.path)

    assert appears(page.get_by_text(expected, exact=True)), not_done(
        framework,
        3,
        f"after uploading {example.path.name} the page never showed '{expected}'",
    )


def check_step_4(framework: str, page: Any, example: Example) -> None:
    """Check that the probability chart shows after a prediction."""
    upload(page, framework, example.path)

    assert appears(page.locator(FRAMEWORKS[framework].chart)), not_done(
        framework,
        4,
        f"after uploading {example.path.name} the page never showed a "
        "probability chart",
    )


def check_step_5_invalid(framework: str, page: Any, tmp_path: Path) -> None:
    """Check that a text file shows the invalid-image message, not a traceback."""
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is a text file, not an image\n")

    upload(page, framework, text_file)

    assert appears(page.get_by_text(INVALID_IMAGE_TEXT)), not_done(
        framework,
        5,
        f"after uploading {text_file.name}, a text file, the page never showed "
        f"'{INVALID_IMAGE_TEXT}'",
    )
    assert page.get_by_text("Traceback").count() == 0, not_done(
        framework, 5, f"after uploading {text_file.name} the page shows a Traceback"
    )


def check_step_5_unreachable(framework: str, page: Any, example: Example) -> None:
    """Check that an upload with no backend to reach shows the unreachable message."""
    upload(page, framework, example.path)

    assert appears(page.get_by_text(UNREACHABLE_TEXT)), not_done(
        framework,
        5,
        f"with the backend stopped, uploading {example.path.name} never showed "
        f"'The model backend ... {UNREACHABLE_TEXT}'",
    )
    assert page.get_by_text("Traceback").count() == 0, not_done(
        framework, 5, "with the backend stopped, the page shows a Traceback"
    )


def check_step_6(framework: str, url: str, tmp_path: Path) -> None:
    """Check that the Locust user completes interactions without failures."""
    result = run_locust(framework, url, tmp_path / "locust")

    assert result.interactions > 0, not_done(
        framework,
        6,
        f"{LOCUST_USERS} Locust users completed no interaction in "
        f"{LOCUST_SECONDS} s. Locust's output:\n{result.error}",
    )
    assert result.failures == 0, not_done(
        framework,
        6,
        f"the Locust users recorded {result.failures} failures: "
        f"{'; '.join(result.failure_messages[:3])}",
    )


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(
    ("framework", "step"), CHECKS, ids=[f"{fw}-step{step}" for fw, step in CHECKS]
)
def test_exercise_step(
    framework: str,
    step: int,
    page: Any,
    exercise_server: ExerciseServer,
    unreachable_server: ExerciseServer,
    backend_url: str,
    examples: list[Example],
    tmp_path: Path,
) -> None:
    """Check one step of one framework's track on the app under test."""
    assert app_under_test(framework).is_file(), (
        f"The app file {app_under_test(framework)} does not exist. Give the path "
        "of your app.py, such as exercises/streamlit/app.py."
    )
    if step == 5:
        open_app(page, exercise_server(framework))
        check_step_5_invalid(framework, page, tmp_path)
        open_app(page, unreachable_server(framework))
        check_step_5_unreachable(framework, page, examples[4])
        return
    if step == 6:
        check_step_6(framework, exercise_server(framework), tmp_path)
        return

    open_app(page, exercise_server(framework))
    if step == 1:
        check_step_1(framework, page, examples[1])
    elif step == 2:
        check_step_2(framework, page, examples[2], backend_url)
    elif step == 3:
        check_step_3(framework, page, examples[3])
    else:
        check_step_4(framework, page, examples[7])
