"""A Locust user that drives the Gradio frontend the way its browser page does.

Each interaction uploads the image to Gradio's upload route, joins the queue
for the app's `predict` event, and reads the queue's event stream until the
event completes. That is the route a browser takes, so the event waits in
Gradio's queue under the frontend's concurrency limit. Run it on its own,
with Locust's web UI, as:

    locust -f loadtests/frontbench_loadtests/gradio_user.py --host http://127.0.0.1:7860
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests
from locust import User, constant, task

from frontbench_loadtests.common import (
    DigitImage,
    ErrorAnswer,
    ProtocolError,
    check_label,
    collect_text,
    find_label,
    images_from_env,
    interaction,
    pick_image,
    register_run_hooks,
    require_host,
)

REQUEST_TYPE = "gradio"
INTERACTION_NAME = "upload, queue, stream"
API_NAME = "predict"
TIMEOUT_S = 120.0

register_run_hooks()


def find_event(config: dict[str, Any], api_name: str) -> tuple[int, int | None]:
    """Return the function index and trigger id of the event named `api_name`.

    Raises:
        ProtocolError: The app's `/config` has no event with that API name.
    """
    for index, dependency in enumerate(config.get("dependencies", [])):
        if dependency.get("api_name") != api_name:
            continue
        targets = dependency.get("targets") or [[None]]
        return int(dependency.get("id", index)), targets[0][0]
    names = [d.get("api_name") for d in config.get("dependencies", [])]
    raise ProtocolError(
        f"the Gradio app has no event with api_name {api_name!r}; it has {names}"
    )


class GradioUser(User):
    """Upload a digit, run the `predict` event through the queue, check the label."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Load the page's config, as the browser does, and find the event."""
        self.base_url = require_host(self.host)
        self.images: list[DigitImage] = images_from_env()
        self.http = requests.Session()
        self.session_hash = uuid.uuid4().hex[:11]
        response = self.http.get(f"{self.base_url}/config", timeout=TIMEOUT_S)
        response.raise_for_status()
        config = response.json()
        self.api = self.base_url + config.get("api_prefix", "/gradio_api")
        self.fn_index, self.trigger_id = find_event(config, API_NAME)

    def on_stop(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    @task
    def predict_digit(self) -> None:
        """Upload one image and read the queued event's result."""
        image = pick_image(self.images)
        with interaction(self.environment, REQUEST_TYPE, INTERACTION_NAME) as result:
            file_data = self._upload(image)
            event_id = self._join_queue(file_data)
            output = self._read_result(event_id, result)
            self._check_output(image, output)

    def _upload(self, image: DigitImage) -> dict[str, Any]:
        response = self.http.post(
            f"{self.api}/upload",
            files=[("files", (image.filename, image.data, image.content_type))],
            timeout=TIMEOUT_S,
        )
        _raise_for_status(response, "upload")
        paths = response.json()
        return {
            "path": paths[0],
            "orig_name": image.filename,
            "size": len(image.data),
            "mime_type": image.content_type,
            "meta": {"_type": "gradio.FileData"},
        }

    def _join_queue(self, file_data: dict[str, Any]) -> str:
        response = self.http.post(
            f"{self.api}/queue/join",
            json={
                "data": [file_data],
                "event_data": None,
                "fn_index": self.fn_index,
                "trigger_id": self.trigger_id,
                "session_hash": self.session_hash,
            },
            timeout=TIMEOUT_S,
        )
        _raise_for_status(response, "queue/join")
        return str(response.json()["event_id"])

    def _read_result(self, event_id: str, result: dict[str, int]) -> dict[str, Any]:
        with self.http.get(
            f"{self.api}/queue/data",
            params={"session_hash": self.session_hash},
            stream=True,
            timeout=TIMEOUT_S,
        ) as response:
            _raise_for_status(response, "queue/data")
            for raw in response.iter_lines():
                result["bytes"] += len(raw)
                line = raw.decode("utf-8")
                if not line or not line.startswith("data:"):
                    continue
                message = json.loads(line[len("data:") :])
                if message.get("event_id") not in (None, event_id):
                    continue
                kind = message.get("msg")
                if kind == "process_completed":
                    return dict(message)
                if kind in ("unexpected_error", "queue_full"):
                    raise ErrorAnswer(f"Gradio's queue answered {kind}: {message}")
        raise ProtocolError(
            f"Gradio's event stream ended before event {event_id} completed"
        )

    @staticmethod
    def _check_output(image: DigitImage, message: dict[str, Any]) -> None:
        output = message.get("output") or {}
        if not message.get("success"):
            raise ErrorAnswer(
                f"the predict event failed: {output.get('error') or message}"
            )
        data = output.get("data") or []
        # The outputs are the answer, the chart and the error message.
        error_text = collect_text(data[2:]).strip() if len(data) > 2 else ""
        if error_text:
            raise ErrorAnswer(f"the app showed an error: {error_text}")
        check_label(
            image.label,
            find_label(collect_text(data[:1])),
            where="Gradio's answer markdown",
        )


def _raise_for_status(response: requests.Response, route: str) -> None:
    if response.status_code >= 400:
        raise ErrorAnswer(
            f"Gradio's {route} route responded with HTTP {response.status_code}: "
            f"{response.text[:200]}"
        )
