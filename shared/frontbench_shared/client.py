"""Sync and async HTTP clients for the frontbench backend.

Both clients speak the API defined in `frontbench_shared.api` and raise the
exceptions in `frontbench_shared.errors`, so a frontend needs one `try` around
each call:

    with Client() as client:
        prediction = client.predict(Path("digit.png"))
        print(prediction.label, prediction.confidence)

Retry policy: a request is sent again, after an exponential backoff with
jitter, in three cases. A connect failed (refused, or a connect timeout), so
the backend never got the request. The connection closed without a
response, for example because a backend worker restarted. A prediction has
no side effects, so sending it again is safe. Or the backend returned 503 Service
Unavailable, which it does while the model is loading. A read timeout is
raised as `BackendTimeout` at once, because the backend may still be working
on the request and a resend would add to its load. Every other error status,
4xx included, is raised at once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from frontbench_shared.api import (
    MODEL_PATH,
    PREDICT_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    UPLOAD_FIELD,
    ErrorBody,
    ErrorKind,
    Health,
    ModelInfo,
    Prediction,
)
from frontbench_shared.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidImage,
    PayloadTooLarge,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BACKEND_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "Client",
    "ImageInput",
    "Retries",
    "resolve_base_url",
]

logger = logging.getLogger(__name__)

BACKEND_URL_ENV = "BACKEND_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Connecting to a live backend takes milliseconds. A prediction can wait in
# the batching queue behind a burst of requests, so reads get more time.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

ImageInput: TypeAlias = (
    "bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image"
)
"""The image types that `predict` accepts: encoded image bytes, a path to an
image file, or a PIL image (sent as PNG)."""

_ModelT = TypeVar("_ModelT", bound=BaseModel)

# The transport errors after which a request is sent again; see the module
# docstring for why each one is safe to retry.
_RETRYABLE_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
)
_TOO_LARGE_KINDS = {ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.IMAGE_TOO_LARGE}
_BODY_EXCERPT_CHARS = 200


@dataclass(frozen=True)
class Retries:
    """How often and how patiently a client resends a request.

    Attributes:
        attempts: How many times one call is sent at most, counting the first
            time. 1 turns retries off.
        backoff: The delay in seconds before the first resend. It doubles
            before each later resend.
        max_backoff: The maximum delay in seconds before any resend.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(
                f"Retries(attempts={self.attempts!r}) is invalid: attempts counts "
                "the first request, so use 1 or more (1 turns retries off)."
            )
        if self.backoff < 0:
            raise ValueError(
                f"Retries(backoff={self.backoff!r}) is invalid: use a delay of "
                "0 seconds or more."
            )
        if self.max_backoff < self.backoff:
            raise ValueError(
                f"Retries(max_backoff={self.max_backoff!r}) is invalid: it must "
                f"be at least backoff={self.backoff!r}."
            )

    def delay(self, retry: int) -> float:
        """Return the seconds to wait before resend number `retry` (1 first).

        The delay is drawn between half and all of `backoff * 2**(retry - 1)`,
        capped at `max_backoff`. The random part keeps clients that failed
        together from retrying together.
        """
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


DEFAULT_RETRIES = Retries()


def resolve_base_url(base_url: str | None = None) -> str:
    """Return the backend's base URL: the argument, else $BACKEND_URL, else the default.

    Raises:
        ValueError: The URL is not an absolute http:// or https:// URL.
    """
    if base_url is not None:
        source, value = "base_url", base_url
    elif os.environ.get(BACKEND_URL_ENV):
        source, value = BACKEND_URL_ENV, os.environ[BACKEND_URL_ENV]
    else:
        source, value = "the default", DEFAULT_BASE_URL

    try:
        url = httpx.URL(value.strip())
    except httpx.InvalidURL as exc:
        raise ValueError(
            f"Invalid backend URL {value!r} (from {source}): {exc}. Use an "
            f"http:// or https:// URL such as {DEFAULT_BASE_URL}."
        ) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"Invalid backend URL {value!r} (from {source}): expected an "
            f"http:// or https:// URL with a host, such as {DEFAULT_BASE_URL}."
        )
    return str(url).rstrip("/")


def _encode_image(image: ImageInput, filename: str | None) -> tuple[str, bytes]:
    """Return the upload's file name and bytes for any accepted image input."""
    if isinstance(image, bytes | bytearray | memoryview):
        return filename or "image", bytes(image)

    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        with open(path, "rb") as file:
            data = file.read()
        return filename or os.path.basename(path), data

    # A PIL image can only exist when PIL.Image has been imported, so the
    # client never imports Pillow itself and works without it.
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None and isinstance(image, pil_image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return filename or "image.png", buffer.getvalue()

    raise TypeError(
        f"predict() got an image of type {type(image).__name__}; pass the "
        "encoded file as bytes, a path to the file, or a PIL image."
    )


def _excerpt(response: httpx.Response) -> str:
    """Return the start of a non-JSON body on one line, for an error message."""
    text = " ".join(response.text.split())
    if len(text) > _BODY_EXCERPT_CHARS:
        text = text[:_BODY_EXCERPT_CHARS] + "..."
    return text or "(empty body)"


def _error_from_response(response: httpx.Response, request_id: str) -> BackendError:
    """Build the typed exception for an error response."""
    status = response.status_code
    url = str(response.request.url)
    try:
        body: ErrorBody | None = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        body = None

    if body is not None:
        message = body.detail
        kind: ErrorKind | None = body.kind
        request_id = body.request_id or request_id
    else:
        # A proxy or a crashed worker can respond with HTML or plain text.
        message = (
            f"The backend at {url} returned {status} {response.reason_phrase} "
            f"with a body that is not the API's JSON error: {_excerpt(response)}"
        )
        kind = None
        request_id = response.headers.get(REQUEST_ID_HEADER, request_id)

    error_class: type[BackendError] = BackendError
    if status == 413 or kind in _TOO_LARGE_KINDS:
        error_class = PayloadTooLarge
    elif status in (415, 422):
        error_class = InvalidImage
    elif status == 503:
        error_class = BackendUnavailable
    return error_class(
        message, status_code=status, kind=kind, request_id=request_id, url=url
    )


def _error_from_exception(
    exc: httpx.HTTPError, url: str, request_id: str, attempts: int
) -> BackendError:
    """Build the typed exception for a request that got no response."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(
        exc, httpx.ConnectTimeout
    ):
        return BackendTimeout(
            f"The backend at {url} did not respond within the client's timeout "
            f"({reason}). It may be overloaded; try again later or pass a "
            "larger timeout= to the client.",
            request_id=request_id,
            url=url,
        )
    if isinstance(exc, httpx.TransportError):
        tries = "once" if attempts == 1 else f"{attempts} times"
        return BackendUnavailable(
            f"Could not reach the backend at {url} (tried {tries}; {reason}). "
            "Start it with 'frontbench backend' or set BACKEND_URL to its URL.",
            request_id=request_id,
            url=url,
        )
    return BackendError(
        f"The request to {url} failed ({reason}).", request_id=request_id, url=url
    )


def _parse(response: httpx.Response, model: type[_ModelT]) -> _ModelT:
    """Parse a success response into `model`, or raise the matching exception."""
    request_id = response.request.headers[REQUEST_ID_HEADER]
    if response.is_error:
        raise _error_from_response(response, request_id)

    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise BackendError(
            f"The backend at {response.request.url} returned a response that is "
            f"not a valid {model.__name__} ({exc.error_count()} validation "
            f"errors, the first: {exc.errors()[0]['msg']!r}). Check that the "
            "backend and the client are the same version.",
            status_code=response.status_code,
            request_id=request_id,
            url=str(response.request.url),
        ) from exc


def _parse_health(response: httpx.Response) -> Health:
    """Parse the response of GET /readyz: 200 is ready and 503 is not ready."""
    if response.status_code != 503:
        return _parse(response, Health)

    try:
        return Health.model_validate_json(response.content)
    except ValidationError:
        pass
    # A 503 from something other than the readiness route (a proxy, or an
    # error body) still means that the backend is not ready.
    try:
        detail = ErrorBody.model_validate_json(response.content).detail
    except ValidationError:
        detail = f"503 {response.reason_phrase}: {_excerpt(response)}"
    return Health(status="not_ready", detail=detail)


class _BaseClient:
    """The configuration and retry decisions shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        *,
        timeout: float | httpx.Timeout,
        retries: Retries,
    ) -> None:
        if not isinstance(retries, Retries):
            raise TypeError(
                f"retries={retries!r} is invalid: pass a Retries object, such as "
                "Retries(attempts=1) to turn retries off."
            )
        self.base_url = resolve_base_url(base_url)
        self.timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        )
        self.retries = retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _new_headers(self) -> dict[str, str]:
        # One id per call, kept across its retries, so that the backend's log
        # lines and the client's retry warnings can be matched up.
        return {REQUEST_ID_HEADER: uuid.uuid4().hex}

    def _retry_delay(
        self,
        attempt: int,
        request: str,
        request_id: str,
        reason: str,
    ) -> float | None:
        """Return the delay before resending, or None when no attempt is left."""
        if attempt >= self.retries.attempts:
            return None
        delay = self.retries.delay(attempt)
        logger.warning(
            "%s failed (%s; request %s); retrying in %.2f s, attempt %d of %d",
            request,
            reason,
            request_id,
            delay,
            attempt + 1,
            self.retries.attempts,
        )
        return delay

    def _check_response(
        self, response: httpx.Response, attempt: int, *, retry_unavailable: bool
    ) -> float | None:
        """Return the delay before resending after `response`, or None to keep it."""
        if response.status_code != 503 or not retry_unavailable:
            return None
        return self._retry_delay(
            attempt,
            f"{response.request.method} {response.request.url}",
            response.request.headers[REQUEST_ID_HEADER],
            "503 Service Unavailable",
        )

    def _check_exception(
        self, exc: httpx.HTTPError, method: str, url: str, request_id: str, attempt: int
    ) -> float:
        """Return the delay before resending after `exc`, or raise the typed error."""
        delay = None
        if isinstance(exc, _RETRYABLE_ERRORS):
            delay = self._retry_delay(
                attempt, f"{method} {url}", request_id, f"{type(exc).__name__}: {exc}"
            )
        if delay is None:
            raise _error_from_exception(exc, url, request_id, attempt) from exc
        return delay


class Client(_BaseClient):
    """A synchronous client for the frontbench backend.

    Args:
        base_url: The backend's URL, such as `http://127.0.0.1:8000`. Without
            it, $BACKEND_URL is used, else `DEFAULT_BASE_URL`.
        timeout: Seconds to wait for each step of a request (connect, write,
            read), or an `httpx.Timeout` with one limit per step.
        retries: When to resend a request that failed without being
            processed; see the module docstring.
        transport: An httpx transport to send requests with instead of the
            network. It is meant for tests that inject faults.

    Raises:
        ValueError: The base URL is not an http:// or https:// URL.
        TypeError: `retries` is not a `Retries` object.

    Example:
        >>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
        ...     client.predict(b"...png bytes...").label
        '7'
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: Retries = DEFAULT_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, retries=retries)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self.timeout, transport=transport
        )

    def predict(self, image: ImageInput, *, filename: str | None = None) -> Prediction:
        """Send one image to `POST /v1/predict` and return the prediction.

        Args:
            image: The encoded image file as bytes, a path to it, or a PIL
                image (sent as PNG).
            filename: The file name sent with the upload. It defaults to the
                path's name, or `image.png` for a PIL image.

        Raises:
            InvalidImage: The backend could not use the file as an image.
            PayloadTooLarge: The file or its pixel count is over a limit.
            BackendUnavailable: The backend could not be reached.
            BackendTimeout: The backend did not respond in time.
            BackendError: Any other error response.
            TypeError: `image` is none of the accepted types.
            OSError: The image path could not be read.
        """
        name, data = _encode_image(image, filename)
        files = {UPLOAD_FIELD: (name, data)}
        return _parse(self._send("POST", PREDICT_PATH, files=files), Prediction)

    def model_info(self) -> ModelInfo:
        """Fetch the served model's metadata from `GET /v1/model`."""
        return _parse(self._send("GET", MODEL_PATH), ModelInfo)

    def health(self) -> Health:
        """Ask `GET /readyz` whether the backend is ready to predict.

        Returns:
            `Health` with status `ready` (200) or `not_ready` (503). A 503 is
            returned as it is and never retried.

        Raises:
            BackendUnavailable: The backend could not be reached.
        """
        response = self._send("GET", READY_PATH, retry_unavailable=False)
        return _parse_health(response)

    def _send(
        self,
        method: str,
        path: str,
        *,
        files: dict[str, tuple[str, bytes]] | None = None,
        retry_unavailable: bool = True,
    ) -> httpx.Response:
        headers = self._new_headers()
        request_id = headers[REQUEST_ID_HEADER]
        url = self.base_url + path
        attempt = 1
        while True:
            try:
                response = self._http.request(
                    method, path, files=files, headers=headers
                )
            except httpx.HTTPError as exc:
                delay = self._check_exception(exc, method, url, request_id, attempt)
            else:
                retry_delay = self._check_response(
                    response, attempt, retry_unavailable=retry_unavailable
                )
                if retry_delay is None:
                    return response
                response.close()
                delay = retry_delay
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Close the connections this client keeps open."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """An asyncio client for the frontbench backend, with the API of `Client`.

    Args:
        base_url: The backend's URL, such as `http://127.0.0.1:8000`. Without
            it, $BACKEND_URL is used, else `DEFAULT_BASE_URL`.
        timeout: Seconds to wait for each step of a request (connect, write,
            read), or an `httpx.Timeout` with one limit per step.
        retries: When to resend a request that failed without being
            processed; see the module docstring.
        transport: An httpx async transport to send requests with instead of
            the network. It is meant for tests that inject faults.

    Raises:
        ValueError: The base URL is not an http:// or https:// URL.
        TypeError: `retries` is not a `Retries` object.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: Retries = DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, retries=retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, transport=transport
        )

    async def predict(
        self, image: ImageInput, *, filename: str | None = None
    ) -> Prediction:
        """Send one image to `POST /v1/predict` and return the prediction.

        Takes the arguments and raises the exceptions of `Client.predict`.
        """
        name, data = _encode_image(image, filename)
        files = {UPLOAD_FIELD: (name, data)}
        return _parse(await self._send("POST", PREDICT_PATH, files=files), Prediction)

    async def model_info(self) -> ModelInfo:
        """Fetch the served model's metadata from `GET /v1/model`."""
        return _parse(await self._send("GET", MODEL_PATH), ModelInfo)

    async def health(self) -> Health:
        """Ask `GET /readyz` whether the backend is ready, like `Client.health`."""
        response = await self._send("GET", READY_PATH, retry_unavailable=False)
        return _parse_health(response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        files: dict[str, tuple[str, bytes]] | None = None,
        retry_unavailable: bool = True,
    ) -> httpx.Response:
        headers = self._new_headers()
        request_id = headers[REQUEST_ID_HEADER]
        url = self.base_url + path
        attempt = 1
        while True:
            try:
                response = await self._http.request(
                    method, path, files=files, headers=headers
                )
            except httpx.HTTPError as exc:
                delay = self._check_exception(exc, method, url, request_id, attempt)
            else:
                retry_delay = self._check_response(
                    response, attempt, retry_unavailable=retry_unavailable
                )
                if retry_delay is None:
                    return response
                await response.aclose()
                delay = retry_delay
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        """Close the connections this client keeps open."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
