"""Backend settings, read from `FRONTBENCH_*` environment variables.

`load_settings()` turns pydantic's validation errors into one `SettingsError`
whose message names each invalid variable, the value it had and the values it
accepts, so `frontbench backend` can print it and exit with status 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FRONTBENCH_"

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 10 * MiB
# A 12-megapixel phone photo (4000x3000) must pass, and a decompression bomb
# claiming 20000x20000 (400 megapixels) must not. Decoding 40 megapixels of
# RGB needs about 120 MB per request.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_BATCH_SIZE = 32
# The longest time the first request of a batch waits for others. Waiting
# longer forms bigger batches under load, but adds that much latency to every
# request when the server is idle. 2 ms is well below the ~10 ms a request
# spends on HTTP and decoding, so an idle server barely notices it.
DEFAULT_MAX_BATCH_WAIT_MS = 2.0

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def available_cpus() -> int:
    """Return how many CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no sched_getaffinity.
        return max(1, os.cpu_count() or 1)


def default_torch_threads(workers: int = 1) -> int:
    """Return the default torch thread count for one of `workers` processes.

    Every worker runs its own intra-op thread pool. More threads speed up the
    forward pass of one large batch, but when the workers together start more
    threads than there are CPUs, they take CPU time from each other and from
    image decoding, and latency grows. So each worker gets an equal share of
    the CPUs, and at least one thread.
    """
    return max(1, available_cpus() // max(1, workers))


def _default_model_path() -> Path:
    # Imported here because the training module imports torch, and reading
    # settings (for example to report an invalid variable) should not wait
    # for that.
    from frontbench_backend.training import DEFAULT_MODEL_PATH

    return Path(DEFAULT_MODEL_PATH)


class Settings(BaseSettings):
    """Configuration of one backend worker process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True
    )

    model_path: Path = Field(
        default_factory=_default_model_path,
        description="The checkpoint file; it is trained there when missing.",
    )
    device: str = Field(
        default="auto", description="The torch device: auto, cpu, cuda, cuda:N or mps."
    )
    torch_threads: Annotated[int, Field(ge=1, le=1024)] = Field(
        default_factory=default_torch_threads,
        description="Intra-op threads of torch in each worker process.",
    )
    batching: bool = Field(
        default=True, description="Group concurrent requests into one forward pass."
    )
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = DEFAULT_MAX_BATCH_SIZE
    max_batch_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = (
        DEFAULT_MAX_BATCH_WAIT_MS
    )
    max_upload_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: Annotated[int, Field(ge=1)] = DEFAULT_MAX_IMAGE_PIXELS
    log_level: LogLevel = "info"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"invalid device {value!r}")

        # An accelerator can be unavailable here (cuda on a CPU-only torch
        # build). Checking now stops the start with the variable named,
        # instead of failing later in every worker. auto and cpu always work.
        if value not in ("auto", "cpu"):
            from frontbench_backend.model import resolve_device

            resolve_device(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


# The accepted values of each variable, as the error message words them.
_ACCEPTED: dict[str, str] = {
    "model_path": "a file path",
    "device": "auto, cpu, cuda, cuda:N (N a GPU index) or mps",
    "torch_threads": "an integer from 1 to 1024",
    "batching": "true or false (also 1/0, yes/no, on/off)",
    "max_batch_size": "an integer from 1 to 4096",
    "max_batch_wait_ms": "a number of milliseconds from 0 to 10000",
    "max_upload_bytes": "a positive integer number of bytes",
    "max_image_pixels": "a positive integer number of pixels",
    "log_level": "critical, error, warning, info or debug",
}


class SettingsError(ValueError):
    """One or more `FRONTBENCH_*` variables have invalid values."""


def env_name(field: str) -> str:
    """Return the environment variable that sets the settings field `field`."""
    return ENV_PREFIX + field.upper()


def _describe(error: Any, overrides: dict[str, Any]) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    value = overrides.get(field, os.environ.get(env_name(field), error.get("input")))
    prefix = f"invalid {env_name(field)}={value!r}"
    # A validator's own reason (such as an unavailable GPU) beats the list.
    reason = str(error.get("ctx", {}).get("error", ""))
    if error["type"] == "value_error" and not reason.startswith("invalid"):
        return f"{prefix}: {reason}"
    return f"{prefix}: expected {_ACCEPTED.get(field, error['msg'])}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment, with `overrides` taking precedence.

    Raises:
        SettingsError: A variable is invalid. The message has one line per
            invalid variable, naming it, its value and the accepted values.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(error, overrides) for error in exc.errors()]
        raise SettingsError("\n".join(lines)) from exc
