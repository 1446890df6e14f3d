"""The messages that frontends show a person for each client error."""

from __future__ import annotations

import pytest

from frontbench_shared.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidImage,
    PayloadTooLarge,
    user_message,
)

BACKEND_ADVICE = "Upload a PNG, JPEG, WebP, BMP, GIF or TIFF image of one digit."


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            InvalidImage(f"The file is empty (0 bytes). {BACKEND_ADVICE}"),
            f"This file could not be used as an image. The file is empty (0 bytes). "
            f"{BACKEND_ADVICE}",
        ),
        (
            InvalidImage("the PNG file is truncated, so upload a complete image"),
            "This file could not be used as an image. The PNG file is truncated, "
            "so upload a complete image.",
        ),
        (
            PayloadTooLarge("the image has 400000000 pixels; scale it down"),
            "This file is too large. The image has 400000000 pixels; scale it down.",
        ),
        (
            BackendError("internal error"),
            "The model backend failed to answer. Internal error. Try again.",
        ),
    ],
)
def test_user_message_one_sentence_per_part(error: BackendError, expected: str) -> None:
    assert user_message(error) == expected


def test_user_message_never_repeats_advice() -> None:
    message = user_message(InvalidImage(f"The file is empty. {BACKEND_ADVICE}"))

    assert message.count("Upload a") == 1, message


def test_user_message_unreachable_names_url() -> None:
    error = BackendUnavailable("refused", url="http://127.0.0.1:9")

    assert "http://127.0.0.1:9 is not reachable" in user_message(error)


def test_user_message_timeout_before_unavailable() -> None:
    message = user_message(BackendTimeout("read timed out"))

    assert message.startswith("The model backend did not answer in time.")
