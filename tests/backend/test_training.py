"""Training, the data split, the checkpoint format and `frontbench train`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from frontbench_backend.data import (
    DATASET_NAME,
    DEFAULT_SEED,
    LABELS,
    Split,
    load_split,
)
from frontbench_backend.model import (
    CHECKPOINT_FORMAT,
    MODEL_NAME,
    MODEL_VERSION,
    CheckpointError,
    LoadedModel,
    load_checkpoint,
    read_metadata,
)
from frontbench_backend.training import (
    augment,
    default_model_path,
    ensure_checkpoint,
    main,
    train_and_save,
)

MIN_HELDOUT_ACCURACY = 0.97
DATASET_SIZE = 1797


def test_checkpoint_metadata_describes_model(checkpoint: Path) -> None:
    metadata = read_metadata(checkpoint)

    assert metadata.name == MODEL_NAME
    assert metadata.version == MODEL_VERSION
    assert metadata.labels == [str(digit) for digit in range(10)]
    assert metadata.input_size == (8, 8)
    assert metadata.dataset == DATASET_NAME
    assert metadata.seed == DEFAULT_SEED
    assert set(metadata.versions) == {"python", "torch", "numpy", "scikit-learn"}
    assert metadata.versions["torch"] == torch.__version__
    trained_at = datetime.fromisoformat(metadata.trained_at)
    assert trained_at.tzinfo is not None, "trained_at has no time zone"


def test_checkpoint_loads_with_weights_only(checkpoint: Path) -> None:
    content = torch.load(checkpoint, weights_only=True)
    assert content["format"] == CHECKPOINT_FORMAT
    assert isinstance(content["metadata"], dict)


def test_model_reaches_heldout_accuracy(model: LoadedModel, split: Split) -> None:
    predicted = model.predict_proba(split.heldout_images).argmax(axis=1)
    accuracy = float((predicted == split.heldout_labels).mean())

    assert accuracy >= MIN_HELDOUT_ACCURACY, (
        f"held-out accuracy {accuracy:.4f} on {len(predicted)} images"
    )
    assert model.metadata.heldout_accuracy == pytest.approx(accuracy)


def test_load_split_is_disjoint_and_complete(split: Split) -> None:
    train, heldout = set(split.train_indices), set(split.heldout_indices)
    assert not train & heldout, "an image is in both parts"
    assert train | heldout == set(range(DATASET_SIZE))


def test_load_split_is_stratified(split: Split) -> None:
    train_counts = np.bincount(split.train_labels, minlength=10)
    heldout_counts = np.bincount(split.heldout_labels, minlength=10)
    shares = heldout_counts / (train_counts + heldout_counts)
    assert np.all(np.abs(shares - 0.2) < 0.01), f"held-out shares {shares.round(3)}"


def test_load_split_depends_on_seed_only(split: Split) -> None:
    again, other = load_split(DEFAULT_SEED), load_split(DEFAULT_SEED + 1)
    assert np.array_equal(again.heldout_indices, split.heldout_indices)
    assert not np.array_equal(other.heldout_indices, split.heldout_indices)


def test_predict_proba_returns_distributions(model: LoadedModel, split: Split) -> None:
    probabilities = model.predict_proba(split.heldout_images[:17])

    assert probabilities.shape == (17, len(LABELS))
    assert probabilities.dtype == np.float32
    assert float(probabilities.min()) >= 0.0
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "shape", [(8, 8), (1, 8, 7), (2, 1, 8, 8)], ids=["no-batch", "width", "channel"]
)
def test_predict_proba_rejects_wrong_shape(
    model: LoadedModel, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=r"invalid batch shape .*\(N, 8, 8\)"):
        model.predict_proba(np.zeros(shape, dtype=np.float32))


def test_predict_proba_runs_in_inference_mode(model: LoadedModel, split: Split) -> None:
    seen: list[bool] = []
    handle = model.module.register_forward_hook(
        lambda *_: seen.append(torch.is_inference_mode_enabled())
    )
    try:
        model.predict_proba(split.heldout_images[:2])
    finally:
        handle.remove()
    assert seen == [True]


def test_augment_keeps_shape_and_peak(split: Split) -> None:
    images = torch.from_numpy(split.train_images[:32]).unsqueeze(1)
    first = augment(images, torch.Generator().manual_seed(1))
    second = augment(images, torch.Generator().manual_seed(1))

    assert first.shape == images.shape
    torch.testing.assert_close(first.amax(dim=(1, 2, 3)), torch.full((32,), 16.0))
    assert torch.equal(first, second), "the same seed gave different augmentations"
    assert not torch.equal(first, images), "augmentation changed nothing"


def test_train_and_save_is_deterministic(tmp_path: Path) -> None:
    first = tmp_path / "nested" / "folder" / "first.pt"
    second = tmp_path / "second.pt"
    train_and_save(first, epochs=1)
    train_and_save(second, epochs=1)

    assert first.is_file(), "the parent folders were not created"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    weights = [
        torch.load(path, weights_only=True)["state_dict"] for path in (first, second)
    ]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), f"{name} differs between runs"


@pytest.mark.parametrize(
    ("options", "message"),
    [({"epochs": 0}, "invalid epochs 0"), ({"seed": -3}, "invalid seed -3")],
)
def test_train_and_save_rejects_invalid_option(
    tmp_path: Path, options: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train_and_save(tmp_path / "model.pt", **options)
    assert not (tmp_path / "model.pt").exists()


Writer = Callable[[Path, Path], None]
"""Writes a bad checkpoint to its first path, given a good one at the second."""


def _write_nothing(path: Path, source: Path) -> None:
    pass


def _write_empty(path: Path, source: Path) -> None:
    path.write_bytes(b"")


def _write_random_bytes(path: Path, source: Path) -> None:
    path.write_bytes(os.urandom(512))


def _write_truncated(path: Path, source: Path) -> None:
    path.write_bytes(source.read_bytes()[:2000])


def _write_other_dictionary(path: Path, source: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _write_tensor(path: Path, source: Path) -> None:
    torch.save(torch.zeros(3), path)


def _write_edited(**changes: object) -> Writer:
    def write(path: Path, source: Path) -> None:
        content = torch.load(source, weights_only=True)
        content.update(changes)
        torch.save(content, path)

    return write


BAD_CHECKPOINTS: dict[str, tuple[Writer, str]] = {
    "missing": (_write_nothing, "not found"),
    "empty": (_write_empty, "corrupt"),
    "random bytes": (_write_random_bytes, "corrupt"),
    "truncated": (_write_truncated, "corrupt"),
    "other dictionary": (_write_other_dictionary, "not a frontbench"),
    "tensor": (_write_tensor, "not a frontbench"),
    "newer format": (_write_edited(format_version=99), "format version 99"),
    "bad metadata": (_write_edited(metadata={"name": "x"}), "invalid metadata"),
    "wrong weights": (
        _write_edited(state_dict={"w": torch.zeros(1)}),
        "do not fit",
    ),
    "no architecture": (_write_edited(architecture=None), "do not fit"),
}


@pytest.mark.parametrize(
    ("write", "message"), BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys()
)
def test_load_checkpoint_rejects_bad_file(
    tmp_path: Path, checkpoint: Path, write: Writer, message: str
) -> None:
    path = tmp_path / "bad.pt"
    write(path, checkpoint)

    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(path, torch.device("cpu"))
    assert str(path) in str(caught.value), "the error does not name the file"


def test_ensure_checkpoint_reads_existing(tmp_path: Path, checkpoint: Path) -> None:
    path = tmp_path / "model.pt"
    shutil.copy(checkpoint, path)
    modified = path.stat().st_mtime_ns

    metadata = ensure_checkpoint(path)

    assert metadata == read_metadata(checkpoint)
    assert path.stat().st_mtime_ns == modified, "the checkpoint was rewritten"


@pytest.mark.slow
def test_ensure_checkpoint_trains_once_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "model.pt"
    script = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        from frontbench_backend.training import ensure_checkpoint
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        metadata = ensure_checkpoint(Path({str(path)!r}), epochs=1)
        print("trained_at", metadata.trained_at)
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=240)
            outputs.append(output)
            assert process.returncode == 0, output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    trainings = sum("no checkpoint at" in output for output in outputs)
    assert trainings == 1, "\n---\n".join(outputs)
    stamps = {
        line
        for output in outputs
        for line in output.splitlines()
        if line.startswith("trained_at")
    }
    assert len(stamps) == 1, f"the processes read different checkpoints: {stamps}"


def test_train_main_writes_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cli" / "model.pt"
    status = main(["--out", str(path), "--epochs", "1", "--seed", "3"])

    assert status == 0
    assert read_metadata(path).seed == 3
    output = capsys.readouterr().out
    assert str(path) in output
    assert "held-out accuracy" in output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs: must be 1 or more, got 0"),
        (["--seed", "-1"], "--seed: must be 0 or more, got -1"),
        (["--epochs", "ten"], "--epochs: invalid"),
        (["--out"], "--out: expected one argument"),
    ],
)
def test_train_main_rejects_bad_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_train_main_reports_unwritable_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = blocker / "model.pt"

    assert main(["--out", str(path), "--epochs", "1"]) == 1
    assert f"failed to write {path}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cache_home", "expected"),
    [
        ("/srv/cache", "/srv/cache/frontbench/digits-cnn.pt"),
        ("", "{home}/.cache/frontbench/digits-cnn.pt"),
        ("relative/cache", "{home}/.cache/frontbench/digits-cnn.pt"),
        (None, "{home}/.cache/frontbench/digits-cnn.pt"),
    ],
)
def test_default_model_path_follows_xdg(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache_home: str | None,
    expected: str,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if cache_home is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", cache_home)
    assert default_model_path() == Path(expected.format(home=tmp_path))
