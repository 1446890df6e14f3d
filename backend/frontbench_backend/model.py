"""The digits CNN, its checkpoint format and the torch device it runs on."""

from __future__ import annotations

import logging
import pickle
import re
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from frontbench_backend.data import PIXEL_MAX

logger = logging.getLogger(__name__)

MODEL_NAME = "digits-cnn"
MODEL_VERSION = "1.0.0"
CHECKPOINT_FORMAT = "frontbench-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_CUDA_INDEX = re.compile(r"^cuda:(?P<index>\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or not a frontbench checkpoint."""


class DeviceUnavailable(ValueError):
    """A valid device was requested, but this machine or torch build lacks it.

    It is a ValueError so that a settings validator reports it like any other
    invalid value, with the variable that named the device.
    """


class DigitsCNN(nn.Module):
    """A small convolutional network for 8x8 digit images with values 0..16.

    Input is a float tensor shaped (N, 1, H, W) on the data set's pixel scale;
    output is (N, num_classes) logits. The adaptive pooling before the
    classifier makes the layer sizes independent of the input size.
    """

    def __init__(self, num_classes: int = 10, *, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(2 * width * 2 * 2, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of images on the 0..16 pixel scale."""
        logits: torch.Tensor = self.classifier(self.features(images / PIXEL_MAX))
        return logits


@dataclass(frozen=True)
class CheckpointMetadata:
    """Metadata stored in a checkpoint: the model, its labels and its training."""

    name: str
    version: str
    labels: list[str]
    input_size: tuple[int, int]
    heldout_accuracy: float
    dataset: str
    trained_at: str
    seed: int
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as plain types that `torch.load` reads safely."""
        values = asdict(self)
        values["input_size"] = list(self.input_size)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointMetadata:
        """Build metadata from the dictionary stored in a checkpoint."""
        height, width = values["input_size"]
        return cls(
            name=str(values["name"]),
            version=str(values["version"]),
            labels=[str(label) for label in values["labels"]],
            input_size=(int(height), int(width)),
            heldout_accuracy=float(values["heldout_accuracy"]),
            dataset=str(values["dataset"]),
            trained_at=str(values["trained_at"]),
            seed=int(values["seed"]),
            versions={str(k): str(v) for k, v in values["versions"].items()},
        )


def resolve_device(spec: str) -> torch.device:
    """Turn a device name from the settings into an available torch device.

    `auto` picks CUDA, then Apple MPS, then the CPU. `cuda`, `cuda:N` and `mps`
    must be available, or DeviceUnavailable is raised with the reason.

    Raises:
        ValueError: `spec` is not one of auto, cpu, cuda, cuda:N or mps.
        DeviceUnavailable: the requested accelerator is not available.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    if spec == "cpu":
        return torch.device("cpu")

    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailable(
                "device 'mps' was requested, but Apple MPS is not available on "
                "this machine; use 'cpu' or 'auto'"
            )
        return torch.device("mps")

    match = _CUDA_INDEX.match(spec)
    if spec != "cuda" and match is None:
        raise ValueError(
            f"invalid device {spec!r}: expected one of "
            f"{', '.join(DEVICE_SPECS)} (N is a GPU index such as 0)"
        )

    if not torch.cuda.is_available():
        build = torch.__version__
        reason = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise DeviceUnavailable(
            f"device {spec!r} was requested, but CUDA is not available "
            f"({reason}; torch {build}); use 'cpu' or 'auto'"
        )

    if match is not None:
        index = int(match["index"])
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailable(
                f"device {spec!r} was requested, but only {count} CUDA "
                f"device(s) are visible (cuda:0 to cuda:{count - 1})"
            )
    return torch.device(spec)


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded from a checkpoint onto a device, ready to predict."""

    module: DigitsCNN
    metadata: CheckpointMetadata
    device: torch.device

    def predict_proba(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Return class probabilities, shaped (N, classes), for a batch of images.

        Args:
            batch: Images shaped (N, H, W) on the 0..16 pixel scale, as
                `preprocess.to_model_input` returns them, where (H, W) is
                the checkpoint's input size.

        Raises:
            ValueError: the batch has the wrong shape.
        """
        expected = self.metadata.input_size
        if batch.ndim != 3 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"invalid batch shape {tuple(batch.shape)}: expected "
                f"(N, {expected[0]}, {expected[1]}) for this model"
            )

        images = np.ascontiguousarray(batch, dtype=np.float32)
        with torch.inference_mode():
            inputs = torch.from_numpy(images).unsqueeze(1).to(self.device)
            probabilities = torch.softmax(self.module(inputs), dim=1)
            result: NDArray[np.float32] = probabilities.cpu().numpy()
        return result


def build_checkpoint(module: DigitsCNN, metadata: CheckpointMetadata) -> dict[str, Any]:
    """Return the checkpoint dictionary, made of plain types and CPU tensors."""
    state = {
        name: tensor.detach().cpu() for name, tensor in module.state_dict().items()
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "metadata": metadata.to_dict(),
        "architecture": {"num_classes": module.num_classes, "width": module.width},
        "state_dict": state,
    }


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory, not a file; use a file path, "
            f"or create one with 'frontbench train --out PATH'"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}; train one with "
            f"'frontbench train --out {path}'"
        )

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({exc.strerror}); allow this "
            f"user to read it, or train a new one with "
            f"'frontbench train --out PATH'"
        ) from exc
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        # On text files, torch 2.13's weights-only unpickler also raises
        # KeyError, IndexError and struct.error from its opcode handling.
        # A zip archive cut short raises OSError (EINVAL).
        KeyError,
        IndexError,
        struct.error,
        OSError,
    ) as exc:
        # torch's messages run over several lines; the first names the cause.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        if isinstance(exc, (KeyError, IndexError, struct.error)):
            reason = f"invalid pickle data: {type(exc).__name__}: {reason}"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({reason}); "
            f"delete it to have the backend train a new one, or run "
            f"'frontbench train --out {path}'"
        ) from exc

    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a frontbench checkpoint; "
            f"train one with 'frontbench train --out {path}'"
        )

    version = content.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, but this "
            f"frontbench reads version {CHECKPOINT_FORMAT_VERSION}; train a new "
            f"one with 'frontbench train --out {path}'"
        )
    return content


def read_metadata(path: Path) -> CheckpointMetadata:
    """Read the metadata of the checkpoint at `path` without building the model.

    Raises:
        CheckpointError: the file is missing, corrupt or not a checkpoint.
    """
    return _metadata_of(_read(path), path)


def _metadata_of(content: dict[str, Any], path: Path) -> CheckpointMetadata:
    try:
        return CheckpointMetadata.from_dict(content["metadata"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has invalid metadata ({exc!r}); train a new one "
            f"with 'frontbench train --out {path}'"
        ) from exc


def load_checkpoint(path: Path, device: torch.device) -> LoadedModel:
    """Load the checkpoint at `path` onto `device`, in evaluation mode.

    Raises:
        CheckpointError: the file is missing, corrupt, not a frontbench
            checkpoint, or its weights do not fit the network.
    """
    content = _read(path)
    metadata = _metadata_of(content, path)
    try:
        architecture = content["architecture"]
        module = DigitsCNN(
            num_classes=int(architecture["num_classes"]),
            width=int(architecture["width"]),
        )
        module.load_state_dict(content["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has weights that do not fit {MODEL_NAME} "
            f"{MODEL_VERSION} ({exc}); train a new one with "
            f"'frontbench train --out {path}'"
        ) from exc

    module.to(device).eval()
    logger.info(
        "loaded %s %s from %s onto %s (held-out accuracy %.4f)",
        metadata.name,
        metadata.version,
        path,
        device,
        metadata.heldout_accuracy,
    )
    return LoadedModel(module=module, metadata=metadata, device=device)
