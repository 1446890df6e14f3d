"""Exercise starter: build the Streamlit frontend step by step.

This is the reference app, frontbench_streamlit/app.py, with the code of five
steps taken out. Each `# Step N` comment describes the code that goes there.
Serve this file with `frontbench frontend streamlit --app
exercises/streamlit/app.py` and check it with `nox -s exercise -- streamlit N`.

Streamlit runs this file as a script from top to bottom on every interaction,
in one thread per browser session, and keeps per-session values in
`st.session_state`.
"""

# Imports.
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image, ImageOps
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from frontbench_shared.api import ModelInfo, Prediction
from frontbench_shared.client import Client, Retries, resolve_base_url
from frontbench_shared.errors import BackendError, BackendUnavailable, user_message
from frontbench_shared.examples import Example, list_examples

# Streamlit runs this file as the module __main__, so the name is spelled out.
logger = logging.getLogger("frontbench_streamlit.app")

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
PREVIEW_PIXELS = 160
DRAWING_PIXELS = 192
NO_DRAWING = "The canvas is empty. Draw a digit, then press Predict drawing."


# Settings.
class Settings(BaseSettings):
    """Configuration of the Streamlit frontend, read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FRONTBENCH_STREAMLIT_", extra="ignore", populate_by_name=True
    )

    backend_url: str = Field(
        default="http://127.0.0.1:8000", validation_alias="BACKEND_URL"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8501, ge=1, le=65535)
    # Streamlit's server.maxUploadSize, in units of 1024 * 1024 bytes. 10 equals
    # the backend's default FRONTBENCH_MAX_UPLOAD_BYTES (10 MiB), so Streamlit's
    # uploader rejects a larger file before it is sent.
    max_upload_mb: int = Field(default=10, ge=1)
    # The limit for each step of a backend request (connect, send, read). Only
    # the session's own script thread waits, and other sessions go on.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Every open browser tab sends GET /readyz to the backend at this interval,
    # so 100 idle tabs cost the backend 50 requests per second at 2 s.
    status_interval_s: float = Field(default=2.0, gt=0)
    # Streamlit's runner.fastReruns: a new interaction stops the running script
    # at once instead of waiting for it to finish.
    fast_reruns: bool = True
    # Streamlit's server.enableWebsocketCompression. Compression saves little
    # on these small messages and costs server CPU on every one of them.
    websocket_compression: bool = False

    @field_validator("backend_url")
    @classmethod
    def _check_backend_url(cls, value: str) -> str:
        return resolve_base_url(value)


@dataclass(frozen=True)
class Outcome:
    """A successful prediction with the image it was made for."""

    prediction: Prediction
    latency_ms: float
    image: bytes
    filename: str


# Client. httpx clients are thread-safe, so the script threads of all sessions
# share the process's two clients and their connection pools (httpx's default
# of 100 connections each) instead of opening connections per session.
@st.cache_resource
def get_client(backend_url: str, timeout_s: float, attempts: int) -> Client:
    """Create a process-wide backend client for these settings."""
    logger.info(
        "using the backend at %s (timeout %.1f s, %d attempts)",
        backend_url,
        timeout_s,
        attempts,
    )
    return Client(backend_url, timeout=timeout_s, retries=Retries(attempts=attempts))


def client_for(settings: Settings, *, retry: bool) -> Client:
    """Return the shared client for predictions, or for the state poll.

    The poll client never retries, because the next poll repeats a failed
    check anyway and each retry would log a warning at every poll of every
    open tab. The prediction client tries a failed connect 3 times.
    """
    attempts = 3 if retry else 1
    return get_client(settings.backend_url, settings.request_timeout_s, attempts)


# Layout.
def show_backend_status(settings: Settings) -> None:
    """Ask the backend whether it is ready and show that with the model info."""
    client = client_for(settings, retry=False)
    try:
        state = "ready" if client.health().status == "ready" else "not ready"
    except BackendUnavailable as exc:
        state = "unreachable"
        error: BackendError | None = exc
    except BackendError as exc:
        state = "not ready"
        error = exc
    else:
        error = None

    # Log only changes, because every open tab polls every few seconds.
    previous = st.session_state.get("backend_state")
    if state != previous:
        if error is not None:
            logger.warning(
                "backend is %s (request %s): %s", state, error.request_id, error
            )
        else:
            logger.info("backend is %s", state)
    st.session_state.backend_state = state

    # A backend that comes back may serve another model, so ask again.
    if state == "ready" and (
        previous != "ready" or "model_info" not in st.session_state
    ):
        try:
            st.session_state.model_info = client.model_info()
        except BackendError as exc:
            logger.warning(
                "reading the model info failed (request %s): %s", exc.request_id, exc
            )
            st.session_state.pop("model_info", None)

    st.markdown(f"Backend: {state}")
    info: ModelInfo | None = st.session_state.get("model_info")
    if state == "ready" and info is not None:
        st.caption(f"Model: {info.name} {info.version}")
        st.caption(f"Held-out accuracy: {info.heldout_accuracy * 100:.1f} %")
        st.caption(f"Device: {info.device}")


def show_inputs(settings: Settings) -> None:
    """Lay out the upload, the drawing canvas and the example digits."""
    upload_column, drawing_column = st.columns(2)
    with upload_column:
        # Step 1: upload and preview. Add st.file_uploader labelled "Upload an image of
        # one digit" that accepts UPLOAD_TYPES. Give it key="upload", because the Locust
        # user of step 6 finds the widget by that key. Pass on_change=predict_upload and
        # args=(settings,), so that each new file is predicted. Streamlit lists the
        # uploaded file under the widget.
        pass
    with drawing_column:
        # Importing the canvas registers its component, which needs a running
        # Streamlit server, and cli.py imports this module without one.
        from streamlit_drawable_canvas import st_canvas

        st.markdown("Draw one digit")
        drawing = st_canvas(
            stroke_width=DRAWING_PIXELS // 12,
            stroke_color="#000000",
            background_color="#ffffff",
            height=DRAWING_PIXELS,
            width=DRAWING_PIXELS,
            return_image_data=True,
            key="canvas",
        )
        # The canvas sends each stroke when the mouse button is released, but
        # its value reaches only this return value and no callback. So the
        # drawing is sent in the rerun that the button click starts.
        if st.button("Predict drawing", key="predict-drawing"):
            predict_drawing(settings, drawing)

    examples = first_example_per_label()
    if not examples:
        return

    st.markdown("Or try a held-out example")
    for column, example in zip(st.columns(len(examples)), examples, strict=True):
        with column:
            st.image(preview(example.read_bytes(), pixels=48))
            st.button(
                example.label,
                key=f"example-{example.label}",
                help=f"Predict the example image {example.path.name}",
                on_click=predict_example,
                args=(settings, example),
            )


@st.cache_resource
def first_example_per_label() -> list[Example]:
    """Return one shipped example digit for each label."""
    chosen: dict[str, Example] = {}
    for example in list_examples():
        chosen.setdefault(example.label, example)
    return list(chosen.values())


# The predict callback. Streamlit runs widget callbacks before the rerun that
# the interaction starts, so the rerun renders the stored outcome.
def predict(settings: Settings, image: bytes, filename: str) -> None:
    """Send one image to the backend and store the outcome or the error."""
    # Step 2: call the backend through the client. Get the shared client with
    # client_for(settings, retry=True) and measure the time around its predict(image,
    # filename=filename). Store Outcome(prediction, latency_ms, image, filename) in
    # st.session_state.outcome and set st.session_state.error to None.
    #
    # Step 5: handle errors. Wrap the predict call in try/except BackendError. On an
    # error, log it with logger.warning (the filename, exc.request_id and exc), set
    # st.session_state.outcome to None, store user_message(exc) in
    # st.session_state.error and return.


def predict_upload(settings: Settings) -> None:
    """Predict the file that was just uploaded, unless it was removed."""
    upload = st.session_state.get("upload")
    if upload is not None:
        predict(settings, upload.getvalue(), upload.name)


def predict_example(settings: Settings, example: Example) -> None:
    """Predict one of the shipped example digits."""
    predict(settings, example.read_bytes(), example.path.name)


def predict_drawing(settings: Settings, drawing: Any) -> None:
    """Predict the drawing on the canvas, unless the canvas is empty."""
    strokes = (drawing.json_data or {}).get("objects", [])
    image = drawing.image_bytes
    if not strokes or image is None:
        st.session_state.outcome = None
        st.session_state.error = NO_DRAWING
        return

    predict(settings, image, "drawing.png")


# Rendering of the answer.
def show_prediction(outcome: Outcome) -> None:
    """Show the image, the predicted digit and every class probability."""
    # Step 3: show the label. Split the row with st.columns([1, 2]). In the first
    # column, show st.image(preview(outcome.image, pixels=PREVIEW_PIXELS),
    # caption=outcome.filename). In the second, write st.subheader(f"Predicted digit:
    # {outcome.prediction.label}"), then the confidence in percent and
    # outcome.latency_ms with st.markdown.
    #
    # Step 4: draw the probability chart. Build a pandas DataFrame with a "digit" column
    # (the keys of outcome.prediction.probabilities) and a "probability" column (its
    # values), and draw it with st.bar_chart(frame, x="digit", y="probability",
    # sort=False, height=240).


# Cached as immutable PNG bytes, so that every session and rerun can share
# one copy and st.image sends it without encoding it again.
@st.cache_resource(max_entries=64)
def preview(image: bytes, *, pixels: int) -> bytes:
    """Fit an image into a square of `pixels` and return it as PNG bytes.

    Small images are scaled up by a whole factor with nearest-neighbour
    sampling, so they stay sharp, and large ones are scaled down. A photo is
    turned upright by its EXIF orientation, as the backend does.

    Raises:
        OSError: Pillow cannot decode the image.
    """
    decoded = Image.open(io.BytesIO(image))
    decoded.seek(0)  # The first frame of an animated GIF or a multi-page TIFF.
    picture = ImageOps.exif_transpose(decoded).convert("RGB")
    if max(picture.size) > pixels:
        picture.thumbnail((pixels, pixels))
    else:
        scale = pixels // max(picture.size)
        size = (picture.width * scale, picture.height * scale)
        picture = picture.resize(size, Image.Resampling.NEAREST)

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# Rendering of errors.
def show_error(message: str) -> None:
    """Show what went wrong and what to do, in place of the answer."""
    # Step 5: handle errors. Show the message with st.error, which draws it in a red
    # box.


# Entry point: Streamlit runs this file with __name__ set to "__main__".
def main() -> None:
    """Render the whole page for one rerun."""
    settings = Settings()
    st.set_page_config(page_title="frontbench · Streamlit", layout="wide")
    st.title("Handwritten digit recognition")

    with st.sidebar:
        st.fragment(show_backend_status, run_every=settings.status_interval_s)(settings)

    show_inputs(settings)
    st.divider()
    error = st.session_state.get("error")
    outcome = st.session_state.get("outcome")
    if error:
        show_error(error)
    elif outcome is not None:
        show_prediction(outcome)


if __name__ == "__main__":
    main()
