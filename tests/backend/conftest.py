"""Fixtures for the backend tests: the data split and the trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frontbench_backend.data import Split, load_split
from frontbench_backend.model import LoadedModel, load_checkpoint


@pytest.fixture(scope="session")
def split() -> Split:
    """Return the default training and held-out split."""
    return load_split()


@pytest.fixture(scope="session")
def model(checkpoint: Path) -> LoadedModel:
    """Return the model trained for this test run, loaded on the CPU."""
    return load_checkpoint(checkpoint, torch.device("cpu"))


@pytest.fixture(scope="session")
def correct_heldout(model: LoadedModel, split: Split) -> list[int]:
    """Return positions of held-out digits the model classifies right at 8x8.

    Three per label, so that tests built on them cover every digit and check
    preprocessing rather than the model's accuracy.
    """
    predicted = model.predict_proba(split.heldout_images).argmax(axis=1)
    positions: list[int] = []
    for label in range(len(model.metadata.labels)):
        right = np.flatnonzero((split.heldout_labels == label) & (predicted == label))
        assert right.size >= 3, f"fewer than 3 held-out {label}s classify right"
        positions.extend(int(position) for position in right[:3])
    return positions
