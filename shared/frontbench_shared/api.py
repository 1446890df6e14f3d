"""The API contract between the backend and its clients.

These pydantic models are the one definition of the HTTP API: the backend
declares its responses with them, the client parses responses into them, and a
test compares them with the backend's OpenAPI schema.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PREDICT_PATH = "/v1/predict"
MODEL_PATH = "/v1/model"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"

UPLOAD_FIELD = "file"
REQUEST_ID_HEADER = "X-Request-ID"


class ErrorKind(StrEnum):
    """The kind of a failed request, as the backend reports it."""

    INVALID_IMAGE = "invalid_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    INTERNAL = "internal"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timings(_Model):
    """Milliseconds spent on each step of one prediction inside the backend."""

    decode_ms: float = Field(ge=0, description="Reading and decoding the upload.")
    preprocess_ms: float = Field(
        ge=0, description="Finding, centring and scaling the digit."
    )
    queue_ms: float = Field(ge=0, description="Waiting for a batch to be formed.")
    inference_ms: float = Field(ge=0, description="The forward pass of the batch.")
    total_ms: float = Field(ge=0, description="From the request to the response.")


class Prediction(_Model):
    """The response body of `POST /v1/predict`."""

    label: str = Field(description="The most probable label.")
    confidence: float = Field(ge=0, le=1, description="The probability of `label`.")
    probabilities: dict[str, float] = Field(
        description="Every label mapped to its probability; the values sum to 1."
    )
    model_name: str
    model_version: str
    batch_size: int = Field(
        ge=1, description="How many images shared the forward pass of this one."
    )
    timings: Timings
    request_id: str


class BatchingInfo(_Model):
    """The dynamic batching settings of one backend worker."""

    enabled: bool
    max_batch_size: int = Field(ge=1)
    max_wait_ms: float = Field(ge=0)


class ModelInfo(_Model):
    """The response body of `GET /v1/model`."""

    name: str
    version: str
    labels: list[str]
    input_size: tuple[int, int] = Field(description="Height and width in pixels.")
    device: str = Field(description="The torch device, such as `cpu` or `cuda:0`.")
    torch_threads: int = Field(ge=1)
    batching: BatchingInfo
    heldout_accuracy: float = Field(ge=0, le=1)
    dataset: str
    trained_at: str = Field(description="ISO 8601 date and time of training.")
    versions: dict[str, str] = Field(
        description="Library versions the checkpoint was trained with."
    )


class Health(_Model):
    """The answer of `GET /healthz` and `GET /readyz`."""

    status: Literal["ok", "ready", "not_ready"]
    detail: str = ""


class ErrorBody(_Model):
    """The JSON body of every error answer."""

    detail: str = Field(description="What was wrong and what is accepted.")
    kind: ErrorKind
    request_id: str
