"""Dynamic batching: concurrent requests share one forward pass.

Requests call `await batcher.submit(image)` from the event loop. A dedicated
thread takes the first waiting image, then keeps collecting images until it
has `max_batch_size` of them or `max_wait_ms` has passed since it took the
first. It runs one forward pass on the stacked batch and hands each request
its own row through an asyncio future. With batching disabled the thread
runs every image alone, still off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# Takes a float32 batch of shape (N, H, W) and returns (N, C) probabilities.
PredictBatch = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[int, float], None]

_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher was stopped before it ran the submitted image."""


@dataclass(frozen=True)
class BatchResult:
    """The prediction for one image, with the size and timing of its batch."""

    probabilities: np.ndarray
    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[BatchResult]
    loop: asyncio.AbstractEventLoop
    request_id: str
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future[BatchResult], result: BatchResult) -> None:
    # The request may have been cancelled (client gone) while it waited.
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[BatchResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class Batcher:
    """Runs `predict` on batches of concurrently submitted images in one thread.

    Args:
        predict: The model's batch prediction function.
        enabled: Whether to group images; when False every batch has one image.
        max_batch_size: The maximum number of images in one forward pass.
        max_wait_ms: The maximum time the first image of a batch waits for
            more images, in milliseconds.
        observe: Called with the batch size and the forward pass duration in
            seconds after each batch, for example to record metrics.
    """

    def __init__(
        self,
        predict: PredictBatch,
        *,
        enabled: bool = True,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {max_wait_ms}")
        self.predict = predict
        self.enabled = enabled
        self.max_batch_size = max_batch_size if enabled else 1
        self.max_wait_s = max_wait_ms / 1000 if enabled else 0.0
        self.observe = observe
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Start the inference thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="frontbench-inference", daemon=True
        )
        self._thread.start()
        logger.info(
            "batcher started: batching=%s max_batch_size=%d max_wait_ms=%.1f",
            self.enabled,
            self.max_batch_size,
            self.max_wait_s * 1000,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in progress, fail the images still queued, and stop."""
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("inference thread did not stop within %.0f s", timeout)
        self._thread = None
        self._fail_queued()
        logger.info("batcher stopped")

    async def submit(self, image: np.ndarray, *, request_id: str = "") -> BatchResult:
        """Queue one preprocessed image and wait for its own prediction.

        Raises:
            BatcherClosed: The batcher is stopped, or stopped while waiting.
        """
        if self._closed or self._thread is None:
            raise BatcherClosed("the model is not running; the server is stopping")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.put(_Item(image, future, loop, request_id))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Item)
            batch, stop = self._collect(first)
            self._run_batch(batch)
            if stop:
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                # Images already waiting are taken at once, without a timeout.
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Item)
            batch.append(item)
        return batch, False

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            stacked = np.stack([item.image for item in batch]).astype(
                np.float32, copy=False
            )
            probabilities = self.predict(stacked)
        except Exception as exc:
            request_ids = ",".join(item.request_id for item in batch)
            logger.exception(
                "forward pass failed for a batch of %d (request_id=%s)",
                len(batch),
                request_ids,
            )
            for item in batch:
                item.loop.call_soon_threadsafe(_fail, item.future, exc)
            return

        finished = time.perf_counter()
        inference_ms = (finished - started) * 1000
        if self.observe is not None:
            self.observe(len(batch), finished - started)
        for row, item in zip(probabilities, batch, strict=True):
            result = BatchResult(
                probabilities=row,
                batch_size=len(batch),
                queue_ms=(started - item.enqueued) * 1000,
                inference_ms=inference_ms,
            )
            item.loop.call_soon_threadsafe(_resolve, item.future, result)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Item):
                error = BatcherClosed("the server stopped before running this image")
                item.loop.call_soon_threadsafe(_fail, item.future, error)
