"""Tests of the Dash app: its callbacks as functions, and the gunicorn server.

The callbacks run against a real backend. The server tests start the real
`frontbench frontend dash` and send the POST /_dash-update-component
requests that the browser sends.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from frontbench_dash import app as dash_app
from frontbench_dash import cli as dash_cli
from frontbench_shared.client import Client, Retries
from frontbench_shared.examples import Example
from frontbench_shared.processes import ManagedProcess, free_port, python_argv

UseBackend = Callable[[str], Client]


@pytest.fixture
def use_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[UseBackend]:
    """Return a function that points the app's callbacks at one backend URL."""
    clients: list[Client] = []

    def use(url: str) -> Client:
        client = Client(url)
        status_client = Client(url, retries=Retries(attempts=1))
        clients.extend([client, status_client])
        monkeypatch.setattr(dash_app, "get_client", lambda: client)
        monkeypatch.setattr(dash_app, "get_status_client", lambda: status_client)
        return client

    try:
        yield use
    finally:
        for client in clients:
            client.close()


def text_of(component: Any) -> str:
    """Return the text of a Dash component tree, one line per text node."""
    if component is None:
        return ""
    if isinstance(component, str | int | float):
        return str(component)
    if isinstance(component, list | tuple):
        return "\n".join(text_of(child) for child in component)
    return text_of(getattr(component, "children", None))


def noise_png(size: int) -> bytes:
    """Return a PNG of random pixels, which PNG cannot compress much."""
    image = Image.frombytes("L", (size, size), os.urandom(size * size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- The callbacks, called as functions --------------------------------------


def test_predict_examples_show_label(
    backend_url: str, use_backend: UseBackend, examples: list[Example]
) -> None:
    use_backend(backend_url)
    for example in examples:
        contents = dash_app.data_url(example.read_bytes())

        result, error = dash_app.predict(contents, example.path.name)

        text = text_of(result)
        assert error is None, f"{example.path.name}: {text_of(error)}"
        assert f"Predicted digit: {example.label}" in text, text
        assert "Confidence: " in text, text
        assert "Backend latency: " in text, text


def test_predict_result_has_chart(
    backend_url: str, use_backend: UseBackend, examples: list[Example]
) -> None:
    use_backend(backend_url)

    result, _ = dash_app.predict(dash_app.data_url(examples[0].read_bytes()), None)

    graphs = [child for child in result if getattr(child, "id", None) == "chart"]
    assert len(graphs) == 1, "the answer has no dcc.Graph with id 'chart'"
    bar = graphs[0].figure.data[0]
    assert list(bar.x) == [str(digit) for digit in range(10)]
    assert sum(bar.y) == pytest.approx(1.0, abs=1e-3)


def test_predict_text_file_shows_invalid_image(
    backend_url: str, use_backend: UseBackend
) -> None:
    use_backend(backend_url)
    contents = dash_app.data_url(b"this is not an image\n", "text/plain")

    result, error = dash_app.predict(contents, "notes.txt")

    assert result is None
    assert "could not be used as an image" in text_of(error)


def test_predict_closed_port_shows_unreachable(use_backend: UseBackend) -> None:
    use_backend(f"http://127.0.0.1:{free_port()}")
    contents = dash_app.data_url(b"\x89PNG")

    result, error = dash_app.predict(contents, "digit.png")
    state, model_info = dash_app.refresh_backend(0, None)

    assert result is None
    assert "is not reachable" in text_of(error)
    assert state == "Backend: unreachable"
    assert model_info is None


def test_predict_backend_limit_shows_too_large(
    start_backend: Callable[..., str], use_backend: UseBackend
) -> None:
    use_backend(start_backend(max_upload_bytes=1000))
    contents = dash_app.data_url(noise_png(64))

    result, error = dash_app.predict(contents, "noise.png")

    assert result is None
    assert "too large" in text_of(error)


def test_predict_app_limit_shows_too_large(
    backend_url: str, use_backend: UseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(backend_url)
    monkeypatch.setattr(dash_app.settings, "max_upload_bytes", 100)
    image = noise_png(32)

    result, error = dash_app.predict(dash_app.data_url(image), "noise.png")

    assert result is None
    assert f"it has {len(image)} bytes" in text_of(error)
    assert "at most 100 bytes" in text_of(error)


def test_predict_after_error_works(
    backend_url: str, use_backend: UseBackend, examples: list[Example]
) -> None:
    use_backend(f"http://127.0.0.1:{free_port()}")
    contents = dash_app.data_url(examples[0].read_bytes())
    _, error = dash_app.predict(contents, None)
    assert error is not None, "a closed port gave no error"

    use_backend(backend_url)
    result, error = dash_app.predict(contents, None)

    assert error is None
    assert f"Predicted digit: {examples[0].label}" in text_of(result)


def test_refresh_backend_ready_shows_model(
    backend_url: str, use_backend: UseBackend
) -> None:
    use_backend(backend_url)

    state, model_info = dash_app.refresh_backend(3, None)

    text = text_of(model_info)
    assert state == "Backend: ready"
    assert text.startswith("Model: "), text
    assert "Held-out accuracy: " in text
    assert "Device: cpu" in text


def test_refresh_backend_keeps_shown_model(
    backend_url: str, use_backend: UseBackend
) -> None:
    use_backend(backend_url)
    shown = [{"type": "P", "namespace": "dash_html_components", "props": {}}]

    state, model_info = dash_app.refresh_backend(4, shown)

    assert state == "Backend: ready"
    assert model_info is dash_app.no_update


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ("data:image/png;base64,aGVsbG8=", b"hello"),
        ("data:;base64,aGVsbG8=", b"hello"),
        ("data:", b""),
    ],
)
def test_read_upload_valid(contents: str, expected: bytes) -> None:
    assert dash_app.read_upload(contents) == expected


@pytest.mark.parametrize(
    "contents",
    [None, 42, ["data:image/png;base64,aGVsbG8="], "hello", "data:image/png,hello"],
    ids=["none", "number", "list", "no data url", "not base64 encoded"],
)
def test_read_upload_invalid(contents: object) -> None:
    with pytest.raises(ValueError, match="not a base64 data URL"):
        dash_app.read_upload(contents)


def test_read_upload_bad_base64() -> None:
    with pytest.raises(ValueError, match="not a base64 data URL"):
        dash_app.read_upload("data:image/png;base64,@@@@")


def test_predict_undecodable_upload_shows_error(use_backend: UseBackend) -> None:
    use_backend(f"http://127.0.0.1:{free_port()}")

    result, error = dash_app.predict("data:image/png;base64,@@@@", "x.png")

    assert result is None
    assert "Choose the file again" in text_of(error)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, dash_app.Settings.model_fields["workers"].default),
        ({"FRONTBENCH_DASH_WORKERS": "3", "FRONTBENCH_DASH_THREADS": "4"}, 3),
    ],
    ids=["default", "from environment"],
)
def test_settings_workers(
    clean_env: Callable[[dict[str, str]], None], env: dict[str, str], expected: int
) -> None:
    clean_env(env)

    assert dash_app.Settings().workers == expected


def test_settings_backend_url_alias(
    clean_env: Callable[[dict[str, str]], None],
) -> None:
    clean_env({"BACKEND_URL": "http://127.0.0.1:9000/"})

    assert dash_app.Settings().backend_url == "http://127.0.0.1:9000"


# --- The gunicorn server and its callback route -------------------------------


# The server's upload limit, small so that the size tests send little data.
SERVER_MAX_UPLOAD_BYTES = 100_000


@pytest.fixture(scope="module")
def dash_url(start_frontend: Callable[..., str], backend_url: str) -> str:
    """Return the URL of a real Dash server that uses the shared backend."""
    return start_frontend(
        "dash",
        backend_url,
        FRONTBENCH_DASH_WORKERS="2",
        FRONTBENCH_DASH_THREADS="2",
        FRONTBENCH_DASH_MAX_UPLOAD_BYTES=str(SERVER_MAX_UPLOAD_BYTES),
    )


def component_id(raw: Any) -> str:
    """Return a component id as Dash writes it in changedPropIds."""
    if isinstance(raw, dict):
        return json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return str(raw)


def find_callback(url: str, output: str) -> dict[str, Any]:
    """Return the spec from /_dash-dependencies whose output names `output`."""
    specs = httpx.get(f"{url}/_dash-dependencies", timeout=10).json()
    for spec in specs:
        if output in spec["output"] and not spec.get("clientside_function"):
            return dict(spec)
    raise AssertionError(f"no server callback has the output {output!r}: {specs}")


def call_callback(
    url: str,
    spec: dict[str, Any],
    values: dict[str, Any],
    changed: list[str],
) -> httpx.Response:
    """POST one callback the way the browser does and return the response.

    `values` maps "id.property" of every input and state to its value.
    """

    def with_values(dependencies: list[dict[str, Any]]) -> list[Any]:
        filled: list[Any] = []
        for dependency in dependencies:
            key = f"{component_id(dependency['id'])}.{dependency['property']}"
            filled.append({**dependency, "value": values.get(key)})
        return filled

    outputs = []
    for part in spec["output"].strip(".").split("..."):
        component, _, prop = part.rpartition(".")
        outputs.append({"id": component, "property": prop})
    body = {
        "output": spec["output"],
        "outputs": outputs if len(outputs) > 1 else outputs[0],
        "inputs": with_values(spec["inputs"]),
        "state": with_values(spec["state"]),
        "changedPropIds": changed,
    }
    return httpx.post(f"{url}/_dash-update-component", json=body, timeout=60)


def predict_via_route(url: str, contents: str, filename: str) -> dict[str, Any]:
    spec = find_callback(url, "result.children")
    response = call_callback(
        url,
        spec,
        {"upload.contents": contents, "upload.filename": filename},
        ["upload.contents"],
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()["response"]
    return answer


def test_route_predicts_example_label(dash_url: str, examples: list[Example]) -> None:
    example = examples[-1]

    answer = predict_via_route(
        dash_url, dash_app.data_url(example.read_bytes()), example.path.name
    )

    result = json.dumps(answer["result"]["children"])
    assert f"Predicted digit: {example.label}" in result
    assert '"type": "Graph"' in result, "the answer has no chart"
    assert answer["error"]["children"] is None


def test_route_text_file_shows_invalid_image(dash_url: str) -> None:
    contents = dash_app.data_url(b"plain text", "text/plain")

    answer = predict_via_route(dash_url, contents, "notes.txt")

    assert answer["result"]["children"] is None
    assert "could not be used as an image" in json.dumps(answer["error"])


def test_route_example_click_loads_upload(
    dash_url: str, examples: list[Example]
) -> None:
    spec = find_callback(dash_url, "upload.contents")
    pattern = spec["inputs"][0]
    key = next(iter(dash_app.EXAMPLES))
    example = dash_app.EXAMPLES[key]
    button_ids = [{"index": index, "type": "example"} for index in dash_app.EXAMPLES]
    body = {
        "output": spec["output"],
        "outputs": [
            {"id": "upload", "property": "contents"},
            {"id": "upload", "property": "filename"},
        ],
        "inputs": [
            [
                {
                    "id": button_id,
                    "property": pattern["property"],
                    "value": 1 if button_id["index"] == key else None,
                }
                for button_id in button_ids
            ]
        ],
        "state": [],
        "changedPropIds": [
            f"{component_id({'index': key, 'type': 'example'})}.n_clicks"
        ],
    }

    response = httpx.post(f"{dash_url}/_dash-update-component", json=body, timeout=30)

    assert response.status_code == 200, response.text
    upload = response.json()["response"]["upload"]
    assert upload["contents"] == dash_app.data_url(example.read_bytes())
    assert upload["filename"] == example.path.name


def test_route_refresh_backend_ready(dash_url: str) -> None:
    spec = find_callback(dash_url, "backend-state.children")

    response = call_callback(
        dash_url, spec, {"poll.n_intervals": 1}, ["poll.n_intervals"]
    )

    assert response.status_code == 200, response.text
    answer = response.json()["response"]
    assert answer["backend-state"]["children"] == "Backend: ready"
    assert "Model: " in json.dumps(answer["model-info"]["children"])


def test_route_large_upload_shows_limit(dash_url: str) -> None:
    image = noise_png(400)
    assert len(image) > SERVER_MAX_UPLOAD_BYTES, "the test image is too small"

    answer = predict_via_route(dash_url, dash_app.data_url(image), "noise.png")

    assert answer["result"]["children"] is None
    assert f"at most {SERVER_MAX_UPLOAD_BYTES} bytes" in json.dumps(answer["error"])


def test_route_oversized_request_rejected(dash_url: str) -> None:
    settings = dash_app.Settings(max_upload_bytes=SERVER_MAX_UPLOAD_BYTES)
    limit = settings.max_request_bytes
    spec = find_callback(dash_url, "result.children")
    contents = "data:image/png;base64," + "A" * (limit + 1)

    response = call_callback(
        dash_url,
        spec,
        {"upload.contents": contents, "upload.filename": "huge.png"},
        ["upload.contents"],
    )

    assert response.status_code == 413


# --- The command line -------------------------------------------------------


def test_cli_invalid_setting_exits_2() -> None:
    process = ManagedProcess(
        "dash-invalid",
        python_argv("-m", "frontbench_dash", "--port", str(free_port())),
        env={"FRONTBENCH_DASH_THREADS": "0"},
    ).start()
    try:
        deadline = time.monotonic() + 60
        while process.returncode is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        returncode = process.stop()

    assert returncode == 2, process.output()
    assert "FRONTBENCH_DASH_THREADS='0'" in process.output()


def worker_pids(parent: int) -> list[int]:
    """Return the ids of the processes whose parent is `parent` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cli_sigterm_stops_all_workers(backend_url: str) -> None:
    port = free_port()
    process = ManagedProcess(
        "dash-sigterm",
        python_argv(
            "-m",
            "frontbench_dash",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-url",
            backend_url,
        ),
        env={"FRONTBENCH_DASH_WORKERS": "2", "FRONTBENCH_DASH_THREADS": "2"},
    ).start()
    try:
        process.wait_ready(f"http://127.0.0.1:{port}{dash_cli.READY_PATH}")
        workers = worker_pids(process.pid)
        assert len(workers) == 2, f"expected 2 gunicorn workers, found {workers}"

        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process.returncode is None and time.monotonic() < deadline:
            time.sleep(0.1)
        returncode = process.returncode
        still_running = [pid for pid in workers if is_running(pid)]
    finally:
        process.stop()

    assert returncode == 0, process.output()
    assert still_running == [], "workers left running after SIGTERM"
    assert "starting the Dash app " in process.output()
    assert f"on http://127.0.0.1:{port} with gunicorn" in process.output()


def test_cli_busy_port_exits_2() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = ManagedProcess(
            "dash-busy-port",
            python_argv(
                "-m", "frontbench_dash", "--host", "127.0.0.1", "--port", str(port)
            ),
        ).start()
        try:
            deadline = time.monotonic() + 60
            while process.returncode is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            returncode = process.stop()

    output = process.output()
    assert returncode == 2, output
    assert f"cannot listen on 127.0.0.1:{port}" in output, output
    assert "--port or FRONTBENCH_DASH_PORT" in output, output
    assert "Retrying" not in output, output


def test_workers_serve_every_bundle() -> None:
    # Dash registers the bundle paths in the first request that each worker
    # handles, and the worker's other threads see none until it finishes. So
    # the first requests go to fresh workers at once, with no index request
    # before them, and readiness is checked with a TCP connection only.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "dash-bundles",
        python_argv(
            "-m",
            "frontbench_dash",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-url",
            "http://127.0.0.1:9",
        ),
        env={"FRONTBENCH_DASH_WORKERS": "2", "FRONTBENCH_DASH_THREADS": "8"},
    ).start()
    # The server runs this app, so an index rendered here lists the same
    # bundle paths, and rendering it here sends no request to the server.
    index = dash_app.server.test_client().get("/").get_data(as_text=True)
    paths = re.findall(r'<script src="([^"]+)"', index)
    paths += re.findall(r'<link rel="stylesheet" href="([^"]+)"', index)
    assert any("_dash-component-suites" in path for path in paths), index
    requests = paths * 8
    start = threading.Barrier(len(paths))

    def fetch(path: str) -> int:
        # A new connection per request, so gunicorn spreads them over workers.
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(timeout=30)
        return httpx.get(url + path, timeout=60).status_code

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, process.output()
                time.sleep(0.2)
        with ThreadPoolExecutor(max_workers=len(paths)) as pool:
            statuses = list(pool.map(fetch, requests))
    finally:
        process.stop()

    failed = [
        (path, code)
        for path, code in zip(requests, statuses, strict=True)
        if code != 200
    ]
    assert failed == [], f"{len(failed)} of {len(requests)} requests failed"
