"""Exercise starter: build the Gradio frontend step by step.

This is the reference app, frontbench_gradio/app.py, with the code of five
steps taken out. Each `# Step N` comment describes the code that goes there.
Serve this file with `frontbench frontend gradio --app exercises/gradio/app.py`
and check it with `nox -s exercise -- gradio N`.

Every event goes through Gradio's queue, and the upload's predict event is also
the API endpoint `/predict`.
"""

# --- Imports ---------------------------------------------------------------
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, TypeAlias

import gradio as gr
import pandas as pd
from PIL import Image
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from frontbench_shared.api import Prediction
from frontbench_shared.client import DEFAULT_BASE_URL, Client, ImageInput, Retries
from frontbench_shared.errors import BackendError, BackendUnavailable, user_message
from frontbench_shared.examples import list_examples

logger = logging.getLogger(__name__)

TITLE = "frontbench · Gradio"
MiB = 1024 * 1024

NO_DRAWING = "> The canvas is empty. Draw a digit, then press Predict drawing."

# The result text, the chart data and the error text of one prediction.
Outputs: TypeAlias = tuple[str, pd.DataFrame | None, str]


# --- Settings --------------------------------------------------------------
class Settings(BaseSettings):
    """Configuration of the Gradio app, read from `FRONTBENCH_GRADIO_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix="FRONTBENCH_GRADIO_", extra="ignore", populate_by_name=True
    )

    backend_url: str = Field(DEFAULT_BASE_URL, validation_alias="BACKEND_URL")
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    # Runs of one event at the same time in this process. Gradio's own
    # default of 1 makes every user wait for the one before. A prediction
    # mostly waits on the backend, so an estimated 8 at a time keep a scaled
    # backend busy, and more would add threads that compete for one GIL.
    concurrency_limit: int = Field(8, ge=1)
    # Events that may wait in the queue. Beyond this, a user gets "queue is
    # full" at once instead of waiting for minutes behind everyone else.
    max_queue_size: int = Field(64, ge=1)
    # Gradio rejects larger uploads before they reach the callback. The
    # default matches the backend's FRONTBENCH_MAX_UPLOAD_BYTES default.
    max_upload_bytes: int = Field(10 * MiB, ge=1)
    # A prediction's thread blocks on the backend for at most this long.
    request_timeout_s: float = Field(30.0, gt=0)
    # Every open page sends GET /readyz to the backend at this interval, so
    # 100 idle pages cost the backend 50 requests per second at 2 s.
    status_interval_s: float = Field(2.0, gt=0)


# --- Client ----------------------------------------------------------------
# Gradio runs the events of all sessions in one process, on a thread pool, so
# one thread-safe Client per process serves every session and reuses its
# connections. The callbacks get it as their first argument.
def create_client(settings: Settings) -> Client:
    """Create the backend client for predictions that all sessions share."""
    # Client rejects an invalid URL, so the URL is logged only once accepted.
    client = Client(settings.backend_url, timeout=settings.request_timeout_s)
    logger.info(
        "using the backend at %s (timeout %.1f s)",
        settings.backend_url,
        settings.request_timeout_s,
    )
    return client


def create_status_client(settings: Settings) -> Client:
    """Create the client for the backend state checks, which never retries.

    A failed check is repeated at the next poll anyway, and each retry would
    log a warning for every open page.
    """
    return Client(
        settings.backend_url,
        timeout=settings.request_timeout_s,
        retries=Retries(attempts=1),
    )


# --- Layout ----------------------------------------------------------------
def build_demo(settings: Settings, client: Client, status_client: Client) -> gr.Blocks:
    """Build the Blocks app and configure its queue from `settings`.

    Predictions use `client`, and the backend state checks `status_client`.
    """
    demo = gr.Blocks(title=TITLE, analytics_enabled=False)
    with demo:
        gr.Markdown("# Handwritten digit recognition")
        backend_state = gr.Markdown("Backend: checking", elem_id="backend-state")
        # The last state this session saw, so that only changes are logged.
        last_state = gr.State(None)
        with gr.Row():
            with gr.Column():
                with gr.Tab("Upload"):
                    # Step 1: upload and preview. Add upload = gr.Image(label="Upload an
                    # image of one digit", elem_id="upload", sources=["upload"],
                    # height=280), which shows the uploaded image. Below it, say which
                    # file types and size are accepted with gr.Markdown (the size is
                    # settings.max_upload_bytes / MiB megabytes). If
                    # first_example_per_label() returns examples, add
                    # gr.Examples(examples, inputs=upload, label="Or try a held-out
                    # example").
                    pass
                with gr.Tab("Draw"):
                    drawing = gr.Sketchpad(
                        label="Draw one digit",
                        elem_id="drawing",
                        type="pil",
                        canvas_size=(280, 280),
                        brush=gr.Brush(colors=["#000000"], default_size=18),
                    )
                    draw_button = gr.Button("Predict drawing", variant="primary")
            with gr.Column():
                answer = gr.Markdown(elem_id="answer")
                error = gr.Markdown(elem_id="error")
                chart = gr.BarPlot(
                    x="digit",
                    y="probability",
                    y_lim=[0, 1],
                    label="Class probabilities",
                    elem_id="probabilities",
                )
        model_info = gr.Markdown(elem_id="model-info")
        timer = gr.Timer(settings.status_interval_s)

        # Step 2: call the backend through the client. Run predict_upload whenever the
        # upload changes: upload.change(partial(predict_upload, client), inputs=upload,
        # outputs=[answer, chart, error], api_name="predict", preprocess=False). The
        # Locust user of step 6 calls the event by its api_name. Without preprocessing,
        # the callback gets the uploaded file as it is, so the backend can say why a
        # file is not an image.
        draw_button.click(
            partial(predict_drawing, client),
            inputs=drawing,
            outputs=[answer, chart, error],
            api_name="predict_drawing",
        )
        # Every open page sends a backend check every few seconds, and one
        # check is one or two quick GETs, so the checks get no concurrency
        # limit. They share Gradio's worker threads (40) with predictions.
        # The page-load check can be called as `/backend_status`, but the
        # API page does not list it.
        check_options: dict[str, Any] = {
            "inputs": last_state,
            "outputs": [backend_state, model_info, last_state],
            "concurrency_limit": None,
            "show_progress": "hidden",
        }
        demo.load(
            partial(refresh_backend, status_client),
            api_name="backend_status",
            api_visibility="undocumented",
            **check_options,
        )
        timer.tick(
            partial(refresh_backend, status_client),
            api_visibility="private",
            **check_options,
        )

    demo.queue(
        max_size=settings.max_queue_size,
        default_concurrency_limit=settings.concurrency_limit,
    )
    return demo


# --- The predict callback --------------------------------------------------
def predict_upload(client: Client, file: dict[str, Any] | None) -> Outputs:
    """Predict the digit in an uploaded file, given as Gradio's file data."""
    # Step 2: call the backend through the client. `file` is Gradio's file data (a
    # dict), or None when the upload was cleared. Return ("", None, "") for None, else
    # predict(client, file["path"], file.get("orig_name")).
    return "", None, ""


def predict_drawing(client: Client, sketch: dict[str, Any] | None) -> Outputs:
    """Predict the digit drawn on the sketchpad."""
    composite = None if sketch is None else sketch.get("composite")
    if composite is None:
        return "", None, NO_DRAWING

    # The strokes lie on a transparent canvas, so flatten it onto white.
    white = Image.new("RGBA", composite.size, "white")
    flat = Image.alpha_composite(white, composite.convert("RGBA")).convert("L")
    darkest, _ = flat.getextrema()
    if darkest == 255:
        return "", None, NO_DRAWING
    return predict(client, flat, "drawing.png")


def predict(client: Client, image: ImageInput, filename: str | None) -> Outputs:
    """Send one image to the backend and render the prediction or the error."""
    # Step 2: call the backend through the client. Measure the time around
    # client.predict(image, filename=filename) and return render_answer(prediction,
    # latency_ms).
    #
    # Step 5: handle errors. Wrap the predict call in try/except BackendError and return
    # render_error(exc).
    return "", None, ""


def refresh_backend(
    client: Client, previous: str | None
) -> tuple[str, Any, str | None]:
    """Check the backend and return its state line, model information and state.

    The model information is read again whenever the backend becomes ready,
    because a backend that comes back may serve another model.
    """
    error: BackendError | None = None
    try:
        state = "ready" if client.health().status == "ready" else "not ready"
    except BackendUnavailable as exc:
        state, error = "unreachable", exc
    except BackendError as exc:
        state, error = "not ready", exc

    # Log only changes, because every open page polls every few seconds.
    if state != previous and error is not None:
        logger.warning(
            "backend is %s (request %s): %s", state, error.request_id, error.message
        )
    elif state != previous:
        logger.info("backend is %s", state)

    if state != "ready":
        return f"Backend: {state}", "", state
    if previous == "ready":
        return "Backend: ready", gr.skip(), state

    try:
        info = client.model_info()
    except BackendError as exc:
        logger.warning(
            "reading the model info failed (request %s): %s",
            exc.request_id,
            exc.message,
        )
        # Forget the state, so that the next check reads the model again.
        return "Backend: ready", "", None
    model_lines = (
        f"Model: {info.name} {info.version}\n\n"
        f"Held-out accuracy: {info.heldout_accuracy * 100:.1f} %\n\n"
        f"Device: {info.device}"
    )
    return "Backend: ready", model_lines, state


def first_example_per_label() -> list[str]:
    """Return the path of one shipped example digit for each label."""
    chosen: dict[str, str] = {}
    for example in list_examples():
        chosen.setdefault(example.label, str(example.path))
    return list(chosen.values())


# --- Rendering of the answer -----------------------------------------------
def render_answer(prediction: Prediction, latency_ms: float) -> Outputs:
    """Return the answer text and the chart data of a prediction."""
    # Step 3: show the label. The first value is Markdown for the answer element: "###
    # Predicted digit: {label}", then the confidence in percent and latency_ms on their
    # own lines.
    #
    # Step 4: draw the probability chart. The second value is a pandas DataFrame with a
    # "digit" column (the keys of prediction.probabilities) and a "probability" column
    # (its values), which the gr.BarPlot draws. The third value is the error text, ""
    # here.
    return "", None, ""


# --- Rendering of errors ---------------------------------------------------
def render_error(exc: BackendError) -> Outputs:
    """Log a failed prediction and return the message to show in the page."""
    # Step 5: handle errors. Log the error with logger.warning (exc.request_id, its type
    # and exc.message) and return ("", None, f"> {user_message(exc)}"), so the message
    # shows as a quote in the error element.
    return "", None, ""


# --- Entry point -----------------------------------------------------------
if __name__ == "__main__":
    import sys

    from frontbench_gradio.cli import main

    raise SystemExit(main(sys.argv[1:]))
