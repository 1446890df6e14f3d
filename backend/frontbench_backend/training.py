"""Train the digits CNN and write its checkpoint: `frontbench train`.

Training runs on the CPU with a fixed seed and takes seconds. Each training
batch is augmented with small shifts, scalings, rotations and changes of
stroke thickness, so that digits cut out of real uploads, which are never
framed exactly like the data set, still classify right.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from frontbench_backend.data import (
    DATASET_NAME,
    DEFAULT_SEED,
    LABELS,
    PIXEL_MAX,
    load_split,
)
from frontbench_backend.model import (
    MODEL_NAME,
    MODEL_VERSION,
    CheckpointError,
    CheckpointMetadata,
    DigitsCNN,
    build_checkpoint,
    read_metadata,
)

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4

# Augmentation ranges, in the units of the 8x8 data-set images.
MAX_ROTATION_DEGREES = 12.0
SCALE_RANGE = (0.85, 1.1)
MAX_SHIFT_PIXELS = 0.75
MAX_STROKE_CHANGE = 0.5
AUGMENTED_FRACTION = 0.8

# The network is too small to gain from more threads, and on busy cores more
# threads wait on each other: on 2 shared cores, 3 epochs took 11 s with one
# thread and 99 s with two (torch 2.13 CPU).
TRAINING_THREADS = 1


def default_model_path() -> Path:
    """Return `$XDG_CACHE_HOME/frontbench/digits-cnn.pt`, or the same under ~/.cache.

    An unset, empty or relative XDG_CACHE_HOME falls back to ~/.cache, as the
    XDG Base Directory Specification requires.
    """
    cache = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(cache) if cache and Path(cache).is_absolute() else None
    if root is None:
        root = Path.home() / ".cache"
    return root / "frontbench" / f"{MODEL_NAME}.pt"


DEFAULT_MODEL_PATH = default_model_path()


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries that training depends on."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "scikit-learn": str(sklearn.__version__),
    }


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return randomly shifted, scaled, rotated, thickened or thinned copies.

    Args:
        images: A batch shaped (N, 1, H, W) on the 0..16 pixel scale.
        generator: The source of randomness, so that a seed fixes the result.
    """
    count, _, height, width = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle = torch.deg2rad(uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    scale = uniform(*SCALE_RANGE)
    # affine_grid maps output to input coordinates on a -1..1 scale, so a
    # scale above 1 in the matrix shrinks the digit, and one pixel is 2 / size.
    inverse = 1.0 / scale
    shift_x = uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS) * 2.0 / width
    shift_y = uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS) * 2.0 / height
    cos, sin = torch.cos(angle) * inverse, torch.sin(angle) * inverse
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift_x], dim=1),
            torch.stack([sin, cos, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)

    # Blend towards a 3x3 dilation (thicker strokes) or erosion (thinner).
    dilated = F.max_pool2d(moved, kernel_size=3, stride=1, padding=1)
    eroded = -F.max_pool2d(-moved, kernel_size=3, stride=1, padding=1)
    amount = uniform(-MAX_STROKE_CHANGE, MAX_STROKE_CHANGE).view(count, 1, 1, 1)
    stroked = torch.where(
        amount > 0,
        moved + amount * (dilated - moved),
        moved + amount * (moved - eroded),
    )

    # Preprocessing scales every upload so that its darkest ink is 16, so the
    # augmented images are scaled the same way.
    peak = stroked.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return stroked / peak * PIXEL_MAX


def _batches(count: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, BATCH_SIZE):
        yield order[start : start + BATCH_SIZE]


def _accuracy(
    model: DigitsCNN, images: NDArray[np.float32], labels: NDArray[np.int64]
) -> float:
    with torch.inference_mode():
        logits = model(torch.from_numpy(images).unsqueeze(1))
    predicted = logits.argmax(dim=1).numpy()
    return float((predicted == labels).mean())


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(
    *, seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS
) -> tuple[DigitsCNN, CheckpointMetadata]:
    """Train the model on the training split and evaluate it on the held-out split.

    Training runs in TRAINING_THREADS torch threads and restores the previous
    thread count afterwards.

    Raises:
        ValueError: `epochs` is below 1 or `seed` is negative.
    """
    if epochs < 1:
        raise ValueError(f"invalid epochs {epochs}: train for at least 1 epoch")
    if seed < 0:
        raise ValueError(f"invalid seed {seed}: use an integer of 0 or more")

    with _torch_threads(TRAINING_THREADS):
        return _train(seed, epochs)


def _train(seed: int, epochs: int) -> tuple[DigitsCNN, CheckpointMetadata]:
    split = load_split(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsCNN(num_classes=len(LABELS))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    steps_per_epoch = math.ceil(len(split.train_labels) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch
    )
    images = torch.from_numpy(split.train_images).unsqueeze(1)
    labels = torch.from_numpy(split.train_labels)
    logger.info(
        "training %s %s on %d images of %s for %d epochs (seed %d, %d threads)",
        MODEL_NAME,
        MODEL_VERSION,
        len(labels),
        DATASET_NAME,
        epochs,
        seed,
        torch.get_num_threads(),
    )

    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss = 0.0
        correct = 0
        for batch in _batches(len(labels), generator):
            inputs = images[batch]
            augmented = torch.rand(len(batch), generator=generator) < AUGMENTED_FRACTION
            inputs = torch.where(
                augmented.view(-1, 1, 1, 1), augment(inputs, generator), inputs
            )
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == labels[batch]).sum())
        logger.info(
            "epoch %d/%d: loss %.4f, training accuracy %.4f, %.1f s elapsed",
            epoch,
            epochs,
            total_loss / len(labels),
            correct / len(labels),
            time.perf_counter() - started,
        )

    model.eval()
    accuracy = _accuracy(model, split.heldout_images, split.heldout_labels)
    logger.info(
        "held-out accuracy %.4f on %d images after %.1f s",
        accuracy,
        len(split.heldout_labels),
        time.perf_counter() - started,
    )
    metadata = CheckpointMetadata(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        labels=list(LABELS),
        input_size=split.input_size,
        heldout_accuracy=accuracy,
        dataset=DATASET_NAME,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
        versions=library_versions(),
    )
    return model, metadata


def train_and_save(
    path: Path, *, seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS
) -> CheckpointMetadata:
    """Train the model and write its checkpoint to `path`, replacing it atomically.

    The checkpoint is written to a temporary file in the same folder and then
    renamed, so a reader never sees a half-written file.
    """
    model, metadata = train(seed=seed, epochs=epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(build_checkpoint(model, metadata), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    logger.info("wrote checkpoint %s", path)
    return metadata


def ensure_checkpoint(
    path: Path, *, seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS
) -> CheckpointMetadata:
    """Return the metadata of the checkpoint at `path`, training it first if missing.

    Several processes, such as the workers of one backend, may call this at
    once: an exclusive lock on `<path>.lock` lets one of them train while the
    others wait and then read the file it wrote.

    Raises:
        CheckpointError: the file exists but is corrupt or not a checkpoint,
            or its folder or lock file cannot be created.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a+b")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise CheckpointError(
            f"cannot create {exc.filename or lock_path} for checkpoint {path} "
            f"({exc.strerror}); choose a path in a writable folder"
        ) from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to finish writing %s", path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                return read_metadata(path)
            logger.warning("no checkpoint at %s; training the default model", path)
            return train_and_save(path, seed=seed, epochs=epochs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of `frontbench train`."""
    parser = argparse.ArgumentParser(
        prog="frontbench train",
        description=(
            f"Train the {MODEL_NAME} model on the scikit-learn digits data set "
            "and write its checkpoint."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=default_model_path(),
        metavar="PATH",
        help="checkpoint file to write (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=DEFAULT_SEED,
        help="seed of the data split, initial weights and augmentation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help="number of passes over the training split (default: %(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run `frontbench train` and return its exit status."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
        )

    try:
        metadata = train_and_save(args.out, seed=args.seed, epochs=args.epochs)
    except OSError as exc:
        print(f"frontbench train: failed to write {args.out}: {exc}", file=sys.stderr)
        return 1

    print(
        f"wrote {args.out}: {metadata.name} {metadata.version}, "
        f"held-out accuracy {metadata.heldout_accuracy:.2%}"
    )
    return 0
