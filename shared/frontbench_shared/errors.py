"""Exceptions raised by the client, each carrying the backend's message.

A frontend catches `BackendError` around every call and shows
`user_message(error)` to the person using it: one sentence on what happened
and one on what to do.
"""

from __future__ import annotations

from frontbench_shared.api import ErrorKind


class BackendError(Exception):
    """The backend returned an error response, or could not be reached at all.

    Attributes:
        message: The backend's own explanation, or the client's when the
            backend gave none.
        status_code: The HTTP status, or None when no response came.
        kind: The error kind the backend reported, when it reported one.
        request_id: The `X-Request-ID` of the failed request, when known.
        url: The URL that was requested.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        kind: ErrorKind | None = None,
        request_id: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.kind = kind
        self.request_id = request_id
        self.url = url


class BackendUnavailable(BackendError):
    """The backend could not be reached, or returned 503 on every retry."""


class BackendTimeout(BackendUnavailable):
    """The backend did not respond within the client's timeout."""


class InvalidImage(BackendError):
    """The backend rejected the upload as not a usable image (415 or 422)."""


class PayloadTooLarge(BackendError):
    """The upload, or the image it decodes to, is over the backend's limit (413)."""


def _sentence(text: str) -> str:
    """Return `text` with its first letter capitalised and a final full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def user_message(error: BackendError) -> str:
    """Return a short message for a person: what happened and what to do.

    The backend's messages already state what it accepts, so each one is
    passed on as one sentence, after a few words on what failed.
    """
    if isinstance(error, BackendTimeout):
        return (
            "The model backend did not answer in time. It may be busy or "
            "stuck; try again in a moment."
        )
    if isinstance(error, BackendUnavailable):
        where = f" at {error.url}" if error.url else ""
        return (
            f"The model backend{where} is not reachable. Start it with "
            "'frontbench backend' (or check BACKEND_URL) and try again."
        )
    if isinstance(error, InvalidImage):
        return f"This file could not be used as an image. {_sentence(error.message)}"
    if isinstance(error, PayloadTooLarge):
        return f"This file is too large. {_sentence(error.message)}"
    return f"The model backend failed to answer. {_sentence(error.message)} Try again."
