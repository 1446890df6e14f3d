"""Exercise starter: build the Dash frontend step by step.

This is the reference app, frontbench_dash/app.py, with the code of five steps
taken out. Each `# Step N` comment describes the code that goes there. Serve
this file with `frontbench frontend dash --app exercises/dash/app.py` and check
it with `nox -s exercise -- dash N`.

Dash callbacks are stateless: each one is a POST to /_dash-update-component
that any thread of any gunicorn worker can handle.
"""

# --- Imports ---------------------------------------------------------------
from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
from typing import Annotated, Any

import plotly.graph_objects as go
from dash import (
    ALL,
    Dash,
    Input,
    Output,
    State,
    callback,
    clientside_callback,
    ctx,
    dcc,
    html,
    no_update,
)
from dash.exceptions import PreventUpdate
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from frontbench_shared.api import ModelInfo, Prediction
from frontbench_shared.client import DEFAULT_BASE_URL, Client, Retries, resolve_base_url
from frontbench_shared.errors import BackendError, BackendUnavailable, user_message
from frontbench_shared.examples import list_examples

logger = logging.getLogger(__name__)

TITLE = "frontbench · Dash"
MiB = 1024 * 1024


# --- Settings --------------------------------------------------------------
class Settings(BaseSettings):
    """Configuration of the Dash app, read from `FRONTBENCH_DASH_*` variables."""

    model_config = SettingsConfigDict(env_prefix="FRONTBENCH_DASH_", extra="ignore")

    backend_url: str = Field(default=DEFAULT_BASE_URL, validation_alias="BACKEND_URL")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8050
    # gunicorn worker processes. Each one is a Python interpreter with its own
    # GIL, memory and backend client, so more workers use more cores and more
    # memory. Two keep serving while one is busy or restarting.
    workers: Annotated[int, Field(ge=1)] = 2
    # Threads per worker, each running one callback at a time. A prediction
    # mostly waits on the backend, so 8 threads keep a scaled backend busy,
    # while many more would mostly contend for the worker's GIL.
    threads: Annotated[int, Field(ge=1)] = 8
    # Seconds that a stopping worker gets to finish the callbacks it runs.
    graceful_timeout_s: Annotated[int, Field(ge=1)] = 10
    # One gunicorn line per request on stderr. It is off by default because
    # under load it floods the log.
    access_log: bool = False
    # Larger uploads get an error message without reaching the backend. The
    # default matches the backend's FRONTBENCH_MAX_UPLOAD_BYTES default.
    max_upload_bytes: Annotated[int, Field(ge=1)] = 10 * MiB
    # Seconds between two checks of the backend's state in each open page.
    poll_interval_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("backend_url")
    @classmethod
    def _check_backend_url(cls, value: str) -> str:
        return resolve_base_url(value)

    @property
    def max_request_bytes(self) -> int:
        """Maximum size of a callback request, which carries an upload as base64.

        Uploads of up to 3 times `max_upload_bytes` still get the message about
        the limit, instead of a 413 response that the page does not show.
        """
        return 4 * self.max_upload_bytes + MiB


settings = Settings()


# --- Client ----------------------------------------------------------------
# Each gunicorn worker process has one Client, shared by its threads because
# httpx clients are thread-safe, so connections to the backend are reused.
# It is created on first use inside the worker, after gunicorn forked it, so
# that no connection pool is shared across a fork.
@functools.cache
def get_client() -> Client:
    """Return this process's backend client, creating it on first use."""
    return Client(settings.backend_url)


# The state poll gets a client without retries: a failed check is repeated at
# the next poll anyway, and retries would log warnings every poll of every page.
@functools.cache
def get_status_client() -> Client:
    """Return this process's client for backend state checks."""
    return Client(settings.backend_url, retries=Retries(attempts=1))


# --- Layout ----------------------------------------------------------------
def data_url(data: bytes, media_type: str = "image/png") -> str:
    """Encode file bytes as a base64 data URL, the form dcc.Upload produces."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# The shipped examples, one per digit, keyed by "<label>-<index>" for the ids.
EXAMPLES = {f"{e.label}-{e.index}": e for e in list_examples()}

example_buttons = [
    html.Button(
        html.Img(src=data_url(example.read_bytes()), alt=f"Example digit {key}"),
        id={"type": "example", "index": key},
    )
    for key, example in EXAMPLES.items()
]

upload_column = html.Section(
    [
        # Step 1: upload and preview. Put a dcc.Upload with id="upload" here, with
        # ["Drag and drop or ", html.A("choose an image")] as its children and
        # max_size=settings.max_request_bytes. Give it no `accept` filter, because
        # dcc.Upload drops a file that does not match it without any callback. Below it,
        # put html.Img(id="preview", hidden=True, alt="Uploaded image").
        html.H2("Or try a held-out example"),
        html.Div(example_buttons, id="examples"),
    ]
)
answer_column = html.Section(
    [dcc.Loading(html.Div(id="result")), html.Div(id="error", role="alert")]
)

# The page's CSS is assets/style.css, which Dash links into the page.
app = Dash(__name__, title=TITLE, update_title="")
app.layout = html.Main(
    [
        html.H1("Handwritten digit recognition"),
        html.P("Backend: checking", id="backend-state"),
        html.Div([upload_column, answer_column], className="columns"),
        html.Div(id="model-info"),
        dcc.Interval(id="poll", interval=settings.poll_interval_s * 1000),
    ]
)

# Step 1: upload and preview. Show the upload in the browser, so the image is not sent
# back to it: a clientside_callback whose JavaScript function gets the upload's contents
# (a data URL) and returns [contents, false] for a PNG, JPEG, WebP, BMP or GIF data URL
# and [null, true] otherwise, with Output("preview", "src"), Output("preview",
# "hidden"), Input("upload", "contents") and prevent_initial_call=True.
#
# Then write load_example(n_clicks), a @callback with Output("upload", "contents"),
# Output("upload", "filename"), Input({"type": "example", "index": ALL}, "n_clicks") and
# prevent_initial_call=True. It looks up EXAMPLES[ctx.triggered_id["index"]] and returns
# (data_url(example.read_bytes()), example.path.name), so that a click on an example
# uploads it. Raise PreventUpdate when nothing was clicked.


# --- The predict callback --------------------------------------------------
# Step 2: call the backend through the client. Write predict(contents, filename), a
# @callback with Output("result", "children"), Output("error", "children"),
# Input("upload", "contents"), State("upload", "filename") and
# prevent_initial_call=True. Decode the upload with read_upload(contents), measure the
# time around get_client().predict(image, filename=filename or "upload"), and return
# (render_prediction(prediction, latency_ms), None).
#
# Step 5: handle errors. read_upload raises ValueError for an upload that is not a data
# URL or is too large: log it with logger.warning and return (None,
# render_error(str(exc))). Wrap the predict call in try/except BackendError, log the
# error with exc.request_id, and return (None, render_error(user_message(exc))).


def read_upload(contents: object) -> bytes:
    """Decode the `data:<type>;base64,<data>` URL of dcc.Upload into file bytes.

    Raises:
        ValueError: `contents` is not a base64 data URL, or the file is over
            `max_upload_bytes`.
    """
    text = contents if isinstance(contents, str) else ""
    header, _, payload = text.partition(",")
    # Browsers encode an empty file as the bare "data:".
    if header == "data:" and not payload:
        return b""
    try:
        if not (header.startswith("data:") and header.endswith(";base64")):
            raise binascii.Error
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ValueError(
            "The upload could not be read because it is not a base64 data URL. "
            "Choose the file again."
        ) from None

    if len(data) > settings.max_upload_bytes:
        raise ValueError(
            f"This file is too large: it has {len(data)} bytes, and this app "
            f"accepts at most {settings.max_upload_bytes} bytes. Upload a "
            "smaller image."
        )
    return data


@callback(
    Output("backend-state", "children"),
    Output("model-info", "children"),
    Input("poll", "n_intervals"),
    State("model-info", "children"),
)
def refresh_backend(n_intervals: int | None, model_info: Any) -> tuple[Any, Any]:
    """Return the backend's state line and the model information.

    The model information is read when the backend is ready and the page shows
    none. So it is read again after every outage that a poll detects, because the
    backend may serve another model when it comes back.
    """
    client = get_status_client()
    info: ModelInfo | None = None
    try:
        health = client.health()
        state = "ready" if health.status == "ready" else "not ready"
        detail = health.detail
        if state == "ready" and not model_info:
            info = client.model_info()
    except BackendError as exc:
        unreachable = isinstance(exc, BackendUnavailable)
        state = "unreachable" if unreachable else "not ready"
        detail = f"{exc.message} (request id {exc.request_id})"
    _log_state_change(state, detail)

    if state != "ready":
        return f"Backend: {state}", None
    if info is None:
        return "Backend: ready", no_update
    return "Backend: ready", [
        html.P(f"Model: {info.name} {info.version}"),
        html.P(f"Held-out accuracy: {info.heldout_accuracy * 100:.1f} %"),
        html.P(f"Device: {info.device}"),
    ]


# Every open page polls, so each worker logs only a change of state. Two
# threads that see the same change at once may both log it.
_last_state: str | None = None


def _log_state_change(state: str, detail: str) -> None:
    global _last_state
    if state != _last_state:
        _last_state = state
        level = logging.INFO if state == "ready" else logging.WARNING
        logger.log(level, "backend %s is %s: %s", settings.backend_url, state, detail)


# --- Rendering of the answer -----------------------------------------------
def render_prediction(prediction: Prediction, latency_ms: float) -> list[Any]:
    """Render the predicted digit, its confidence, the latency and the chart."""
    # Step 3: show the label. Return a list of components, starting with
    # html.P(f"Predicted digit: {prediction.label}", className="predicted-digit"), then
    # the confidence in percent and latency_ms, each in its own html.P.
    #
    # Step 4: draw the probability chart. Build a go.Figure of one go.Bar with the
    # digits (the keys of prediction.probabilities) on x and their probabilities on y,
    # with a category x axis and a y range of [0, 1]. Add dcc.Graph(id="chart",
    # figure=figure, config={"displayModeBar": False}) to the list.
    return []


# --- Rendering of errors ---------------------------------------------------
def render_error(message: str) -> html.P:
    """Render a message about a failed prediction for the page."""
    # Step 5: handle errors. Return the message in an html.P, which predict puts into
    # the "error" element (role="alert").
    return html.P()


# --- Entry point -----------------------------------------------------------
# `frontbench frontend dash` serves this Flask app with gunicorn.
server = app.server
# Werkzeug rejects larger callback requests with 413 before Dash parses them.
server.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
