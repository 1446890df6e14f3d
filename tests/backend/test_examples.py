"""The example digits committed in the shared package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from frontbench_backend.data import EXAMPLE_SIZE, LABELS, Split, write_examples
from frontbench_backend.model import LoadedModel
from frontbench_backend.preprocess import decode_image, to_model_input
from frontbench_shared.examples import EXAMPLES_DIR, Example

MAX_PIXELS = 1_000_000


def test_examples_match_write_examples(tmp_path: Path) -> None:
    written = {path.name: path for path in write_examples(tmp_path)}
    committed = {path.name: path for path in EXAMPLES_DIR.glob("digit-*.png")}

    assert sorted(committed) == sorted(written), (
        "regenerate them with frontbench_backend.data.write_examples"
    )
    for name, path in committed.items():
        with Image.open(path) as stored, Image.open(written[name]) as fresh:
            assert stored.mode == fresh.mode, name
            assert np.array_equal(np.asarray(stored), np.asarray(fresh)), (
                f"{name} differs from what write_examples writes now"
            )


def test_examples_cover_every_label(examples: list[Example]) -> None:
    assert [example.label for example in examples] == LABELS


def test_examples_are_heldout(examples: list[Example], split: Split) -> None:
    targets = load_digits().target
    heldout = set(split.heldout_indices.tolist())
    for example in examples:
        assert example.index in heldout, f"{example.path.name} is a training image"
        assert str(targets[example.index]) == example.label, example.path.name


def test_examples_look_like_paper(examples: list[Example]) -> None:
    for example in examples:
        with Image.open(example.path) as image:
            pixels = np.asarray(image)
            assert image.size == (EXAMPLE_SIZE, EXAMPLE_SIZE), example.path.name
        assert image.mode == "L", example.path.name
        assert int(pixels[0].min()) == 255, f"{example.path.name} has no white margin"
        assert int(pixels.min()) < 64, f"{example.path.name} has no dark ink"


def test_examples_predict_their_label(
    examples: list[Example], model: LoadedModel
) -> None:
    for example in examples:
        image = decode_image(example.read_bytes(), max_pixels=MAX_PIXELS)
        features = to_model_input(image, model.metadata.input_size)
        probabilities = model.predict_proba(features[np.newaxis])[0]
        predicted = model.metadata.labels[int(probabilities.argmax())]
        assert predicted == example.label, (
            f"{example.path.name} predicted {predicted} "
            f"with probability {probabilities.max():.3f}"
        )
