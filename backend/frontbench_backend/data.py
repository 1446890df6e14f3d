"""The 8x8 digits data set bundled with scikit-learn, its split and example images.

`load_digits` ships inside scikit-learn, so nothing is downloaded. Each image
has 8x8 pixels with values 0..16: the number of ink pixels in one 4x4 block
of the original 32x32 bitmap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

logger = logging.getLogger(__name__)

DATASET_NAME = "sklearn.datasets.load_digits"
DEFAULT_SEED = 0
HELDOUT_FRACTION = 0.2
PIXEL_MAX = 16.0
"""The value of a pixel that is all ink in the data set."""

LABELS = [str(digit) for digit in range(10)]

EXAMPLE_SIZE = 112
"""Width and height in pixels of the example PNG files."""

_EXAMPLE_MARGIN = 8
_PAPER = 255
_INK = 24


@dataclass(frozen=True)
class Split:
    """The training and held-out parts of the data set.

    Images are float32 arrays shaped (N, 8, 8) with values 0..16, labels are
    int64 class indices, and indices are the positions in `load_digits()`.
    """

    train_images: NDArray[np.float32]
    train_labels: NDArray[np.int64]
    train_indices: NDArray[np.int64]
    heldout_images: NDArray[np.float32]
    heldout_labels: NDArray[np.int64]
    heldout_indices: NDArray[np.int64]

    @property
    def input_size(self) -> tuple[int, int]:
        """Height and width of one image in pixels."""
        height, width = self.train_images.shape[1:]
        return int(height), int(width)


def load_split(seed: int = DEFAULT_SEED) -> Split:
    """Load the data set and split it into stratified training and held-out parts.

    The same seed always gives the same split, so the held-out accuracy in a
    checkpoint and the example digits refer to images the model never saw.
    """
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    indices = np.arange(len(labels), dtype=np.int64)
    train_indices, heldout_indices = train_test_split(
        indices,
        test_size=HELDOUT_FRACTION,
        random_state=seed,
        stratify=labels,
    )
    train_indices = np.sort(train_indices)
    heldout_indices = np.sort(heldout_indices)
    return Split(
        train_images=images[train_indices],
        train_labels=labels[train_indices],
        train_indices=train_indices,
        heldout_images=images[heldout_indices],
        heldout_labels=labels[heldout_indices],
        heldout_indices=heldout_indices,
    )


def pick_examples(split: Split) -> list[int]:
    """Pick one held-out image per label and return their positions in the split.

    For each label this takes the held-out image closest to the mean training
    image of that label, so the examples are typical digits rather than the
    hard cases. A test checks that the trained model classifies them right.
    """
    positions = []
    for label in range(len(LABELS)):
        mean = split.train_images[split.train_labels == label].mean(axis=0)
        candidates = np.flatnonzero(split.heldout_labels == label)
        distances = ((split.heldout_images[candidates] - mean) ** 2).sum(axis=(1, 2))
        positions.append(int(candidates[np.argmin(distances)]))
    return positions


def render_digit(image: NDArray[np.float32], size: int = EXAMPLE_SIZE) -> Image.Image:
    """Render an 8x8 data-set image as dark ink on white paper, `size` pixels wide.

    The digit is scaled up smoothly with bicubic interpolation and keeps a
    white margin of a few pixels, so it looks like a scanned digit.
    """
    ink = np.clip(image / PIXEL_MAX, 0.0, 1.0).astype(np.float32)
    inner = size - 2 * _EXAMPLE_MARGIN
    scaled = Image.fromarray(ink).resize((inner, inner), Image.Resampling.BICUBIC)
    ink_scaled = np.clip(np.asarray(scaled), 0.0, 1.0)
    gray = np.full((size, size), _PAPER, dtype=np.float32)
    inner_area = slice(_EXAMPLE_MARGIN, _EXAMPLE_MARGIN + inner)
    gray[inner_area, inner_area] = _PAPER - ink_scaled * (_PAPER - _INK)
    return Image.fromarray(np.rint(gray).astype(np.uint8))


def example_name(label: str, index: int) -> str:
    """Return the file name of the example of `label` at data-set `index`."""
    return f"digit-{label}-{index}.png"


def write_examples(directory: Path, *, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write one held-out digit per label as a PNG file and return the paths.

    Files are named `digit-<label>-<index>.png`, where index is the position
    in `load_digits()`. Existing example files in `directory` are replaced, so
    the folder contains exactly the ten current examples.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("digit-*.png"):
        stale.unlink()

    split = load_split(seed)
    paths = []
    for position in pick_examples(split):
        label = LABELS[int(split.heldout_labels[position])]
        index = int(split.heldout_indices[position])
        path = directory / example_name(label, index)
        render_digit(split.heldout_images[position]).save(path, format="PNG")
        paths.append(path)
    logger.info("wrote %d example digits to %s", len(paths), directory)
    return paths
