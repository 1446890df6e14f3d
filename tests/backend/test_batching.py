"""Dynamic batching, in-process with the real model and on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from frontbench_backend.batching import Batcher, BatcherClosed, BatchResult
from frontbench_backend.model import LoadedModel
from frontbench_backend.preprocess import decode_image, to_model_input
from frontbench_shared.api import METRICS_PATH, MODEL_PATH, PREDICT_PATH, Prediction
from frontbench_shared.examples import Example

# Long enough that images submitted together share a batch even on a loaded
# machine. The tests check batch sizes, never durations.
PATIENT_WAIT_MS = 300.0


@pytest.fixture(scope="module")
def images(model: LoadedModel, examples: list[Example]) -> list[np.ndarray]:
    return [
        to_model_input(
            decode_image(example.read_bytes(), max_pixels=10**6),
            model.metadata.input_size,
        )
        for example in examples
    ]


StartBatcher = Callable[..., Batcher]


@pytest.fixture
def start_batcher(model: LoadedModel) -> Iterator[StartBatcher]:
    started: list[Batcher] = []

    def start(**options: object) -> Batcher:
        batcher = Batcher(model.predict_proba, **options)  # type: ignore[arg-type]
        batcher.start()
        started.append(batcher)
        return batcher

    yield start
    for batcher in started:
        batcher.stop()


async def _submit_all(batcher: Batcher, images: list[np.ndarray]) -> list[BatchResult]:
    return await asyncio.gather(*(batcher.submit(image) for image in images))


def test_batcher_groups_concurrent_images(
    start_batcher: StartBatcher, model: LoadedModel, images: list[np.ndarray]
) -> None:
    batcher = start_batcher(max_batch_size=32, max_wait_ms=PATIENT_WAIT_MS)
    results = asyncio.run(_submit_all(batcher, images * 2))

    assert max(result.batch_size for result in results) > 1
    alone = model.predict_proba(np.stack(images * 2))
    for index, result in enumerate(results):
        np.testing.assert_allclose(result.probabilities, alone[index], atol=1e-5)


def test_batcher_keeps_each_answer_with_its_image(
    start_batcher: StartBatcher, model: LoadedModel, images: list[np.ndarray]
) -> None:
    batcher = start_batcher(max_batch_size=32, max_wait_ms=PATIENT_WAIT_MS)
    order = [index % len(images) for index in range(3 * len(images))]
    results = asyncio.run(_submit_all(batcher, [images[index] for index in order]))

    labels = model.metadata.labels
    for index, result in zip(order, results, strict=True):
        expected = model.predict_proba(images[index][np.newaxis])[0]
        assert (
            labels[int(np.argmax(result.probabilities))]
            == labels[int(np.argmax(expected))]
        )


def test_batcher_respects_max_batch_size(
    start_batcher: StartBatcher, images: list[np.ndarray]
) -> None:
    batcher = start_batcher(max_batch_size=4, max_wait_ms=PATIENT_WAIT_MS)
    results = asyncio.run(_submit_all(batcher, images * 2))
    sizes = {result.batch_size for result in results}
    assert max(sizes) <= 4, sizes
    assert 4 in sizes, sizes


def test_batcher_disabled_runs_each_image_alone(
    start_batcher: StartBatcher, images: list[np.ndarray]
) -> None:
    batcher = start_batcher(
        enabled=False, max_batch_size=32, max_wait_ms=PATIENT_WAIT_MS
    )
    results = asyncio.run(_submit_all(batcher, images))
    assert {result.batch_size for result in results} == {1}
    assert batcher.max_batch_size == 1


def test_batcher_reports_timings(
    start_batcher: StartBatcher, images: list[np.ndarray]
) -> None:
    batcher = start_batcher(max_batch_size=8, max_wait_ms=1.0)
    (result,) = asyncio.run(_submit_all(batcher, images[:1]))
    assert result.queue_ms >= 0
    assert result.inference_ms > 0


def test_batcher_observer_sees_every_batch(
    model: LoadedModel, images: list[np.ndarray]
) -> None:
    seen: list[int] = []
    batcher = Batcher(
        model.predict_proba,
        max_batch_size=32,
        max_wait_ms=PATIENT_WAIT_MS,
        observe=lambda size, seconds: seen.append(size),
    )
    batcher.start()
    try:
        asyncio.run(_submit_all(batcher, images))
    finally:
        batcher.stop()
    assert sum(seen) == len(images)


def test_batcher_forward_error_reaches_its_request(
    start_batcher: StartBatcher,
) -> None:
    batcher = start_batcher(max_batch_size=4, max_wait_ms=1.0)
    wrong_shape = np.zeros((5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="invalid batch shape"):
        asyncio.run(_submit_all(batcher, [wrong_shape]))


def test_batcher_submit_after_stop_raises(
    model: LoadedModel, images: list[np.ndarray]
) -> None:
    batcher = Batcher(model.predict_proba)
    batcher.start()
    batcher.stop()
    with pytest.raises(BatcherClosed):
        asyncio.run(_submit_all(batcher, images[:1]))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_batch_size": 0}, "max_batch_size"), ({"max_wait_ms": -1.0}, "max_wait_ms")],
)
def test_batcher_rejects_invalid_options(
    model: LoadedModel, options: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(model.predict_proba, **options)  # type: ignore[arg-type]


async def _predict_concurrently(
    url: str, examples: list[Example], copies: int
) -> list[tuple[Example, Prediction]]:
    order = [example for _ in range(copies) for example in examples]
    limits = httpx.Limits(max_connections=len(order))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    PREDICT_PATH,
                    files={"file": (e.path.name, e.read_bytes(), "image/png")},
                )
                for e in order
            )
        )
    for response in responses:
        assert response.status_code == 200, response.text
    return [
        (example, Prediction.model_validate(response.json()))
        for example, response in zip(order, responses, strict=True)
    ]


def _batch_histogram(url: str) -> tuple[float, float]:
    text = httpx.get(url + METRICS_PATH).text
    values = {}
    for line in text.splitlines():
        if line.startswith('frontbench_batch_size_bucket{le="1.0"}'):
            values["single"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("frontbench_batch_size_count"):
            values["count"] = float(line.rsplit(" ", 1)[1])
    return values["single"], values["count"]


@pytest.mark.timeout(240)
def test_server_batches_concurrent_requests(
    start_backend: Callable[..., str], examples: list[Example]
) -> None:
    url = start_backend(max_batch_wait_ms=PATIENT_WAIT_MS)
    results = asyncio.run(_predict_concurrently(url, examples, copies=3))

    for example, prediction in results:
        assert prediction.label == example.label, example.path.name
    assert max(prediction.batch_size for _, prediction in results) > 1

    single, count = _batch_histogram(url)
    assert count < len(results), "every request ran in its own forward pass"
    assert single < count, "the batch size histogram saw no batch over 1"


@pytest.mark.timeout(240)
def test_server_batching_off_runs_requests_alone(
    start_backend: Callable[..., str], examples: list[Example]
) -> None:
    url = start_backend(batching="false")
    info = httpx.get(url + MODEL_PATH).json()
    assert info["batching"] == {
        "enabled": False,
        "max_batch_size": 1,
        "max_wait_ms": 0.0,
    }

    results = asyncio.run(_predict_concurrently(url, examples, copies=2))
    for example, prediction in results:
        assert prediction.label == example.label, example.path.name
    assert {prediction.batch_size for _, prediction in results} == {1}

    single, count = _batch_histogram(url)
    assert single == count == len(results)
