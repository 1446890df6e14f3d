"""A Locust user that drives the Dash frontend the way its browser page does.

An upload in the browser becomes one POST to `/_dash-update-component` with
the upload callback's inputs and state, the file being the base64 data URL
that dcc.Upload sends. The callback's outputs, inputs and state are read
from `/_dash-dependencies` when the user starts. Run it on its own, with
Locust's web UI, as:

    locust -f loadtests/frontbench_loadtests/dash_user.py --host http://127.0.0.1:8050
"""

from __future__ import annotations

import base64
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

REQUEST_TYPE = "dash"
INTERACTION_NAME = "upload callback"
UPLOAD_ID = "upload"
RESULT_ID = "result"
ERROR_ID = "error"
TIMEOUT_S = 120.0

register_run_hooks()


def parse_outputs(output: str) -> list[dict[str, str]]:
    """Split Dash's output string, such as "..a.children...b.children..", into ids."""
    parts = output.strip(".").split("...") if output.startswith("..") else [output]
    outputs = []
    for part in parts:
        component, _, prop = part.rpartition(".")
        outputs.append({"id": component, "property": prop})
    return outputs


def find_upload_callback(dependencies: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the server-side callback whose input is the upload's contents.

    Raises:
        ProtocolError: No such callback is registered.
    """
    for dependency in dependencies:
        if dependency.get("clientside_function"):
            continue
        inputs = dependency.get("inputs", [])
        if {"id": UPLOAD_ID, "property": "contents"} in inputs:
            return dependency
    raise ProtocolError(
        f"the Dash app has no server callback with input {UPLOAD_ID}.contents"
    )


def data_url(image: DigitImage) -> str:
    """Encode an image the way dcc.Upload does: a base64 data URL."""
    encoded = base64.b64encode(image.data).decode("ascii")
    return f"data:{image.content_type};base64,{encoded}"


class DashUser(User):
    """Send a digit through the upload callback and check the label."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Load the page, its layout and its callbacks, as the browser does."""
        self.base_url = require_host(self.host)
        self.images: list[DigitImage] = images_from_env()
        self.http = requests.Session()
        for path in ("/", "/_dash-layout"):
            self.http.get(self.base_url + path, timeout=TIMEOUT_S).raise_for_status()
        response = self.http.get(
            self.base_url + "/_dash-dependencies", timeout=TIMEOUT_S
        )
        response.raise_for_status()
        self.callback = find_upload_callback(response.json())
        self.outputs = parse_outputs(self.callback["output"])

    def on_stop(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def _request_body(self, image: DigitImage) -> dict[str, Any]:
        values = {
            (UPLOAD_ID, "contents"): data_url(image),
            (UPLOAD_ID, "filename"): image.filename,
        }
        return {
            "output": self.callback["output"],
            "outputs": self.outputs if len(self.outputs) > 1 else self.outputs[0],
            "inputs": [
                {**item, "value": values.get((item["id"], item["property"]))}
                for item in self.callback["inputs"]
            ],
            "changedPropIds": [f"{UPLOAD_ID}.contents"],
            "state": [
                {**item, "value": values.get((item["id"], item["property"]))}
                for item in self.callback.get("state", [])
            ],
        }

    @task
    def predict_digit(self) -> None:
        """Post one upload callback and check the rendered answer."""
        image = pick_image(self.images)
        with interaction(self.environment, REQUEST_TYPE, INTERACTION_NAME) as result:
            response = self.http.post(
                self.base_url + "/_dash-update-component",
                json=self._request_body(image),
                timeout=TIMEOUT_S,
            )
            result["bytes"] = len(response.content)
            if response.status_code != 200:
                raise ErrorAnswer(
                    "/_dash-update-component responded with HTTP "
                    f"{response.status_code}: {response.text[:200]}"
                )
            updates = response.json().get("response", {})
            error_text = collect_text(updates.get(ERROR_ID, {})).strip()
            if error_text:
                raise ErrorAnswer(f"the app showed an error: {error_text}")
            check_label(
                image.label,
                find_label(collect_text(updates.get(RESULT_ID, {}))),
                where=f"the Dash component {RESULT_ID!r}",
            )
