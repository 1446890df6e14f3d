"""Decode an uploaded image and turn it into the model's input.

An upload can be any common format, size and mode, dark ink on light paper or
light ink on a dark background, rotated by its EXIF orientation, with the
digit anywhere on the canvas. `to_model_input` finds the ink, cuts out the
digit, centres it the way the data set does, and scales it down to the
model's input size, so that a photo of one digit looks like a data-set image.
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import warnings
import zlib

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from frontbench_backend.data import PIXEL_MAX
from frontbench_shared.api import ErrorKind

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""The Pillow format names that `decode_image` accepts."""

# Pillow reports a JPEG with several pictures (common from phone cameras) as
# MPO, and some BMP variants as DIB; they are the accepted formats underneath.
_FORMAT_ALIASES = {"MPO": "JPEG", "DIB": "BMP"}
_ACCEPTED_TEXT = "PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF"

_PILLOW_BOMB_SIZE = re.compile(r"\((?P<pixels>\d+) pixels\)")

# Exceptions that Pillow's plugins raise on truncated or corrupt data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error)

INK_THRESHOLD = 0.25
"""Share of the ink range above which a pixel counts as part of the digit."""

BORDER_FRACTION = 0.05
"""Width of the border, as a share of the shorter side, whose median is the paper."""

WORKING_MAX_SIDE = 2048
"""Maximum side in pixels at which the ink is searched; larger images are reduced."""

# In load_digits the ink of every digit spans all 8 rows and about 6 of the 8
# columns, centred, so the digit's box fills the frame along its longer side
# with no margin.
_DIGIT_EXTENT = 1.0


class ImageError(ValueError):
    """An upload that cannot be used as a digit image.

    Attributes:
        kind: The API error kind that the backend reports for it.
        message: What was wrong and what is accepted.
    """

    kind: ErrorKind = ErrorKind.INVALID_IMAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedFormat(ImageError):
    """The upload is in a format that is not accepted, such as SVG, HEIC or PDF."""

    kind = ErrorKind.UNSUPPORTED_FORMAT


class InvalidImage(ImageError):
    """The upload is not an image, or is truncated or corrupt."""

    kind = ErrorKind.INVALID_IMAGE


class BlankImage(InvalidImage):
    """The image decodes, but every pixel has the same value, so it has no digit."""


class EmptyImage(ImageError):
    """The upload has no bytes."""

    kind = ErrorKind.EMPTY_FILE


class ImageTooLarge(ImageError):
    """The image has more pixels than the limit allows."""

    kind = ErrorKind.IMAGE_TOO_LARGE


def _sniff_unsupported(data: bytes) -> str | None:
    """Return the name of a known unaccepted format that Pillow cannot open."""
    head = data[:512]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith(b"%pdf-"):
        return "PDF"
    if stripped.startswith(b"%!ps"):
        return "PostScript (PS or EPS)"
    if stripped.startswith(b"<svg") or (
        stripped.startswith(b"<?xml") and b"<svg" in data[:4096].lower()
    ):
        return "SVG"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1"}:
            return "HEIC/HEIF"
        if brand in {b"avif", b"avis"}:
            return "AVIF"
        return "an ISO media file (such as MP4 or HEIC)"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if _looks_like_text(head):
        return "text"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The cut at 512 bytes may split a character; retry without the tail.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _identify(data: bytes) -> str | None:
    """Return the Pillow format of `data` from its header, if any plugin reads it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
    ):
        return None


def _unsupported_message(format_name: str) -> str:
    return (
        f"the upload is {format_name}, which is not accepted; "
        f"upload a {_ACCEPTED_TEXT} image"
    )


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {pixels:,} pixels, over the limit of "
            f"{max_pixels:,} pixels; scale it down and upload it again"
        )


def _bomb_message(error: Exception, max_pixels: int) -> str:
    # Pillow 12 words it "Image size (N pixels) exceeds limit of M pixels".
    match = _PILLOW_BOMB_SIZE.search(str(error))
    size = f"{int(match['pixels']):,} pixels" if match else "too many pixels"
    return (
        f"the image header declares {size}, over the limit of {max_pixels:,} "
        "pixels; scale it down and upload it again"
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open `data` lazily, reading only the header, and check its size."""
    try:
        # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice
        # that. The warning becomes an error here, so both are rejected.
        # NOTE: catch_warnings changes process-wide state and is not
        # thread-safe before Python 3.14, so the explicit size check below is
        # what enforces `max_pixels` in every case.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_pillow_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(_bomb_message(exc, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        detected = _identify(data)
        if detected is not None:
            raise UnsupportedFormat(_unsupported_message(detected)) from exc
        raise InvalidImage(
            f"the upload ({len(data):,} bytes, starting {data[:8]!r}) is not an "
            f"image file that could be read; upload a {_ACCEPTED_TEXT} image"
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise InvalidImage(
            f"the image header could not be read ({exc}); the file is truncated "
            f"or corrupt, so upload a complete {_ACCEPTED_TEXT} image"
        ) from exc

    _check_size(image, max_pixels)
    return image


def _pillow_formats() -> list[str]:
    # Image.open raises KeyError for a format whose plugin is not registered
    # yet, and Image.init registers every plugin (it returns at once later).
    Image.init()
    return [
        name for name in (*ACCEPTED_FORMATS, *_FORMAT_ALIASES) if name in Image.OPEN
    ]


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an upload into a fully loaded image with its EXIF orientation applied.

    The header is read first, and an image of more than `max_pixels` pixels
    is rejected before any pixel data is decoded. Of an animated GIF, WebP or
    PNG, and of a multi-page TIFF, only the first frame is returned.

    Raises:
        EmptyImage: `data` is empty.
        UnsupportedFormat: `data` is an image or document in a format outside
            ACCEPTED_FORMATS, such as SVG, HEIC, PDF or text.
        InvalidImage: `data` is not an image, or is truncated or corrupt.
        ImageTooLarge: the image has more than `max_pixels` pixels.
    """
    if not data:
        raise EmptyImage(
            f"the upload is empty (0 bytes); upload a {_ACCEPTED_TEXT} image"
        )

    unsupported = _sniff_unsupported(data)
    if unsupported is not None:
        raise UnsupportedFormat(_unsupported_message(unsupported))

    image = _open(data, max_pixels)
    format_name = _FORMAT_ALIASES.get(image.format or "", image.format or "image")
    try:
        image.seek(0)
        image.load()
    except _DECODE_ERRORS as exc:
        raise InvalidImage(
            f"the {format_name} image could not be decoded ({exc}); the file is "
            "truncated or corrupt, so upload a complete image"
        ) from exc

    try:
        oriented = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError) as exc:
        # A broken EXIF block should not lose an otherwise good image.
        logger.warning(
            "ignored the unreadable EXIF orientation of a %s upload: %s",
            format_name,
            exc,
        )
        oriented = image
    return oriented


def to_grayscale(image: Image.Image) -> NDArray[np.float32]:
    """Return the image as luminance in 0..1, with transparency flattened.

    Modes with an alpha channel or a transparent palette colour are composited
    onto a background that contrasts with their visible pixels, so ink drawn
    on a transparent canvas stays visible whatever its colour.
    """
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        return _flatten_alpha(image.convert("RGBA"))

    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.float32)
        return ((values - low) / (high - low)).astype(np.float32)

    if image.mode == "LAB":
        lightness = image.getchannel("L")
        return np.asarray(lightness, dtype=np.float32) / 255.0

    if image.mode not in {"L", "RGB"}:
        image = image.convert("RGB")
    gray = image.convert("L")
    return np.asarray(gray, dtype=np.float32) / 255.0


def _flatten_alpha(image: Image.Image) -> NDArray[np.float32]:
    rgba = np.asarray(image, dtype=np.float32) / 255.0
    color, alpha = rgba[..., :3], rgba[..., 3:]
    luminance = color @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    weight = float(alpha.sum())
    visible = float((luminance * alpha[..., 0]).sum()) / weight if weight else 0.0
    background = 1.0 if visible < 0.5 else 0.0
    opacity = alpha[..., 0]
    flattened: NDArray[np.float32] = (
        luminance * opacity + background * (1.0 - opacity)
    ).astype(np.float32)
    return flattened


def ink_map(
    gray: NDArray[np.float32], *, image_size: tuple[int, int] | None = None
) -> NDArray[np.float32]:
    """Return the share of ink in each pixel, 0 for paper and 1 for the darkest ink.

    The median of the image border is taken as the paper colour and decides
    the polarity, so dark ink on light paper and light ink on a dark
    background both come out as ink near 1. `image_size` is the (width,
    height) of the uploaded image that error messages name, for when `gray`
    was reduced from it; it defaults to the size of `gray`.

    Raises:
        BlankImage: every pixel has the same value.
    """
    height, width = gray.shape
    band = max(1, round(min(height, width) * BORDER_FRACTION))
    border = np.concatenate(
        [
            gray[:band].ravel(),
            gray[-band:].ravel(),
            gray[:, :band].ravel(),
            gray[:, -band:].ravel(),
        ]
    )
    paper = float(np.median(border))
    low, high = float(gray.min()), float(gray.max())
    if high - low < 1e-3:
        width, height = image_size or (width, height)
        raise BlankImage(
            f"the image is blank: all {width}x{height} pixels have the same "
            "value, so there is no digit to read; upload a picture of one digit"
        )

    # Light paper means dark ink: the ink is how far a pixel is below it.
    if paper >= (low + high) / 2:
        ink = (paper - gray) / max(paper - low, 1e-6)
    else:
        ink = (gray - paper) / max(high - paper, 1e-6)
    clipped: NDArray[np.float32] = np.clip(ink, 0.0, 1.0).astype(np.float32)
    return clipped


def _reduce(gray: NDArray[np.float32]) -> NDArray[np.float32]:
    # Averaging blocks keeps thin strokes, and the later steps run on a few
    # million pixels at most however large the upload is.
    factor = math.ceil(max(gray.shape) / WORKING_MAX_SIDE)
    if factor <= 1:
        return gray
    reduced = Image.fromarray(gray).reduce(factor)
    return np.asarray(reduced, dtype=np.float32)


def digit_box(ink: NDArray[np.float32]) -> tuple[int, int, int, int]:
    """Return the bounding box (top, left, bottom, right) of the digit's ink.

    Raises:
        BlankImage: no pixel is above the ink threshold.
    """
    mask = ink > INK_THRESHOLD
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        height, width = ink.shape
        raise BlankImage(
            f"no digit was found in the {width}x{height} image because no pixel "
            "differs enough from the background; upload a picture of one digit"
        )
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def centre_digit(
    ink: NDArray[np.float32], input_size: tuple[int, int]
) -> NDArray[np.float32]:
    """Cut out the digit and pad it to the aspect of `input_size`, centred."""
    top, left, bottom, right = digit_box(ink)
    digit = ink[top:bottom, left:right]
    digit_height, digit_width = digit.shape
    target_height, target_width = input_size

    # Fit the box into the frame along its tighter side and pad the other.
    scale = min(target_height / digit_height, target_width / digit_width)
    frame_height = max(digit_height, round(target_height / scale / _DIGIT_EXTENT))
    frame_width = max(digit_width, round(target_width / scale / _DIGIT_EXTENT))
    framed = np.zeros((frame_height, frame_width), dtype=np.float32)
    offset_y = (frame_height - digit_height) // 2
    offset_x = (frame_width - digit_width) // 2
    rows = slice(offset_y, offset_y + digit_height)
    columns = slice(offset_x, offset_x + digit_width)
    framed[rows, columns] = digit
    return framed


def to_model_input(
    image: Image.Image, input_size: tuple[int, int]
) -> NDArray[np.float32]:
    """Turn a decoded image into one model input: float32, shaped `input_size`.

    The digit is found, centred, scaled down with area averaging (which is
    how the data set made its 8x8 images from 32x32 bitmaps), and rescaled so
    that its strongest pixel is 16, the data set's maximum.

    Raises:
        BlankImage: the image has no digit in it.
    """
    ink = ink_map(_reduce(to_grayscale(image)), image_size=image.size)
    framed = centre_digit(ink, input_size)
    height, width = input_size
    scaled = Image.fromarray(framed).resize((width, height), Image.Resampling.BOX)
    values = np.asarray(scaled, dtype=np.float32)
    peak = float(values.max())
    if peak <= 0:
        raise BlankImage(
            "no digit was found in the image after scaling it down; upload a "
            "picture of one digit"
        )
    return (values / peak * PIXEL_MAX).astype(np.float32)
