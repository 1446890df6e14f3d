"""The FastAPI app that serves the digits model.

`create_app(settings)` builds one app; uvicorn calls `create_app_from_env()`
in each worker process. The model is loaded by a background task that the
lifespan starts, so the server responds to `/healthz`, and to `/readyz`
with 503, while the checkpoint is trained (on a first start) or loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
import torch
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageDraw

from frontbench_backend.batching import Batcher, BatcherClosed
from frontbench_backend.errors import (
    STARTED_SCOPE_KEY,
    ApiError,
    RequestContextMiddleware,
    UploadLimitMiddleware,
    install_error_handlers,
    request_id_of,
)
from frontbench_backend.metrics import Metrics
from frontbench_backend.model import LoadedModel, load_checkpoint, resolve_device
from frontbench_backend.preprocess import decode_image, to_model_input
from frontbench_backend.settings import Settings, load_settings
from frontbench_backend.training import ensure_checkpoint
from frontbench_shared.api import (
    HEALTH_PATH,
    METRICS_PATH,
    MODEL_PATH,
    PREDICT_PATH,
    READY_PATH,
    UPLOAD_FIELD,
    BatchingInfo,
    ErrorBody,
    ErrorKind,
    Health,
    ModelInfo,
    Prediction,
    Timings,
)

logger = logging.getLogger(__name__)

_NOT_READY = {"model": ErrorBody, "description": "The model is not loaded yet."}
_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body could not be parsed."},
    413: {
        "model": ErrorBody,
        "description": "The upload or the decoded image is over the limit.",
    },
    415: {
        "model": ErrorBody,
        "description": "The file is not an image, truncated, or unsupported.",
    },
    422: {
        "model": ErrorBody,
        "description": "No file field, an empty file, or not multipart/form-data.",
    },
    500: {"model": ErrorBody, "description": "The server failed; see its log."},
    503: _NOT_READY,
}


@dataclass
class ServingState:
    """The loaded model and inference thread that one worker's handlers share."""

    model: LoadedModel
    batcher: Batcher
    torch_threads: int


class Backend:
    """Loads the model in the background and keeps it for the request handlers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.serving: ServingState | None = None
        self.load_error: str | None = None

    def require_serving(self) -> ServingState:
        """Return the serving state, or raise a 503 ApiError while not ready."""
        if self.serving is None:
            raise ApiError(ErrorKind.NOT_READY, self.not_ready_detail())
        return self.serving

    def not_ready_detail(self) -> str:
        """Describe why the worker is not ready yet."""
        if self.load_error is not None:
            return f"The model failed to load: {self.load_error}"
        return "The model is still loading; retry in a few seconds."

    async def load(self) -> None:
        """Train the checkpoint if it is missing, load, warm up, and mark ready."""
        try:
            # Abandoned on cancellation, so that a server stopped during a long
            # training run shuts down at once instead of waiting for it.
            model = await anyio.to_thread.run_sync(
                self._load_and_warm_up, abandon_on_cancel=True
            )
        except Exception as exc:
            self.load_error = str(exc)
            logger.exception("model failed to load from %s", self.settings.model_path)
            return

        batcher = Batcher(
            model.predict_proba,
            enabled=self.settings.batching,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_batch_wait_ms,
            observe=lambda size, seconds: self.metrics.observe_batch(
                size=size, seconds=seconds
            ),
        )
        batcher.start()
        self.serving = ServingState(model, batcher, torch.get_num_threads())
        self.metrics.ready.set(1)
        logger.info("worker %d is ready", os.getpid())

    def _load_and_warm_up(self) -> LoadedModel:
        settings = self.settings
        metadata = ensure_checkpoint(settings.model_path)
        torch.set_num_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        model = load_checkpoint(settings.model_path, device)

        # The first decode loads Pillow's plugins, and the first forward passes
        # allocate buffers and pick kernels. Running them now, for one image
        # and for a full batch, spares the first requests that delay.
        started = time.perf_counter()
        model_input, _, _ = _preprocess(
            _warm_up_png(),
            max_pixels=settings.max_image_pixels,
            input_size=metadata.input_size,
        )
        for size in {1, settings.max_batch_size if settings.batching else 1}:
            model.predict_proba(np.stack([model_input] * size))
        logger.info(
            "warmed up %s on %s with %d torch threads in %.0f ms",
            metadata.name,
            device,
            torch.get_num_threads(),
            (time.perf_counter() - started) * 1000,
        )
        return model

    async def stop(self) -> None:
        """Stop the inference thread, failing the requests still queued."""
        self.metrics.ready.set(0)
        if self.serving is not None:
            await anyio.to_thread.run_sync(self.serving.batcher.stop)
            self.serving = None


def _warm_up_png() -> bytes:
    # A dark bar on white paper: enough ink for preprocessing to find a digit.
    image = Image.new("L", (32, 32), color=255)
    ImageDraw.Draw(image).rectangle((14, 4, 18, 28), fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _preprocess(
    data: bytes, *, max_pixels: int, input_size: tuple[int, int]
) -> tuple[np.ndarray, float, float]:
    started = time.perf_counter()
    image = decode_image(data, max_pixels=max_pixels)
    decoded = time.perf_counter()
    model_input = to_model_input(image, input_size)
    finished = time.perf_counter()
    return model_input, (decoded - started) * 1000, (finished - decoded) * 1000


def _build_prediction(
    serving: ServingState,
    *,
    probabilities: np.ndarray,
    batch_size: int,
    timings: Timings,
    request_id: str,
) -> Prediction:
    metadata = serving.model.metadata
    best = int(np.argmax(probabilities))
    return Prediction(
        label=metadata.labels[best],
        confidence=float(probabilities[best]),
        probabilities={
            label: float(value)
            for label, value in zip(metadata.labels, probabilities, strict=True)
        },
        model_name=metadata.name,
        model_version=metadata.version,
        batch_size=batch_size,
        timings=timings,
        request_id=request_id,
    )


def _add_routes(app: FastAPI, backend: Backend) -> None:
    settings = backend.settings

    @app.post(
        PREDICT_PATH,
        response_model=Prediction,
        responses=_PREDICT_ERRORS,
        summary="Predict the digit in an uploaded image",
    )
    async def predict(
        request: Request,
        file: Annotated[
            UploadFile,
            File(
                alias=UPLOAD_FIELD,
                description="A PNG, JPEG, WebP, BMP, GIF or TIFF image of one digit.",
            ),
        ],
    ) -> Prediction:
        serving = backend.require_serving()
        request_id = request_id_of(request.scope)
        started = request.scope.get(STARTED_SCOPE_KEY, time.perf_counter())

        read_started = time.perf_counter()
        data = await file.read()
        read_ms = (time.perf_counter() - read_started) * 1000
        if not data:
            raise ApiError(
                ErrorKind.EMPTY_FILE,
                f"The uploaded file {file.filename!r} is empty (0 bytes). "
                "Upload a PNG, JPEG, WebP, BMP, GIF or TIFF image of one digit.",
            )

        # Decoding a large photo takes tens of milliseconds of CPU, so it runs
        # in a worker thread to keep the event loop free for other requests.
        model_input, decode_ms, preprocess_ms = await anyio.to_thread.run_sync(
            lambda: _preprocess(
                data,
                max_pixels=settings.max_image_pixels,
                input_size=serving.model.metadata.input_size,
            )
        )
        try:
            result = await serving.batcher.submit(model_input, request_id=request_id)
        except BatcherClosed as exc:
            raise ApiError(ErrorKind.NOT_READY, str(exc)) from exc

        timings = Timings(
            decode_ms=read_ms + decode_ms,
            preprocess_ms=preprocess_ms,
            queue_ms=result.queue_ms,
            inference_ms=result.inference_ms,
            total_ms=(time.perf_counter() - started) * 1000,
        )
        return _build_prediction(
            serving,
            probabilities=result.probabilities,
            batch_size=result.batch_size,
            timings=timings,
            request_id=request_id,
        )

    @app.get(
        MODEL_PATH,
        response_model=ModelInfo,
        responses={503: _NOT_READY},
        summary="Describe the loaded model and how this worker runs it",
    )
    async def model_info() -> ModelInfo:
        serving = backend.require_serving()
        metadata = serving.model.metadata
        return ModelInfo(
            name=metadata.name,
            version=metadata.version,
            labels=list(metadata.labels),
            input_size=metadata.input_size,
            device=str(serving.model.device),
            torch_threads=serving.torch_threads,
            batching=BatchingInfo(
                enabled=serving.batcher.enabled,
                max_batch_size=serving.batcher.max_batch_size,
                max_wait_ms=serving.batcher.max_wait_s * 1000,
            ),
            heldout_accuracy=metadata.heldout_accuracy,
            dataset=metadata.dataset,
            trained_at=metadata.trained_at,
            versions=dict(metadata.versions),
        )

    @app.get(HEALTH_PATH, response_model=Health, summary="Report that the process runs")
    async def health() -> Health:
        return Health(status="ok")

    @app.get(
        READY_PATH,
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready yet."}},
        summary="Report whether the model is loaded and warmed up",
    )
    async def ready() -> Health | JSONResponse:
        if backend.serving is not None:
            return Health(status="ready")
        body = Health(status="not_ready", detail=backend.not_ready_detail())
        return JSONResponse(body.model_dump(mode="json"), status_code=503)

    @app.get(
        METRICS_PATH,
        response_class=Response,
        summary="Export this worker's metrics in the Prometheus text format",
    )
    async def metrics() -> Response:
        return Response(backend.metrics.render(), media_type=Metrics.content_type)


def create_app(settings: Settings) -> FastAPI:
    """Build the backend app; its lifespan loads the model in the background."""
    metrics = Metrics(max_batch_size=settings.max_batch_size)
    backend = Backend(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info(
            "worker %d starting: model_path=%s device=%s torch_threads=%d "
            "batching=%s max_batch_size=%d max_batch_wait_ms=%.1f "
            "max_upload_bytes=%d max_image_pixels=%d",
            os.getpid(),
            settings.model_path,
            settings.device,
            settings.torch_threads,
            settings.batching,
            settings.max_batch_size,
            settings.max_batch_wait_ms,
            settings.max_upload_bytes,
            settings.max_image_pixels,
        )
        loading = asyncio.create_task(backend.load(), name="frontbench-load-model")
        try:
            yield
        finally:
            # A load still running (training, say) finishes in its thread,
            # because a thread cannot be interrupted; its result is dropped.
            loading.cancel()
            await backend.stop()
            logger.info("worker %d stopped", os.getpid())

    app = FastAPI(
        title="frontbench backend",
        version="1.0.0",
        description="Predicts the digit in an uploaded image with a small CNN.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.backend = backend
    install_error_handlers(app)
    # Added last means outermost: the request id exists before the upload
    # limit can reject a request, so that response carries it too.
    app.add_middleware(
        UploadLimitMiddleware, path=PREDICT_PATH, max_bytes=settings.max_upload_bytes
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    _add_routes(app, backend)
    return app


def create_app_from_env() -> FastAPI:
    """Build the app from `FRONTBENCH_*` variables; uvicorn's factory per worker."""
    return create_app(load_settings())
