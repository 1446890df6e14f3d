"""The client package and API contract that every frontbench frontend uses."""

from frontbench_shared.api import ErrorKind, Health, ModelInfo, Prediction, Timings

__all__ = ["ErrorKind", "Health", "ModelInfo", "Prediction", "Timings"]
