"""Tests of the Streamlit app's logic with AppTest, against a real backend.

AppTest runs app.py in this process like a browser session would, without a
browser: it clicks buttons, uploads files through st.file_uploader and
reads the elements of the page. The drawing canvas is a custom component that
AppTest cannot drive, so the browser test covers it.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv
from frontbench_streamlit import cli
from frontbench_streamlit.app import NO_DRAWING, Settings

APP_PATH = Path(cli.__file__).with_name("app.py")
# A prediction on a loaded machine shares two cores with other test runs.
RUN_TIMEOUT_S = 60

SetEnv = Callable[[Mapping[str, str]], None]


def run_app(clean_env: SetEnv, backend_url: str) -> AppTest:
    """Start one app session that talks to `backend_url` and run it once."""
    clean_env({"BACKEND_URL": backend_url})
    app = AppTest.from_file(str(APP_PATH), default_timeout=RUN_TIMEOUT_S)
    return app.run()


def noise_png(width: int) -> bytes:
    """Return a PNG of random pixels, which compresses badly and so is large."""
    image = Image.frombytes("L", (width, width), os.urandom(width * width))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def texts(app: AppTest) -> list[str]:
    """Return the markdown and subheader texts of the main area, in order."""
    return [element.value for element in (*app.subheader, *app.markdown)]


def errors(app: AppTest) -> list[str]:
    return [element.value for element in app.error]


def sidebar_texts(app: AppTest) -> list[str]:
    return [element.value for element in (*app.sidebar.markdown, *app.sidebar.caption)]


def test_app_shows_title_and_ready_backend(clean_env: SetEnv, backend_url: str) -> None:
    app = run_app(clean_env, backend_url)

    assert not app.exception, app.exception
    assert app.title[0].value == "Handwritten digit recognition"
    assert "Backend: ready" in sidebar_texts(app)
    assert any(text.startswith("Held-out accuracy: ") for text in sidebar_texts(app))
    assert any(text.startswith("Model: ") for text in sidebar_texts(app))
    assert any(text.startswith("Device: ") for text in sidebar_texts(app))


def test_app_offers_every_example(
    clean_env: SetEnv, backend_url: str, examples: list[Example]
) -> None:
    app = run_app(clean_env, backend_url)

    keys = {button.key for button in app.button}
    for label in sorted({example.label for example in examples}):
        assert f"example-{label}" in keys, f"no button for the example {label}"


@pytest.mark.parametrize("label", ["0", "3", "7", "9"])
def test_example_click_shows_label(
    clean_env: SetEnv, backend_url: str, label: str
) -> None:
    app = run_app(clean_env, backend_url)

    app.button(key=f"example-{label}").click().run()

    assert not app.exception, app.exception
    assert errors(app) == []
    assert f"Predicted digit: {label}" in texts(app)
    assert any(text.startswith("Confidence: ") for text in texts(app))
    assert any(text.startswith("Backend latency: ") for text in texts(app))
    assert len(app.get("vega_lite_chart")) == 1, "no probability chart"


def test_upload_shows_label(
    clean_env: SetEnv, backend_url: str, examples: list[Example]
) -> None:
    example = examples[-1]
    app = run_app(clean_env, backend_url)

    uploader = app.file_uploader(key="upload")
    uploader.upload(example.path.name, example.read_bytes(), "image/png").run()

    assert not app.exception, app.exception
    assert f"Predicted digit: {example.label}" in texts(app)


def test_upload_of_text_shows_invalid_image(
    clean_env: SetEnv, backend_url: str
) -> None:
    app = run_app(clean_env, backend_url)

    uploader = app.file_uploader(key="upload")
    uploader.upload("notes.png", b"this is a text file, not an image", "image/png")
    app.run()

    assert not app.exception, app.exception
    assert len(app.error) == 1
    assert "could not be used as an image" in app.error[0].value
    assert not any(text.startswith("Predicted digit") for text in texts(app))


def test_upload_works_after_an_error(
    clean_env: SetEnv, backend_url: str, examples: list[Example]
) -> None:
    example = examples[0]
    app = run_app(clean_env, backend_url)
    uploader = app.file_uploader(key="upload")
    uploader.upload("broken.png", b"\x89PNG but cut short", "image/png").run()
    assert len(app.error) == 1, "the broken upload showed no error"

    app.file_uploader(key="upload").set_value(
        (example.path.name, example.read_bytes(), "image/png")
    ).run()

    assert errors(app) == []
    assert f"Predicted digit: {example.label}" in texts(app)


def test_empty_drawing_shows_hint(clean_env: SetEnv, backend_url: str) -> None:
    app = run_app(clean_env, backend_url)

    app.button(key="predict-drawing").click().run()

    assert not app.exception, app.exception
    assert errors(app) == [NO_DRAWING]


def test_closed_port_shows_unreachable(clean_env: SetEnv) -> None:
    closed_url = f"http://127.0.0.1:{free_port()}"
    app = run_app(clean_env, closed_url)

    assert "Backend: unreachable" in sidebar_texts(app)

    app.button(key="example-5").click().run()

    assert not app.exception, app.exception
    assert len(app.error) == 1
    assert "is not reachable" in app.error[0].value
    assert closed_url in app.error[0].value


def test_large_upload_shows_too_large(
    clean_env: SetEnv, start_backend: Callable[..., str]
) -> None:
    small_backend = start_backend(max_upload_bytes=4096)
    app = run_app(clean_env, small_backend)

    large_png = noise_png(128)
    assert len(large_png) > 4096
    app.file_uploader(key="upload").upload("large.png", large_png, "image/png").run()

    assert not app.exception, app.exception
    assert len(app.error) == 1
    assert "too large" in app.error[0].value


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FRONTBENCH_STREAMLIT_PORT", "eighty"),
        ("FRONTBENCH_STREAMLIT_MAX_UPLOAD_MB", "0"),
        ("FRONTBENCH_STREAMLIT_STATUS_INTERVAL_S", "-1"),
        ("BACKEND_URL", "ftp://127.0.0.1:8000"),
    ],
)
def test_cli_invalid_setting_names_variable(
    clean_env: SetEnv, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    clean_env({variable: value})

    status = cli.main([])

    assert status == 2
    message = capsys.readouterr().err
    assert variable in message, message
    assert repr(value) in message, message


def test_cli_flags_override_environment(clean_env: SetEnv) -> None:
    clean_env(
        {
            "BACKEND_URL": "http://127.0.0.1:1",
            "FRONTBENCH_STREAMLIT_PORT": "9999",
            "FRONTBENCH_STREAMLIT_MAX_UPLOAD_MB": "3",
        }
    )
    args = cli.build_parser().parse_args(
        ["--port", "8600", "--backend-url", "http://127.0.0.1:2"]
    )

    settings = cli.load_settings(args)
    flags = cli.streamlit_flags(settings)

    assert settings.port == 8600
    assert settings.backend_url == "http://127.0.0.1:2"
    assert flags[flags.index("--server.port") + 1] == "8600"
    assert flags[flags.index("--server.maxUploadSize") + 1] == "3"
    assert flags[flags.index("--server.headless") + 1] == "true"
    assert flags[flags.index("--server.enableXsrfProtection") + 1] == "true"


def test_settings_defaults_match_cli(clean_env: SetEnv) -> None:
    clean_env({})

    settings = Settings()

    assert settings.port == cli.DEFAULT_PORT
    assert settings.max_upload_mb == 10
    assert settings.status_interval_s == 2.0


def test_server_stops_cleanly_on_sigterm(backend_url: str) -> None:
    port = free_port()
    server = ManagedProcess(
        f"streamlit-{port}",
        python_argv(
            "-m",
            "frontbench_streamlit",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-url",
            backend_url,
        ),
    )
    with server:
        server.wait_ready(f"http://127.0.0.1:{port}{cli.READY_PATH}")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200

        # Only the server's own pid gets the signal, as from a process manager.
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while server.returncode is None and time.monotonic() < deadline:
            time.sleep(0.2)
        status = server.returncode

    assert status == 0, server.output()
    assert "Streamlit stopped" in server.output()
    assert f"backend {backend_url}" in server.output()
