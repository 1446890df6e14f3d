"""Images, answer checks and interaction timing shared by every Locust user.

Each user sends a digit whose label is known and fails the interaction when
the answer does not contain that label. Interactions that span several
requests (upload, then run, then read a stream) are timed here as one
request event, because Locust times a streamed response only up to its
headers.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from frontbench_shared.examples import EXAMPLES_DIR, list_examples

logger = logging.getLogger(__name__)

ImageKind = Literal["small", "large"]
IMAGE_KINDS: tuple[ImageKind, ...] = ("small", "large")

# The environment variables that configure every user, so that a locustfile
# run by hand and one started by `frontbench bench` behave the same.
IMAGE_ENV = "FRONTBENCH_BENCH_IMAGE"
EXPECTED_LABEL_ENV = "FRONTBENCH_BENCH_EXPECTED_LABEL"
EXAMPLES_DIR_ENV = "FRONTBENCH_BENCH_EXAMPLES_DIR"

# A 12-megapixel photo, the size of a typical phone camera picture.
LARGE_IMAGE_SIZE = (4000, 3000)
_LARGE_JPEG_QUALITY = 90


class WrongAnswer(AssertionError):
    """The setup answered, but not with the expected label."""


class ProtocolError(RuntimeError):
    """The server's answer did not follow the framework's protocol."""


@dataclass(frozen=True)
class DigitImage:
    """One encoded image that a user uploads, and the label it must get."""

    filename: str
    data: bytes
    content_type: str
    label: str


# Large photos take seconds each to encode on a busy machine, longer than a
# short run, so every process after the first reads them from this folder.
LARGE_CACHE_DIR = Path(tempfile.gettempdir()) / "frontbench-large-photos"


def _large_photo(png: bytes) -> bytes:
    """Return `png` scaled up into a 12-megapixel JPEG photo of the same digit.

    The photo is cached in LARGE_CACHE_DIR under a hash of the PNG's bytes.
    """
    digest = hashlib.sha256(png).hexdigest()[:16]
    cached = LARGE_CACHE_DIR / f"{digest}-{_LARGE_JPEG_QUALITY}.jpg"
    if cached.exists():
        return cached.read_bytes()

    photo = _encode_large_photo(png)
    LARGE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Written under a unique name and renamed, so a concurrent reader never
    # sees half a file.
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(photo)
    partial.replace(cached)
    return photo


def _encode_large_photo(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as source:
        digit = source.convert("RGB")
    width, height = LARGE_IMAGE_SIZE
    side = height * 4 // 5
    # Bicubic scaling turns the example's square pixels into the soft
    # strokes a camera records.
    scaled = digit.resize((side, side), Image.Resampling.BICUBIC)
    background = digit.getpixel((0, 0))
    photo = Image.new("RGB", LARGE_IMAGE_SIZE, background)
    photo.paste(scaled, ((width - side) // 2, (height - side) // 2))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=_LARGE_JPEG_QUALITY)
    return buffer.getvalue()


@functools.cache
def load_images(
    kind: ImageKind = "small", directory: Path = EXAMPLES_DIR
) -> list[DigitImage]:
    """Return the images a user sends: the example digits, or large photos of them.

    The result is cached, so the users of one Locust process share the
    images, which take seconds to encode in the large kind.

    Raises:
        ValueError: `kind` is not "small" or "large", or no examples are
            installed.
    """
    if kind not in IMAGE_KINDS:
        raise ValueError(
            f"invalid image kind {kind!r}; use one of: {', '.join(IMAGE_KINDS)}"
        )

    examples = list_examples(directory)
    if not examples:
        raise ValueError(
            f"no example digits (digit-<label>-<index>.png) found in {directory}; "
            f"reinstall the package or set {EXAMPLES_DIR_ENV} to a folder of them"
        )

    if kind == "small":
        return [
            DigitImage(
                example.path.name, example.read_bytes(), "image/png", example.label
            )
            for example in examples
        ]

    # One photo per label is enough variety, and encoding 12-megapixel JPEGs
    # for every example would slow down the start of each Locust process.
    first_per_label = {example.label: example for example in reversed(examples)}
    return [
        DigitImage(
            f"photo-{example.path.stem}.jpg",
            _large_photo(example.read_bytes()),
            "image/jpeg",
            example.label,
        )
        for example in sorted(first_per_label.values(), key=lambda e: e.label)
    ]


def images_from_env() -> list[DigitImage]:
    """Return the images selected by FRONTBENCH_BENCH_IMAGE (small by default).

    FRONTBENCH_BENCH_EXAMPLES_DIR replaces the folder of shipped example
    digits. FRONTBENCH_BENCH_EXPECTED_LABEL replaces every image's expected label. The
    tests set it to a wrong label to check that users report wrong answers.
    """
    kind = os.environ.get(IMAGE_ENV, "small")
    if kind not in IMAGE_KINDS:
        raise ValueError(
            f"invalid {IMAGE_ENV}={kind!r}; use one of: {', '.join(IMAGE_KINDS)}"
        )

    directory = Path(os.environ.get(EXAMPLES_DIR_ENV) or EXAMPLES_DIR)
    images = load_images(kind, directory)
    expected = os.environ.get(EXPECTED_LABEL_ENV)
    if expected is not None:
        images = [
            DigitImage(image.filename, image.data, image.content_type, expected)
            for image in images
        ]
    return images


def require_host(host: str | None) -> str:
    """Return Locust's `--host` without a trailing slash.

    Raises:
        ValueError: No host was given.
    """
    if not host:
        raise ValueError(
            "no host to test; pass the setup's URL with --host, "
            "such as --host http://127.0.0.1:8000"
        )
    return host.rstrip("/")


def pick_image(images: list[DigitImage]) -> DigitImage:
    """Return a random image from `images`."""
    return random.choice(images)


def check_label(expected: str, actual: str | None, *, where: str) -> None:
    """Raise WrongAnswer unless `actual` equals `expected`.

    Args:
        expected: The label of the image that was sent.
        actual: The label found in the answer, or None when none was found.
        where: What the label was read from, for the message.
    """
    if actual is None:
        raise WrongAnswer(f"expected label {expected!r}, but {where} showed no label")
    if actual != expected:
        raise WrongAnswer(f"expected label {expected!r}, got {actual!r} from {where}")


# Every frontend shows the prediction as text such as "Predicted digit: 7" or
# "7 (98.5 %)". The first digit after a "label", "digit" or "prediction" word
# is the label, so that the confidence percentage is never mistaken for it.
_LABEL_PATTERN = re.compile(
    r"(?:label|digit|predict(?:ion|ed)?)\W{0,20}?(?P<label>\d)(?!\d)",
    re.IGNORECASE,
)


def find_label(text: str) -> str | None:
    """Return the predicted label shown in a frontend's text, or None."""
    match = _LABEL_PATTERN.search(text)
    return match["label"] if match else None


def collect_text(value: Any) -> str:
    """Join every string inside a JSON-like value, depth first, with newlines."""
    parts: list[str] = []

    def visit(item: Any) -> None:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict):
            for child in item.values():
                visit(child)
        elif isinstance(item, list | tuple):
            for child in item:
                visit(child)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            parts.append(str(item))

    visit(value)
    return "\n".join(parts)


@contextmanager
def interaction(
    environment: Any, request_type: str, name: str
) -> Iterator[dict[str, int]]:
    """Time the enclosed block as one Locust request and report it.

    The block may set `result["bytes"]` to the size of the answer. An
    exception inside the block is reported as the failure and not raised,
    so the user goes on with its next task.
    """
    result = {"bytes": 0}
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield result
    except Exception as exc:
        error = exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=elapsed_ms,
        response_length=result["bytes"],
        exception=error,
        context={},
    )


class ErrorAnswer(RuntimeError):
    """The setup answered with an error instead of a prediction."""


# `frontbench bench` sets this to the warm-up seconds. Locust's statistics are
# reset that long after the test starts, so its CSV files describe only the
# measured part of the run.
WARMUP_ENV = "FRONTBENCH_BENCH_WARMUP"
# When set, the phase of the test ("warmup", "measuring") is written to this
# file as it starts, so that `frontbench bench` samples CPU over the same
# window that Locust measures.
PHASE_FILE_ENV = "FRONTBENCH_BENCH_PHASE_FILE"
_hooks_registered = False


def register_run_hooks() -> None:
    """Add the Locust event listeners that every user module needs.

    Every user module calls this at import, and only the first call adds
    the listeners:

    - At `init`, the gevent loop's cached time is brought up to date.
      libev times a timer from the time it cached when the loop last ran,
      and importing the users takes seconds on a busy machine, so without
      this `--run-time` ends the test that much too early (seen with
      Locust 2.47 and gevent 26.9).
    - At `test_start`, the statistics are reset FRONTBENCH_BENCH_WARMUP
      seconds later. The reset runs on the process that runs the users, so
      it applies to local runs; a distributed run measures from its start.
    """
    global _hooks_registered
    if _hooks_registered:
        return
    _hooks_registered = True

    import gevent  # type: ignore[import-untyped]
    from locust import events

    @events.init.add_listener  # type: ignore[untyped-decorator]
    def _update_loop_time(**_kwargs: Any) -> None:
        gevent.get_hub().loop.update_now()

    @events.test_start.add_listener  # type: ignore[untyped-decorator]
    def _schedule_reset(environment: Any, **_kwargs: Any) -> None:
        raw = os.environ.get(WARMUP_ENV, "0")
        try:
            warmup = float(raw)
        except ValueError:
            raise ValueError(
                f"invalid {WARMUP_ENV}={raw!r}; set it to a number of seconds"
            ) from None
        if warmup <= 0 or environment.runner is None:
            _write_phase("measuring")
            return

        _write_phase("warmup")

        def reset() -> None:
            gevent.sleep(warmup)
            environment.runner.stats.reset_all()
            _write_phase("measuring")
            logger.info("warm-up of %.1f s done; statistics reset", warmup)

        gevent.spawn(reset)


def _write_phase(phase: str) -> None:
    path = os.environ.get(PHASE_FILE_ENV)
    if path:
        Path(path).write_text(phase, encoding="utf-8")
