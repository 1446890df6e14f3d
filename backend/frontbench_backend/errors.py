"""HTTP error handling: every failed request gets an `ErrorBody` JSON response.

Two pure ASGI middlewares and the app's exception handlers live here.
`RequestContextMiddleware` gives each request its id, writes the access log
line and the request metrics, and turns any unhandled exception into a 500
`ErrorBody`. `UploadLimitMiddleware` responds with 413 as soon as an upload to
`/v1/predict` is known to exceed the limit, before the body is read. The
exception handlers map `ImageError`, FastAPI's validation errors and HTTP
exceptions to statuses and error kinds, and log each client error once at
WARNING with the request id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontbench_backend.metrics import UNMATCHED_ROUTE, Metrics
from frontbench_backend.preprocess import BlankImage, ImageError
from frontbench_shared.api import (
    PREDICT_PATH,
    REQUEST_ID_HEADER,
    UPLOAD_FIELD,
    ErrorBody,
    ErrorKind,
)

logger = logging.getLogger(__name__)
# One INFO line per request, in place of uvicorn's access log, which has no
# request id. A logger of its own lets an operator silence it alone.
access_logger = logging.getLogger("frontbench_backend.access")

REQUEST_ID_SCOPE_KEY = "frontbench.request_id"
STARTED_SCOPE_KEY = "frontbench.started"

# A client's X-Request-ID is kept when it is 1 to 128 visible ASCII
# characters, so that it can be logged as it is; otherwise a new one is made.
_VALID_REQUEST_ID = re.compile(r"^[!-~]{1,128}$")

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_IMAGE: 415,
    ErrorKind.UNSUPPORTED_FORMAT: 415,
    ErrorKind.MISSING_FILE: 422,
    ErrorKind.EMPTY_FILE: 422,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.IMAGE_TOO_LARGE: 413,
    ErrorKind.INVALID_REQUEST: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.NOT_READY: 503,
    ErrorKind.INTERNAL: 500,
}

_MULTIPART_HINT = (
    f"Send the image as multipart/form-data in the field {UPLOAD_FIELD!r}, "
    f"for example: curl -F {UPLOAD_FIELD}=@digit.png URL{PREDICT_PATH}"
)


class ApiError(Exception):
    """A request failed in a way the client can act on; it becomes an ErrorBody.

    Args:
        kind: The error kind reported to the client.
        detail: What was wrong and what is accepted.
        status_code: The HTTP status; the default follows from `kind`.
    """

    def __init__(
        self, kind: ErrorKind, detail: str, *, status_code: int | None = None
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status_code = status_code or STATUS_BY_KIND[kind]


class UploadTooLarge(StarletteHTTPException):
    """The request body passed `max_upload_bytes` while it was being received.

    It subclasses Starlette's HTTPException because FastAPI re-raises those
    from body parsing unchanged, while it turns other exceptions into a 400.
    """

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(status_code=413, detail=_too_large_detail(limit, received))


def _too_large_detail(limit: int, size: int, *, declared: bool = False) -> str:
    how = "declares" if declared else "has at least"
    return (
        f"The upload {how} {size} bytes, over the limit of {limit} bytes "
        f"({limit / 1024 / 1024:.1f} MiB). Send a smaller image; the server "
        "operator can raise FRONTBENCH_MAX_UPLOAD_BYTES."
    )


def make_request_id(header_value: str | None) -> str:
    """Return the client's request id if it is valid, else a new uuid4 hex."""
    if header_value is not None:
        value = header_value.strip()
        if _VALID_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


def request_id_of(scope: Mapping[str, Any]) -> str:
    """Return the request id that `RequestContextMiddleware` gave this request."""
    request_id = scope.get(REQUEST_ID_SCOPE_KEY)
    return request_id if isinstance(request_id, str) else ""


def _metrics_of(scope: Mapping[str, Any]) -> Metrics | None:
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None


def error_response(
    scope: Mapping[str, Any],
    kind: ErrorKind,
    detail: str,
    *,
    status_code: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Log a client error once at WARNING, count it, and build its response."""
    status = status_code or STATUS_BY_KIND[kind]
    request_id = request_id_of(scope)
    logger.warning(
        "%s %s -> %d %s: %s (request_id=%s)",
        scope.get("method", "?"),
        scope.get("path", "?"),
        status,
        kind.value,
        detail,
        request_id,
    )
    metrics = _metrics_of(scope)
    if metrics is not None:
        metrics.errors.labels(kind=kind.value).inc()
    body = ErrorBody(detail=detail, kind=kind, request_id=request_id)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers=headers
    )


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        request.scope, exc.kind, exc.detail, status_code=exc.status_code
    )


async def _handle_image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    # A blank image is a well-formed file with no digit to read, so it is
    # unprocessable content (422) rather than an unsupported media type.
    status = 422 if isinstance(exc, BlankImage) else None
    return error_response(request.scope, exc.kind, str(exc), status_code=status)


def _validation_detail(request: Request, exc: RequestValidationError) -> ApiError:
    content_type = request.headers.get("content-type", "")
    if request.url.path == PREDICT_PATH and not content_type.lower().startswith(
        "multipart/form-data"
    ):
        shown = content_type or "none"
        return ApiError(
            ErrorKind.INVALID_REQUEST,
            f"POST {PREDICT_PATH} expects a multipart/form-data body, but the "
            f"request's Content-Type is {shown!r}. {_MULTIPART_HINT}",
        )

    for error in exc.errors():
        if tuple(error.get("loc", ())) != ("body", UPLOAD_FIELD):
            continue
        if error.get("type") == "missing":
            return ApiError(
                ErrorKind.MISSING_FILE,
                f"The request has no {UPLOAD_FIELD!r} field. {_MULTIPART_HINT}",
            )
        return ApiError(
            ErrorKind.MISSING_FILE,
            f"The field {UPLOAD_FIELD!r} is not a file upload (it has no "
            f"filename, so it was read as text). {_MULTIPART_HINT}",
        )

    problems = "; ".join(
        "{}: {}".format(
            ".".join(str(part) for part in error.get("loc", ())), error["msg"]
        )
        for error in exc.errors()
    )
    return ApiError(ErrorKind.INVALID_REQUEST, f"The request is invalid: {problems}.")


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = _validation_detail(request, exc)
    return error_response(request.scope, error.kind, error.detail)


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    method, path = request.method, request.url.path
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return error_response(
            request.scope,
            ErrorKind.NOT_FOUND,
            f"No route matches {path!r}. The routes are listed at /docs.",
        )
    if exc.status_code == 405:
        allowed = headers.get("Allow", headers.get("allow", "")) or "see /docs"
        return error_response(
            request.scope,
            ErrorKind.INVALID_REQUEST,
            f"Method {method} is not allowed on {path!r}; allowed: {allowed}.",
            status_code=405,
            headers=headers,
        )
    if exc.status_code == 413:
        return error_response(
            request.scope, ErrorKind.PAYLOAD_TOO_LARGE, str(exc.detail)
        )
    if exc.status_code == 400:
        # Starlette raises a 400 for a multipart body it cannot parse, and
        # FastAPI for any other body error, with the reason as the cause.
        reason = exc.__cause__ or exc.detail
        return error_response(
            request.scope,
            ErrorKind.INVALID_REQUEST,
            f"The request body could not be parsed ({reason}). {_MULTIPART_HINT}",
            status_code=400,
        )
    return error_response(
        request.scope,
        ErrorKind.INVALID_REQUEST,
        str(exc.detail),
        status_code=exc.status_code,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into ErrorBody responses."""
    app.add_exception_handler(ApiError, _handle_api_error)
    app.add_exception_handler(ImageError, _handle_image_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Give each request an id, log and measure it, and catch unhandled errors.

    The id comes from the request's `X-Request-ID` when that is valid, and is
    set on every response. An exception that no handler caught is logged with
    its traceback and gets a 500 `ErrorBody`, so no traceback ever
    reaches a client.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on one HTTP request with its id, access log and metrics."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = make_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        scope[STARTED_SCOPE_KEY] = started
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            logger.exception(
                "unhandled error on %s %s (request_id=%s)",
                scope["method"],
                scope["path"],
                request_id,
            )
            self.metrics.errors.labels(kind=ErrorKind.INTERNAL.value).inc()
            if not response_started:
                body = ErrorBody(
                    detail="The server failed to handle this request. It logged "
                    "the error with this request id; report it if it persists.",
                    kind=ErrorKind.INTERNAL,
                    request_id=request_id,
                )
                response = JSONResponse(body.model_dump(mode="json"), status_code=500)
                await response(scope, receive, send_with_request_id)
            # Not re-raised: the traceback is logged above, and uvicorn would
            # only log it a second time.
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(
                route=_route_template(scope),
                method=scope["method"],
                status=status,
                seconds=elapsed,
            )
            access_logger.info(
                "%s %s %d %.1f ms request_id=%s",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                request_id,
            )


class UploadLimitMiddleware:
    """Respond with 413 as soon as an upload to `path` exceeds `max_bytes`.

    A declared Content-Length over the limit gets its 413 before any of the
    body is received. A chunked body, which has no Content-Length, is counted
    while it streams in, and the request stops at the first chunk that passes
    the limit, so at most one chunk over the limit is held in memory.
    """

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on one request, with its body limited to `max_bytes`."""
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            detail = _too_large_detail(self.max_bytes, declared, declared=True)
            response = error_response(
                scope,
                ErrorKind.PAYLOAD_TOO_LARGE,
                detail,
                # The unread body makes the connection unusable for another
                # request, so the response says that it will be closed.
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return

        received = 0
        response_started = False

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes, received)
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_with_limit, send_tracking)
        except UploadTooLarge as exc:
            # Normally the app's HTTPException handler responds. This covers a
            # body read outside of any handler.
            if response_started:
                raise
            response = error_response(
                scope, ErrorKind.PAYLOAD_TOO_LARGE, str(exc.detail)
            )
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
