"""Every backend route on a real uvicorn server, and the OpenAPI contract."""

from __future__ import annotations

import fcntl
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from frontbench_shared.api import (
    HEALTH_PATH,
    METRICS_PATH,
    MODEL_PATH,
    PREDICT_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    ErrorBody,
    ErrorKind,
    Health,
    ModelInfo,
    Prediction,
)
from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

HOST = "127.0.0.1"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def _upload(example: Example) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (example.path.name, example.read_bytes(), "image/png")}


@pytest.mark.timeout(180)
def test_predict_labels_every_example(
    backend_url: str, examples: list[Example]
) -> None:
    for example in examples:
        response = httpx.post(backend_url + PREDICT_PATH, files=_upload(example))
        assert response.status_code == 200, response.text
        prediction = Prediction.model_validate(response.json())
        assert prediction.label == example.label, example.path.name
        assert prediction.confidence == prediction.probabilities[prediction.label]
        assert sum(prediction.probabilities.values()) == pytest.approx(1, abs=1e-4)
        assert prediction.request_id == response.headers[REQUEST_ID_HEADER]
        assert prediction.batch_size >= 1


def test_predict_reports_timings(backend_url: str, examples: list[Example]) -> None:
    response = httpx.post(backend_url + PREDICT_PATH, files=_upload(examples[0]))
    timings = Prediction.model_validate(response.json()).timings
    steps = (
        timings.decode_ms
        + timings.preprocess_ms
        + timings.queue_ms
        + timings.inference_ms
    )
    assert timings.inference_ms > 0
    assert timings.total_ms >= steps, timings


def test_model_info_describes_checkpoint(backend_url: str) -> None:
    response = httpx.get(backend_url + MODEL_PATH)
    assert response.status_code == 200, response.text
    info = ModelInfo.model_validate(response.json())
    assert info.name == "digits-cnn"
    assert info.labels == [str(digit) for digit in range(10)]
    assert info.input_size == (8, 8)
    assert info.device == "cpu"
    assert info.torch_threads == 1, "the fixture sets FRONTBENCH_TORCH_THREADS=1"
    assert info.batching.enabled is True
    assert info.batching.max_batch_size == 32
    assert info.heldout_accuracy > 0.9


@pytest.mark.parametrize(
    ("path", "status"), [(HEALTH_PATH, "ok"), (READY_PATH, "ready")]
)
def test_health_routes_report_status(backend_url: str, path: str, status: str) -> None:
    response = httpx.get(backend_url + path)
    assert response.status_code == 200, response.text
    assert Health.model_validate(response.json()).status == status


def test_request_id_from_client_is_kept(
    backend_url: str, examples: list[Example]
) -> None:
    response = httpx.post(
        backend_url + PREDICT_PATH,
        files=_upload(examples[0]),
        headers={REQUEST_ID_HEADER: "client-id-42"},
    )
    assert response.headers[REQUEST_ID_HEADER] == "client-id-42"
    assert response.json()["request_id"] == "client-id-42"


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "has space", "", "caf\u00e9"],
    ids=["long", "space", "empty", "latin1"],
)
def test_request_id_invalid_is_replaced(backend_url: str, sent: str) -> None:
    response = httpx.get(
        backend_url + "/no-such-route",
        headers={REQUEST_ID_HEADER.encode(): sent.encode("latin-1")},
    )
    returned = response.headers[REQUEST_ID_HEADER]
    assert HEX_ID.match(returned), returned
    assert response.json()["request_id"] == returned


def test_request_id_generated_on_every_route(backend_url: str) -> None:
    for path in (HEALTH_PATH, READY_PATH, MODEL_PATH, METRICS_PATH, "/docs"):
        response = httpx.get(backend_url + path)
        assert HEX_ID.match(response.headers[REQUEST_ID_HEADER]), path


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, label_text = series.partition("{")
        found = (
            ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        )
        if metric == name and found == wanted:
            return float(value)
    raise AssertionError(f"no {name}{{{wanted}}} in the metrics:\n{text}")


def test_metrics_count_requests_batches_and_errors(
    backend_url: str, examples: list[Example]
) -> None:
    httpx.post(backend_url + PREDICT_PATH, files=_upload(examples[0]))
    httpx.get(backend_url + "/no-such-route")
    response = httpx.get(backend_url + METRICS_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    predicted = _metric(
        text,
        "frontbench_requests_total",
        route=PREDICT_PATH,
        method="POST",
        status="200",
    )
    assert predicted >= 1
    unmatched = _metric(
        text, "frontbench_requests_total", route="unmatched", method="GET", status="404"
    )
    assert unmatched >= 1
    assert _metric(text, "frontbench_errors_total", kind="not_found") >= 1
    assert _metric(text, "frontbench_batch_size_count") >= 1
    assert _metric(text, "frontbench_inference_duration_seconds_count") >= 1
    latency = _metric(
        text, "frontbench_request_duration_seconds_count", route=PREDICT_PATH
    )
    assert latency >= 1
    assert _metric(text, "frontbench_model_ready") == 1


def _openapi(backend_url: str) -> dict[str, Any]:
    response = httpx.get(backend_url + "/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def _ref_name(content: dict[str, Any]) -> str:
    ref: str = content["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("post", PREDICT_PATH, Prediction),
        ("get", MODEL_PATH, ModelInfo),
        ("get", HEALTH_PATH, Health),
        ("get", READY_PATH, Health),
    ],
)
def test_openapi_success_schema_is_contract_model(
    backend_url: str, method: str, path: str, model: type[Any]
) -> None:
    schema = _openapi(backend_url)
    responses = schema["paths"][path][method]["responses"]
    assert _ref_name(responses["200"]["content"]) == model.__name__

    published = schema["components"]["schemas"][model.__name__]
    expected = model.model_json_schema(mode="serialization")
    assert set(published["properties"]) == set(expected["properties"])
    assert set(published.get("required", [])) == set(expected.get("required", []))


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", PREDICT_PATH, {"400", "413", "415", "422", "500", "503"}),
        ("get", MODEL_PATH, {"503"}),
    ],
)
def test_openapi_errors_use_error_body(
    backend_url: str, method: str, path: str, statuses: set[str]
) -> None:
    schema = _openapi(backend_url)
    responses = schema["paths"][path][method]["responses"]
    declared = {status for status in responses if status != "200"}
    assert declared == statuses
    for status in statuses:
        assert _ref_name(responses[status]["content"]) == "ErrorBody", status

    published = schema["components"]["schemas"]["ErrorBody"]
    assert set(published["properties"]) == set(ErrorBody.model_fields)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_openapi_predict_takes_multipart_file(backend_url: str) -> None:
    schema = _openapi(backend_url)
    body = schema["paths"][PREDICT_PATH]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]


def test_docs_page_is_served(backend_url: str) -> None:
    response = httpx.get(backend_url + "/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


@pytest.mark.timeout(180)
def test_readyz_is_503_until_model_loaded(tmp_path: Path, checkpoint: Path) -> None:
    path = tmp_path / "model.pt"
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    lock_file = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    # Plain uvicorn, not `frontbench backend`: the command would wait for the
    # checkpoint before it listens, and this test needs the server up first.
    process = ManagedProcess(
        f"backend-{port}",
        python_argv(
            "-m",
            "uvicorn",
            "frontbench_backend.app:create_app_from_env",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
        ),
        env={"FRONTBENCH_MODEL_PATH": str(path), "FRONTBENCH_TORCH_THREADS": "1"},
    )
    try:
        process.start()
        process.wait_ready(url + HEALTH_PATH)

        ready = httpx.get(url + READY_PATH)
        assert ready.status_code == 503
        health = Health.model_validate(ready.json())
        assert health.status == "not_ready"
        assert "loading" in health.detail

        for response in (
            httpx.get(url + MODEL_PATH),
            httpx.post(
                url + PREDICT_PATH, files={"file": ("a.png", b"x", "image/png")}
            ),
        ):
            assert response.status_code == 503, response.text
            assert ErrorBody.model_validate(response.json()).kind == ErrorKind.NOT_READY

        shutil.copyfile(checkpoint, path)
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        process.wait_ready(url + READY_PATH)
        assert httpx.get(url + MODEL_PATH).status_code == 200
    finally:
        lock_file.close()
        process.stop()


@pytest.mark.timeout(180)
def test_readyz_reports_load_failure(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    process = ManagedProcess(
        f"backend-{port}",
        python_argv(
            "-m",
            "uvicorn",
            "frontbench_backend.app:create_app_from_env",
            "--factory",
            "--host",
            HOST,
            "--port",
            str(port),
        ),
        env={"FRONTBENCH_MODEL_PATH": str(path), "FRONTBENCH_TORCH_THREADS": "1"},
    )
    with process:
        process.wait_ready(
            url + READY_PATH,
            accept=lambda response: "failed to load" in response.text,
        )
        ready = httpx.get(url + READY_PATH)
        assert ready.status_code == 503
        assert str(path) in ready.json()["detail"]
