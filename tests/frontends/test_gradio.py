"""Tests of the Gradio app through its API, with gradio_client and a real backend.

Each frontend here is a real `frontbench frontend gradio` server. The tests
call its events the way the browser does, through Gradio's queue:
`/predict` is the upload's change event, `/predict_drawing` the sketchpad's
button and `/backend_status` the backend check that runs on page load.
gradio_client leaves session state out of the outputs that it returns.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

# gradio_client 2.7 sends usage telemetry to Hugging Face unless this variable
# is "False", even when its analytics_enabled argument is False.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from frontbench_gradio import cli  # noqa: E402
from frontbench_gradio.app import Settings, build_demo  # noqa: E402
from frontbench_shared.client import Client  # noqa: E402

HOST = "127.0.0.1"
StartFrontend = Callable[..., str]
StartBackend = Callable[..., str]
SetEnv = Callable[[Mapping[str, str]], None]


def connect(frontend_url: str) -> Any:
    """Return a gradio_client Client for a running frontend."""
    return gradio_client.Client(frontend_url, verbose=False, analytics_enabled=False)


def predict_file(frontend_url: str, path: Path) -> tuple[str, Any, str]:
    """Send one file through the `/predict` event and return its three outputs."""
    answer, chart, error = connect(frontend_url).predict(
        gradio_client.handle_file(str(path)), api_name="/predict"
    )
    return answer, chart, error


def noise_png(path: Path, width: int) -> Path:
    """Write a PNG of random pixels, which compresses badly and so is large."""
    Image.frombytes("L", (width, width), os.urandom(width * width)).save(path)
    return path


def one_per_label(examples: list[Example]) -> dict[str, Example]:
    chosen: dict[str, Example] = {}
    for example in examples:
        chosen.setdefault(example.label, example)
    return chosen


@pytest.fixture(scope="module")
def frontend_url(start_frontend: StartFrontend, backend_url: str) -> str:
    return start_frontend("gradio", backend_url)


@pytest.fixture(scope="module")
def closed_port_frontend_url(start_frontend: StartFrontend) -> str:
    return start_frontend("gradio", f"http://{HOST}:{free_port(HOST)}")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\n")
    return path


@pytest.mark.parametrize("label", ["0", "3", "5", "8"])
def test_predict_example_shows_label(
    frontend_url: str, examples: list[Example], label: str
) -> None:
    example = one_per_label(examples)[label]

    answer, chart, error = predict_file(frontend_url, example.path)

    assert f"Predicted digit: {label}" in answer, answer
    assert "Confidence: " in answer, answer
    assert "Backend latency: " in answer, answer
    assert error == "", error
    assert chart is not None, "the probability chart got no data"


def test_predict_chart_has_every_class(
    frontend_url: str, examples: list[Example]
) -> None:
    _, chart, _ = predict_file(frontend_url, examples[0].path)

    rows = chart["data"]
    columns = chart["columns"]
    digit, probability = columns.index("digit"), columns.index("probability")
    assert sorted(row[digit] for row in rows) == [str(n) for n in range(10)]
    assert sum(row[probability] for row in rows) == pytest.approx(1, abs=1e-3)


def test_predict_text_file_shows_invalid_image(
    frontend_url: str, text_file: Path
) -> None:
    answer, chart, error = predict_file(frontend_url, text_file)

    assert "could not be used as an image" in error, error
    assert answer == ""
    assert chart is None


def test_predict_after_error_works(
    frontend_url: str, text_file: Path, examples: list[Example]
) -> None:
    example = examples[-1]
    _, _, error = predict_file(frontend_url, text_file)
    assert error, "the invalid upload showed no error"

    answer, _, error = predict_file(frontend_url, example.path)

    assert f"Predicted digit: {example.label}" in answer, answer
    assert error == "", error


def test_backend_status_ready_shows_model(frontend_url: str) -> None:
    state, model_info = connect(frontend_url).predict(api_name="/backend_status")

    assert state == "Backend: ready"
    assert "Model: " in model_info, model_info
    assert "Held-out accuracy: " in model_info, model_info
    assert "Device: " in model_info, model_info


def test_closed_port_shows_unreachable(
    closed_port_frontend_url: str, examples: list[Example]
) -> None:
    client = connect(closed_port_frontend_url)

    state, model_info = client.predict(api_name="/backend_status")
    _, _, error = predict_file(closed_port_frontend_url, examples[0].path)

    assert state == "Backend: unreachable"
    assert model_info == ""
    assert "is not reachable" in error, error


def test_small_backend_limit_shows_too_large(
    start_backend: StartBackend,
    start_frontend: StartFrontend,
    tmp_path: Path,
    examples: list[Example],
) -> None:
    small_backend = start_backend(max_upload_bytes=20_000)
    url = start_frontend("gradio", small_backend)
    large = noise_png(tmp_path / "noise.png", 300)
    assert large.stat().st_size > 20_000

    _, _, error = predict_file(url, large)
    answer, _, after = predict_file(url, examples[0].path)

    assert "too large" in error, error
    assert f"Predicted digit: {examples[0].label}" in answer, answer
    assert after == ""


def test_gradio_upload_limit_rejects_large_file(
    start_frontend: StartFrontend, backend_url: str, tmp_path: Path
) -> None:
    url = start_frontend(
        "gradio", backend_url, FRONTBENCH_GRADIO_MAX_UPLOAD_BYTES="20000"
    )
    large = noise_png(tmp_path / "noise.png", 300)

    upload = httpx.post(
        f"{url}/gradio_api/upload",
        files={"files": (large.name, large.read_bytes(), "image/png")},
        timeout=30,
    )
    config = httpx.get(f"{url}/config", timeout=30).json()

    assert upload.status_code == 413, upload.text
    assert config["max_file_size"] == 20_000


def test_build_demo_configures_queue(clean_env: SetEnv) -> None:
    clean_env({})
    settings = Settings(concurrency_limit=3, max_queue_size=5)

    with Client(f"http://{HOST}:{free_port(HOST)}") as client:
        demo = build_demo(settings, client, client)

    # Gradio 6.31 has no public getter for the queue's settings.
    assert demo._queue.default_concurrency_limit == 3
    assert demo._queue.max_size == 5
    predict = [fn for fn in demo.fns.values() if fn.api_name == "predict"]
    assert [fn.trigger_mode for fn in predict] == ["always_last"]


def drawing_value(path: Path) -> dict[str, Any]:
    """Return the sketchpad value of one drawing: strokes on a transparent layer."""
    return {
        "background": None,
        "layers": [gradio_client.handle_file(str(path))],
        "composite": gradio_client.handle_file(str(path)),
    }


def test_predict_drawing_of_example_shows_label(
    frontend_url: str, examples: list[Example], tmp_path: Path
) -> None:
    example = one_per_label(examples)["7"]
    # The examples are dark strokes on a light background, like a drawing
    # with the black brush. The canvas keeps transparency where nothing is
    # drawn, so white becomes transparent here.
    digit = Image.open(example.path).convert("L").resize((280, 280))
    strokes = Image.new("RGBA", digit.size, (0, 0, 0, 0))
    strokes.putalpha(digit.point(lambda value: 255 - value))
    path = tmp_path / "drawing.png"
    strokes.save(path)

    answer, _, error = connect(frontend_url).predict(
        drawing_value(path), api_name="/predict_drawing"
    )

    assert f"Predicted digit: {example.label}" in answer, answer
    assert error == "", error


def test_predict_empty_drawing_asks_to_draw(frontend_url: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(path)

    answer, _, error = connect(frontend_url).predict(
        drawing_value(path), api_name="/predict_drawing"
    )

    assert answer == ""
    assert "The canvas is empty" in error, error


def test_settings_read_environment(clean_env: SetEnv) -> None:
    clean_env(
        {
            "BACKEND_URL": "http://127.0.0.1:9001",
            "FRONTBENCH_GRADIO_PORT": "7999",
            "FRONTBENCH_GRADIO_CONCURRENCY_LIMIT": "16",
        }
    )

    settings = Settings()

    assert settings.backend_url == "http://127.0.0.1:9001"
    assert settings.port == 7999
    assert settings.concurrency_limit == 16


def test_settings_defaults_do_not_serialise_users(clean_env: SetEnv) -> None:
    clean_env({})

    settings = Settings()

    assert settings.port == cli.DEFAULT_PORT
    assert settings.concurrency_limit > 1


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FRONTBENCH_GRADIO_PORT", "70000", "--port or FRONTBENCH_GRADIO_PORT"),
        (
            "FRONTBENCH_GRADIO_CONCURRENCY_LIMIT",
            "-3",
            "FRONTBENCH_GRADIO_CONCURRENCY_LIMIT",
        ),
    ],
)
def test_invalid_setting_is_named(
    clean_env: SetEnv, variable: str, value: str, named: str
) -> None:
    clean_env({variable: value})

    with pytest.raises(ValidationError) as caught:
        Settings()

    message = cli.describe_invalid_settings(caught.value)
    assert named in message, message
    assert repr(value) in message, message


def test_invalid_setting_without_flag_names_no_flag(clean_env: SetEnv) -> None:
    clean_env({"FRONTBENCH_GRADIO_CONCURRENCY_LIMIT": "-3"})

    with pytest.raises(ValidationError) as caught:
        Settings()

    message = cli.describe_invalid_settings(caught.value)
    assert "--concurrency-limit" not in message, message


@pytest.fixture
def gradio_process(backend_url: str) -> Iterator[tuple[ManagedProcess, str]]:
    port = free_port(HOST)
    process = ManagedProcess(
        f"gradio-{port}",
        python_argv(
            "-m",
            "frontbench_gradio",
            "--host",
            HOST,
            "--port",
            str(port),
            "--backend-url",
            backend_url,
        ),
        env={"FRONTBENCH_GRADIO_PORT": "1"},
    )
    with process:
        yield process, f"http://{HOST}:{port}"


def wait_for_exit(process: ManagedProcess, timeout_s: float) -> int | None:
    """Return the exit status once the process exits, or None after the timeout."""
    deadline = time.monotonic() + timeout_s
    while process.returncode is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return process.returncode


def test_cli_stops_cleanly_on_sigterm(
    gradio_process: tuple[ManagedProcess, str],
) -> None:
    # FRONTBENCH_GRADIO_PORT=1 is set too, so serving on the port proves
    # that the flag overrides the variable.
    process, url = gradio_process
    process.wait_ready(url + cli.READY_PATH)

    os.kill(process.pid, signal.SIGTERM)
    status = wait_for_exit(process, timeout_s=120)

    assert status == 0, process.output()
    assert "stopped Gradio" in process.output(), process.output()


def test_cli_invalid_backend_url_exits_2(clean_env: SetEnv) -> None:
    clean_env({})

    status = cli.main(["--backend-url", "ftp://127.0.0.1:9"])

    assert status == 2


def test_cli_invalid_backend_url_not_logged_as_used(
    clean_env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env({"BACKEND_URL": "ftp://x"})

    with caplog.at_level(logging.INFO):
        status = cli.main([])

    assert status == 2
    assert "using the backend" not in caplog.text, caplog.text


def test_cli_busy_port_exits_2(
    clean_env: SetEnv, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env({})
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]

        with caplog.at_level(logging.INFO):
            status = cli.main(
                [
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--backend-url",
                    "http://127.0.0.1:9",
                ]
            )

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert status == 2
    assert len(errors) == 1, errors
    assert f"{HOST}:{port}" in errors[0], errors
    assert "--port or FRONTBENCH_GRADIO_PORT" in errors[0], errors
