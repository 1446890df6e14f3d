"""Bad requests to a real backend: each gets an ErrorBody, and none a 500."""

from __future__ import annotations

import asyncio
import io
import select
import socket
import struct
import zlib
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from frontbench_backend.settings import DEFAULT_MAX_UPLOAD_BYTES
from frontbench_shared.api import (
    PREDICT_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    ErrorBody,
    ErrorKind,
    Prediction,
)
from frontbench_shared.examples import Example


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """Return a small PNG whose header claims `width` x `height` gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _png_chunk(b"IEND", b"")
    )


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), color=255).save(buffer, format="PNG")
    return buffer.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>'
# The start of an ISO base media file with the HEIC brand, as phones write it.
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
RANDOM_BYTES = bytes(range(256)) * 4


def _file(name: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"files": {"file": (name, data, content_type)}}


def _truncated(examples: list[Example]) -> dict[str, Any]:
    return _file("cut.png", examples[0].read_bytes()[:150])


# name -> (request keyword arguments, or a function of the examples that
# returns them; expected status; expected kind; a phrase of the detail)
CASES: dict[str, tuple[Any, int, ErrorKind, str]] = {
    "text": (
        _file("a.txt", b"hello, digit", "text/plain"),
        415,
        ErrorKind.UNSUPPORTED_FORMAT,
        "PNG, JPEG",
    ),
    "random bytes": (
        _file("a.png", RANDOM_BYTES),
        415,
        ErrorKind.INVALID_IMAGE,
        "PNG, JPEG",
    ),
    "truncated png": (_truncated, 415, ErrorKind.INVALID_IMAGE, "truncated"),
    "svg": (
        _file("a.svg", SVG, "image/svg+xml"),
        415,
        ErrorKind.UNSUPPORTED_FORMAT,
        "SVG",
    ),
    "heic": (
        _file("a.heic", HEIC, "image/heic"),
        415,
        ErrorKind.UNSUPPORTED_FORMAT,
        "HEIC",
    ),
    "blank image": (
        _file("blank.png", blank_png()),
        422,
        ErrorKind.INVALID_IMAGE,
        "blank",
    ),
    "empty file": (_file("empty.png", b""), 422, ErrorKind.EMPTY_FILE, "empty"),
    "no file field": (
        {"files": {"image": ("a.png", b"x", "image/png")}},
        422,
        ErrorKind.MISSING_FILE,
        "no 'file' field",
    ),
    "file as text field": (
        {
            "data": {"file": "not a file"},
            "files": {"note": ("note.txt", b"-", "text/plain")},
        },
        422,
        ErrorKind.MISSING_FILE,
        "not a file upload",
    ),
    "json body": (
        {"json": {"file": "digit.png"}},
        422,
        ErrorKind.INVALID_REQUEST,
        "multipart/form-data",
    ),
    "no body": ({}, 422, ErrorKind.INVALID_REQUEST, "multipart/form-data"),
    "malformed multipart": (
        {
            "content": b"--b\r\nContent-Disposition: form-data; name=file\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
        },
        400,
        ErrorKind.INVALID_REQUEST,
        "could not be parsed",
    ),
    "decompression bomb": (
        _file("bomb.png", bomb_png()),
        413,
        ErrorKind.IMAGE_TOO_LARGE,
        "40,000,000",
    ),
}


def _request_kwargs(case: Any, examples: list[Example]) -> dict[str, Any]:
    kwargs: dict[str, Any] = case(examples) if callable(case) else case
    return kwargs


def _assert_error(response: httpx.Response, status: int, kind: ErrorKind) -> ErrorBody:
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate(response.json())
    assert body.kind == kind, body
    assert body.request_id == response.headers[REQUEST_ID_HEADER]
    return body


@pytest.mark.parametrize(
    ("case", "status", "kind", "phrase"), CASES.values(), ids=CASES
)
def test_predict_bad_input_returns_error_body(
    backend_url: str,
    examples: list[Example],
    case: Any,
    status: int,
    kind: ErrorKind,
    phrase: str,
) -> None:
    response = httpx.post(backend_url + PREDICT_PATH, **_request_kwargs(case, examples))
    body = _assert_error(response, status, kind)
    assert phrase in body.detail, body.detail


def test_unknown_route_returns_404(backend_url: str) -> None:
    response = httpx.get(backend_url + "/v2/predict")
    body = _assert_error(response, 404, ErrorKind.NOT_FOUND)
    assert "/v2/predict" in body.detail
    assert "/docs" in body.detail


@pytest.mark.parametrize(
    ("method", "path"), [("GET", PREDICT_PATH), ("DELETE", READY_PATH)]
)
def test_wrong_method_returns_405(backend_url: str, method: str, path: str) -> None:
    response = httpx.request(method, backend_url + path)
    body = _assert_error(response, 405, ErrorKind.INVALID_REQUEST)
    assert method in body.detail
    assert "allowed" in body.detail
    assert response.headers["allow"]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ", 2)[1])
    return status, body


@pytest.mark.timeout(60)
def test_declared_upload_over_limit_returns_413(backend_url: str) -> None:
    # Only the headers are sent, so the response must come without the body.
    with socket.create_connection(_address(backend_url), timeout=30) as sock:
        sock.sendall(
            f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: test\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * DEFAULT_MAX_UPLOAD_BYTES}\r\n\r\n".encode()
        )
        status, body = _read_response(sock)
    assert status == 413
    error = ErrorBody.model_validate_json(body)
    assert error.kind == ErrorKind.PAYLOAD_TOO_LARGE
    assert str(DEFAULT_MAX_UPLOAD_BYTES) in error.detail
    assert "FRONTBENCH_MAX_UPLOAD_BYTES" in error.detail


@pytest.mark.timeout(60)
def test_chunked_upload_over_limit_returns_413(
    backend_url: str,
) -> None:
    # No Content-Length: the server has to count the bytes as they arrive.
    chunk = b"\xff" * 65536
    most_sent = 4 * DEFAULT_MAX_UPLOAD_BYTES
    sent = 0
    with socket.create_connection(_address(backend_url), timeout=30) as sock:
        sock.sendall(
            f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: test\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        part = (
            b'--b\r\nContent-Disposition: form-data; name="file"; '
            b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        pending = b""
        # Send chunk after chunk until the response arrives, keeping the chunk
        # framing intact across partial sends.
        while sent < most_sent:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                pending = pending or framed
                count = sock.send(pending)
                pending = pending[count:]
                sent += count
        status, body = _read_response(sock)
    assert status == 413
    assert sent < most_sent, "the server read far past the limit before answering"
    error = ErrorBody.model_validate_json(body)
    assert error.kind == ErrorKind.PAYLOAD_TOO_LARGE
    assert "at least" in error.detail


async def _send_mixed_bad_requests(
    backend_url: str, examples: list[Example], count: int
) -> list[httpx.Response]:
    cases = [_request_kwargs(case, examples) for case, *_ in CASES.values()]
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(
        base_url=backend_url, limits=limits, timeout=120
    ) as client:
        requests = [
            client.post(PREDICT_PATH, **cases[index % len(cases)])
            for index in range(count)
        ]
        return await asyncio.gather(*requests)


@pytest.mark.timeout(180)
def test_concurrent_bad_requests_leave_server_healthy(
    backend_url: str, examples: list[Example]
) -> None:
    responses = asyncio.run(_send_mixed_bad_requests(backend_url, examples, 100))
    statuses = sorted({response.status_code for response in responses})
    assert all(400 <= status < 500 for status in statuses), statuses
    for response in responses:
        ErrorBody.model_validate(response.json())

    assert httpx.get(backend_url + READY_PATH).status_code == 200
    example = examples[-1]
    good = httpx.post(
        backend_url + PREDICT_PATH,
        files={"file": (example.path.name, example.read_bytes(), "image/png")},
    )
    assert good.status_code == 200, good.text
    assert Prediction.model_validate(good.json()).label == example.label
