"""Device selection, and the same predictions on a CUDA GPU as on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frontbench_backend.data import Split
from frontbench_backend.model import (
    DeviceUnavailable,
    LoadedModel,
    load_checkpoint,
    resolve_device,
)

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device is available"
)
without_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA device is available"
)


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolve_device_auto_prefers_accelerator() -> None:
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize(
    "spec", ["gpu", "CPU", "", "cuda:", "cuda:-1", "cuda:0:1", "cuda0", " cpu"]
)
def test_resolve_device_rejects_invalid_name(spec: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolve_device(spec)

    message = str(caught.value)
    assert not isinstance(caught.value, DeviceUnavailable)
    assert repr(spec) in message
    assert "auto, cpu, cuda, cuda:N, mps" in message


@without_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_rejects_missing_cuda(spec: str) -> None:
    with pytest.raises(DeviceUnavailable, match="CUDA is not available") as caught:
        resolve_device(spec)
    assert repr(spec) in str(caught.value)
    assert "'cpu' or 'auto'" in str(caught.value)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="Apple MPS is available")
def test_resolve_device_rejects_missing_mps() -> None:
    with pytest.raises(DeviceUnavailable, match="MPS is not available"):
        resolve_device("mps")


@needs_cuda
def test_resolve_device_rejects_cuda_index_out_of_range() -> None:
    spec = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DeviceUnavailable, match="CUDA device"):
        resolve_device(spec)


@pytest.mark.gpu
@needs_cuda
def test_cuda_predictions_match_cpu(
    checkpoint: Path, model: LoadedModel, split: Split
) -> None:
    device = resolve_device("cuda:0")
    on_gpu = load_checkpoint(checkpoint, device)
    assert next(on_gpu.module.parameters()).device == device

    expected = model.predict_proba(split.heldout_images)
    actual = on_gpu.predict_proba(split.heldout_images)

    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.gpu
@needs_cuda
def test_cuda_predicts_batches_of_every_size(
    checkpoint: Path, model: LoadedModel, split: Split
) -> None:
    on_gpu = load_checkpoint(checkpoint, resolve_device("cuda"))
    for size in (1, 2, 7, 64, 257):
        batch = split.heldout_images[:size]
        np.testing.assert_allclose(
            on_gpu.predict_proba(batch), model.predict_proba(batch), atol=1e-4
        )
