"""Tests of the shared client against a real backend, and of faults via httpx."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from frontbench_shared import client as client_module
from frontbench_shared.api import (
    PREDICT_PATH,
    REQUEST_ID_HEADER,
    UPLOAD_FIELD,
    BatchingInfo,
    ErrorBody,
    ErrorKind,
    ModelInfo,
)
from frontbench_shared.client import (
    DEFAULT_BASE_URL,
    AsyncClient,
    Client,
    ImageInput,
    Retries,
    resolve_base_url,
)
from frontbench_shared.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidImage,
    PayloadTooLarge,
)
from frontbench_shared.examples import Example
from frontbench_shared.processes import free_port

FAST_RETRIES = Retries(attempts=3, backoff=0.01, max_backoff=0.05)
FAKE_URL = "http://backend.test"
DIGIT_LABELS = [str(digit) for digit in range(10)]

MODEL_INFO = ModelInfo(
    name="digits-cnn",
    version="1",
    labels=DIGIT_LABELS,
    input_size=(8, 8),
    device="cpu",
    torch_threads=1,
    batching=BatchingInfo(enabled=True, max_batch_size=8, max_wait_ms=2.0),
    heldout_accuracy=0.97,
    dataset="sklearn digits",
    trained_at="2026-01-01T00:00:00Z",
    versions={"torch": "2.13.0"},
)


def image_inputs(example: Example, tmp_path: Path) -> dict[str, Any]:
    """Return the same digit as each input type that `predict` accepts."""
    path = tmp_path / example.path.name
    path.write_bytes(example.read_bytes())
    with Image.open(example.path) as opened:
        pil_image = opened.copy()
    return {
        "bytes": example.read_bytes(),
        "bytearray": bytearray(example.read_bytes()),
        "str path": str(path),
        "pathlib path": path,
        "PIL image": pil_image,
    }


INPUT_KINDS = ["bytes", "bytearray", "str path", "pathlib path", "PIL image"]


def noise_png(side: int) -> bytes:
    """Return a PNG of random pixels, which compresses badly and so is large."""
    image = Image.frombytes("L", (side, side), bytes(range(256)) * (side * side // 256))
    image = image.rotate(33, expand=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


# Real backend


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_predict_input_kinds(
    kind: str, backend_url: str, examples: list[Example], tmp_path: Path
) -> None:
    example = examples[0]
    image = image_inputs(example, tmp_path)[kind]

    with Client(backend_url) as client:
        prediction = client.predict(image)

    assert prediction.label == example.label, f"{kind}: {example.path.name}"
    assert prediction.request_id


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_async_predict_input_kinds(
    kind: str, backend_url: str, examples: list[Example], tmp_path: Path
) -> None:
    example = examples[-1]
    image = image_inputs(example, tmp_path)[kind]

    async def predict() -> str:
        async with AsyncClient(backend_url) as client:
            prediction = await client.predict(image)
        return prediction.label

    assert asyncio.run(predict()) == example.label, f"{kind}: {example.path.name}"


def test_predict_every_example(backend_url: str, examples: list[Example]) -> None:
    with Client(backend_url) as client:
        labels = {
            example.path.name: client.predict(example.path) for example in examples
        }

    for example in examples:
        assert labels[example.path.name].label == example.label, example.path.name


def test_model_info_real_backend(backend_url: str) -> None:
    with Client(backend_url) as client:
        info = client.model_info()

    assert info.labels == DIGIT_LABELS
    assert info.torch_threads == 1


def test_health_real_backend_ready(backend_url: str) -> None:
    with Client(backend_url) as client:
        health = client.health()

    assert health.status == "ready"


def test_async_model_info_and_health(backend_url: str) -> None:
    async def fetch() -> tuple[ModelInfo, str]:
        async with AsyncClient(backend_url) as client:
            return await client.model_info(), (await client.health()).status

    info, status = asyncio.run(fetch())

    assert info.labels == DIGIT_LABELS
    assert status == "ready"


def test_predict_text_file_invalid_image(backend_url: str, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image\n")
    # The same upload sent without the client shows the backend's own message.
    raw = httpx.post(
        backend_url + PREDICT_PATH,
        files={UPLOAD_FIELD: ("notes.txt", text_file.read_bytes())},
    )
    expected = ErrorBody.model_validate_json(raw.content)

    with Client(backend_url) as client, pytest.raises(InvalidImage) as caught:
        client.predict(text_file)

    error = caught.value
    assert error.message == expected.detail
    assert error.kind == expected.kind
    assert error.status_code == raw.status_code
    assert error.status_code in (415, 422)
    assert error.request_id
    assert error.url == backend_url + PREDICT_PATH


def test_async_predict_text_file_invalid_image(backend_url: str) -> None:
    async def predict() -> None:
        async with AsyncClient(backend_url) as client:
            await client.predict(b"plain text, not an image", filename="notes.txt")

    with pytest.raises(InvalidImage) as caught:
        asyncio.run(predict())

    assert caught.value.message
    assert caught.value.status_code in (415, 422)


def test_predict_over_upload_limit(start_backend: Callable[..., str]) -> None:
    upload_limit = 4096
    url = start_backend(max_upload_bytes=upload_limit)
    image = noise_png(128)
    assert len(image) > upload_limit, "the test image must be over the limit"

    with Client(url) as client, pytest.raises(PayloadTooLarge) as caught:
        client.predict(image, filename="large.png")

    error = caught.value
    assert error.status_code == 413
    assert error.kind == ErrorKind.PAYLOAD_TOO_LARGE
    assert error.message


def test_unreachable_port_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with (
        Client(url, retries=FAST_RETRIES) as client,
        pytest.raises(BackendUnavailable) as caught,
    ):
        client.health()

    error = caught.value
    assert not isinstance(error, BackendTimeout)
    assert error.url == url + "/readyz"
    assert error.request_id
    assert "3 times" in error.message


def test_async_unreachable_port_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def predict() -> None:
        async with AsyncClient(url, retries=FAST_RETRIES) as client:
            await client.predict(b"\x89PNG")

    with pytest.raises(BackendUnavailable) as caught:
        asyncio.run(predict())

    assert caught.value.url == url + PREDICT_PATH


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Start a TCP server that accepts connections and never responds."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stopped = threading.Event()

    def accept() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stopped.set()
        listener.close()
        thread.join(5)
        for connection in accepted:
            connection.close()


def test_silent_server_timeout_not_retried(
    silent_server: tuple[str, list[socket.socket]],
) -> None:
    url, accepted = silent_server

    with (
        Client(url, timeout=0.5, retries=FAST_RETRIES) as client,
        pytest.raises(BackendTimeout) as caught,
    ):
        client.model_info()

    assert caught.value.url == url + "/v1/model"
    assert caught.value.request_id
    assert len(accepted) == 1, "a read timeout must not be retried"


def test_async_silent_server_timeout(
    silent_server: tuple[str, list[socket.socket]],
) -> None:
    url, accepted = silent_server

    async def predict() -> None:
        async with AsyncClient(url, timeout=0.5, retries=FAST_RETRIES) as client:
            await client.predict(b"\x89PNG")

    with pytest.raises(BackendTimeout):
        asyncio.run(predict())

    assert len(accepted) == 1, "a read timeout must not be retried"


# Base URL resolution


@pytest.mark.parametrize(
    ("argument", "env", "expected"),
    [
        (None, {}, DEFAULT_BASE_URL),
        (None, {"BACKEND_URL": "http://backend:9000"}, "http://backend:9000"),
        (
            None,
            {"BACKEND_URL": "https://example.test/api/"},
            "https://example.test/api",
        ),
        (
            "http://127.0.0.1:1234",
            {"BACKEND_URL": "http://other:1"},
            "http://127.0.0.1:1234",
        ),
        (" http://127.0.0.1:1234/ ", {}, "http://127.0.0.1:1234"),
        (None, {"BACKEND_URL": ""}, DEFAULT_BASE_URL),
    ],
)
def test_resolve_base_url_sources(
    argument: str | None,
    env: Mapping[str, str],
    expected: str,
    clean_env: Callable[[Mapping[str, str]], None],
) -> None:
    clean_env(env)

    assert resolve_base_url(argument) == expected
    assert Client(argument).base_url == expected


@pytest.mark.parametrize(
    ("argument", "env", "source"),
    [
        ("ftp://127.0.0.1", {}, "base_url"),
        ("127.0.0.1:8000", {}, "base_url"),
        ("http://", {}, "base_url"),
        ("http://[::1", {}, "base_url"),
        (None, {"BACKEND_URL": "backend:8000"}, "BACKEND_URL"),
    ],
)
def test_resolve_base_url_invalid(
    argument: str | None,
    env: Mapping[str, str],
    source: str,
    clean_env: Callable[[Mapping[str, str]], None],
) -> None:
    clean_env(env)

    with pytest.raises(ValueError, match="Invalid backend URL") as caught:
        resolve_base_url(argument)

    message = str(caught.value)
    assert repr(argument or env["BACKEND_URL"]) in message
    assert source in message
    assert "http://" in message, "the message shows a valid URL"


# Faults injected with httpx.MockTransport


class Recorder:
    """An httpx handler that returns queued responses and records requests."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = (
            self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def error_response(status: int, kind: ErrorKind, detail: str) -> httpx.Response:
    body = ErrorBody(detail=detail, kind=kind, request_id="server-id")
    return httpx.Response(status, content=body.model_dump_json())


def model_info_response() -> httpx.Response:
    return httpx.Response(200, content=MODEL_INFO.model_dump_json())


def fake_client(recorder: Recorder, retries: Retries = FAST_RETRIES) -> Client:
    return Client(FAKE_URL, retries=retries, transport=httpx.MockTransport(recorder))


def unavailable() -> httpx.Response:
    return error_response(503, ErrorKind.NOT_READY, "The model is still loading.")


def test_retry_503_then_success() -> None:
    recorder = Recorder(unavailable(), unavailable(), model_info_response())

    with fake_client(recorder) as client:
        info = client.model_info()

    assert info == MODEL_INFO
    assert len(recorder.requests) == 3


def test_retry_503_every_time_raises() -> None:
    recorder = Recorder(unavailable())

    with fake_client(recorder) as client, pytest.raises(BackendUnavailable) as caught:
        client.model_info()

    assert len(recorder.requests) == FAST_RETRIES.attempts
    assert caught.value.message == "The model is still loading."
    assert caught.value.status_code == 503
    assert caught.value.kind == ErrorKind.NOT_READY


def test_retry_connect_error_then_success() -> None:
    refused = httpx.ConnectError("Connection refused")
    recorder = Recorder(refused, model_info_response())

    with fake_client(recorder) as client:
        assert client.model_info() == MODEL_INFO

    assert len(recorder.requests) == 2


def test_retry_keeps_request_id(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(unavailable(), unavailable(), model_info_response())

    client = fake_client(recorder)
    with caplog.at_level(logging.WARNING, logger=client_module.__name__), client:
        client.model_info()

    request_ids = {request.headers[REQUEST_ID_HEADER] for request in recorder.requests}
    assert len(request_ids) == 1, "one call keeps its request id across retries"
    (request_id,) = request_ids
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(request_id in record.getMessage() for record in warnings)


def test_request_id_new_per_call() -> None:
    recorder = Recorder(model_info_response())

    with fake_client(recorder) as client:
        client.model_info()
        client.model_info()

    first, second = (
        request.headers[REQUEST_ID_HEADER] for request in recorder.requests
    )
    assert first != second


@pytest.mark.parametrize(
    ("response", "error_type"),
    [
        (error_response(422, ErrorKind.INVALID_IMAGE, "Not an image."), InvalidImage),
        (
            error_response(415, ErrorKind.UNSUPPORTED_FORMAT, "SVG is not read."),
            InvalidImage,
        ),
        (
            error_response(413, ErrorKind.PAYLOAD_TOO_LARGE, "Over 1 MiB."),
            PayloadTooLarge,
        ),
        (
            error_response(422, ErrorKind.IMAGE_TOO_LARGE, "Too many pixels."),
            PayloadTooLarge,
        ),
        (error_response(404, ErrorKind.NOT_FOUND, "No such route."), BackendError),
        (error_response(400, ErrorKind.INVALID_REQUEST, "Bad form."), BackendError),
        (error_response(500, ErrorKind.INTERNAL, "Inference failed."), BackendError),
    ],
)
def test_error_status_not_retried(
    response: httpx.Response, error_type: type[BackendError]
) -> None:
    recorder = Recorder(response)
    body = ErrorBody.model_validate_json(response.content)

    with fake_client(recorder) as client, pytest.raises(error_type) as caught:
        client.predict(b"\x89PNG")

    error = caught.value
    assert type(error) is error_type
    assert len(recorder.requests) == 1, "an error status other than 503 is final"
    assert error.message == body.detail
    assert error.kind == body.kind
    assert error.status_code == response.status_code
    assert error.request_id == "server-id"
    assert error.url == FAKE_URL + PREDICT_PATH


def test_non_json_error_readable() -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>"
    recorder = Recorder(
        httpx.Response(502, text=page, headers={REQUEST_ID_HEADER: "proxy-id"})
    )

    with fake_client(recorder) as client, pytest.raises(BackendError) as caught:
        client.model_info()

    error = caught.value
    assert "502 Bad Gateway" in error.message
    assert "nginx" in error.message, "the message shows the start of the body"
    assert "\n" not in error.message
    assert error.kind is None
    assert error.request_id == "proxy-id"


def test_non_json_error_long_body_cut() -> None:
    recorder = Recorder(httpx.Response(500, text="x" * 10_000))

    with fake_client(recorder) as client, pytest.raises(BackendError) as caught:
        client.model_info()

    assert len(caught.value.message) < 500
    assert caught.value.message.endswith("...")


def test_read_timeout_not_retried() -> None:
    recorder = Recorder(httpx.ReadTimeout("timed out"), model_info_response())

    with fake_client(recorder) as client, pytest.raises(BackendTimeout) as caught:
        client.model_info()

    assert len(recorder.requests) == 1
    assert caught.value.request_id == recorder.requests[0].headers[REQUEST_ID_HEADER]


def test_health_503_not_retried() -> None:
    not_ready = httpx.Response(
        503, json={"status": "not_ready", "detail": "Warming up the model."}
    )
    recorder = Recorder(not_ready, httpx.Response(200, json={"status": "ready"}))

    with fake_client(recorder) as client:
        health = client.health()

    assert health.status == "not_ready"
    assert health.detail == "Warming up the model."
    assert len(recorder.requests) == 1


def test_health_503_from_proxy_not_ready() -> None:
    recorder = Recorder(httpx.Response(503, text="Service Unavailable"))

    with fake_client(recorder) as client:
        health = client.health()

    assert health.status == "not_ready"
    assert "503" in health.detail


def test_invalid_success_body_raises() -> None:
    recorder = Recorder(httpx.Response(200, json={"label": "7"}))

    with fake_client(recorder) as client, pytest.raises(BackendError) as caught:
        client.predict(b"\x89PNG")

    assert "not a valid Prediction" in caught.value.message
    assert caught.value.status_code == 200


def test_backoff_delays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    retries = Retries(attempts=6, backoff=0.05, max_backoff=0.2)
    delays: list[float] = []
    monkeypatch.setattr(time, "sleep", delays.append)
    recorder = Recorder(unavailable())

    with fake_client(recorder, retries) as client, pytest.raises(BackendUnavailable):
        client.model_info()

    assert len(delays) == retries.attempts - 1
    for retry, delay in enumerate(delays, start=1):
        ceiling = min(retries.max_backoff, retries.backoff * 2 ** (retry - 1))
        assert ceiling / 2 <= delay <= ceiling, f"retry {retry}: {delay}"


@pytest.mark.parametrize("retry", range(1, 40))
def test_retries_delay_within_max(retry: int) -> None:
    retries = Retries(backoff=0.1, max_backoff=2.0)

    delay = retries.delay(retry)

    assert 0 < delay <= retries.max_backoff


def test_retries_one_attempt_no_retry() -> None:
    recorder = Recorder(unavailable(), model_info_response())

    with (
        fake_client(recorder, Retries(attempts=1)) as client,
        pytest.raises(BackendUnavailable),
    ):
        client.model_info()

    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"backoff": -1.0}, "backoff"),
        ({"backoff": 1.0, "max_backoff": 0.5}, "max_backoff"),
    ],
)
def test_retries_invalid_values(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}=") as caught:
        Retries(**options)

    assert "invalid" in str(caught.value)


def test_async_retry_503_then_success() -> None:
    recorder = Recorder(unavailable(), model_info_response())

    async def fetch() -> ModelInfo:
        transport = httpx.MockTransport(recorder)
        async with AsyncClient(
            FAKE_URL, retries=FAST_RETRIES, transport=transport
        ) as client:
            return await client.model_info()

    assert asyncio.run(fetch()) == MODEL_INFO
    assert len(recorder.requests) == 2


def test_async_error_status_not_retried() -> None:
    recorder = Recorder(error_response(413, ErrorKind.PAYLOAD_TOO_LARGE, "Too big."))

    async def predict() -> None:
        transport = httpx.MockTransport(recorder)
        async with AsyncClient(
            FAKE_URL, retries=FAST_RETRIES, transport=transport
        ) as client:
            await client.predict(b"\x89PNG")

    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(predict())

    assert caught.value.message == "Too big."
    assert len(recorder.requests) == 1


def test_predict_upload_field_and_filename(tmp_path: Path) -> None:
    path = tmp_path / "seven.png"
    path.write_bytes(b"\x89PNG-bytes")
    recorder = Recorder(httpx.Response(500, text="stop"))

    with fake_client(recorder) as client:
        uploads: list[tuple[ImageInput, str | None]] = [
            (path, None),
            (b"\x89PNG-bytes", "upload.png"),
        ]
        for image, filename in uploads:
            with pytest.raises(BackendError):
                client.predict(image, filename=filename)

    for request, name in zip(
        recorder.requests, ["seven.png", "upload.png"], strict=True
    ):
        body = request.read()
        assert f'name="{UPLOAD_FIELD}"'.encode() in body
        assert f'filename="{name}"'.encode() in body
        assert b"\x89PNG-bytes" in body


def test_predict_pil_image_sent_as_png() -> None:
    recorder = Recorder(httpx.Response(500, text="stop"))

    with fake_client(recorder) as client, pytest.raises(BackendError):
        client.predict(Image.new("L", (8, 8)))

    body = recorder.requests[0].read()
    assert b'filename="image.png"' in body
    assert b"\x89PNG\r\n\x1a\n" in body


@pytest.mark.parametrize("image", [42, None, ["not", "an", "image"]])
def test_predict_unsupported_type(image: Any) -> None:
    recorder = Recorder(model_info_response())

    with (
        fake_client(recorder) as client,
        pytest.raises(TypeError, match="image of type"),
    ):
        client.predict(image)

    assert recorder.requests == [], "nothing is sent for an invalid argument"


def test_predict_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"

    with (
        fake_client(Recorder(model_info_response())) as client,
        pytest.raises(FileNotFoundError, match=r"missing\.png"),
    ):
        client.predict(missing)


@pytest.mark.parametrize("client_type", [Client, AsyncClient])
def test_client_retries_not_retries_object(client_type: type[Any]) -> None:
    with pytest.raises(TypeError, match="retries=3 is invalid"):
        client_type(FAKE_URL, retries=3)
