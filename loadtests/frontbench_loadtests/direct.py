"""A Locust user that calls the backend's prediction route directly.

It is the baseline: the same uploads as the frontend users, with no
framework in between. Run it on its own, with Locust's web UI, as:

    locust -f loadtests/frontbench_loadtests/direct.py --host http://127.0.0.1:8000
"""

from __future__ import annotations

from typing import Any

from locust import HttpUser, constant, task

from frontbench_loadtests.common import (
    DigitImage,
    ErrorAnswer,
    ProtocolError,
    WrongAnswer,
    check_label,
    images_from_env,
    pick_image,
    register_run_hooks,
)
from frontbench_shared.api import PREDICT_PATH, UPLOAD_FIELD

REQUEST_TYPE = "direct"
INTERACTION_NAME = "predict"

register_run_hooks()


class DirectUser(HttpUser):
    """Upload a digit to `POST /v1/predict` and check the predicted label."""

    # No think time: each user sends its next request as soon as the last
    # one is answered, so the number of users is the concurrency.
    wait_time = constant(0)

    def on_start(self) -> None:
        """Load the images once per user."""
        self.images: list[DigitImage] = images_from_env()

    @task
    def predict_digit(self) -> None:
        """Send one image and check the label in the JSON answer."""
        image = pick_image(self.images)
        files = {UPLOAD_FIELD: (image.filename, image.data, image.content_type)}
        with self.client.post(
            PREDICT_PATH,
            files=files,
            name=INTERACTION_NAME,
            catch_response=True,
        ) as response:
            if response.status_code == 0:
                response.failure(
                    ErrorAnswer(f"no answer from the backend: {response.error!r}")
                )
                return
            if response.status_code != 200:
                response.failure(ErrorAnswer(_describe_error(response)))
                return
            try:
                label = response.json()["label"]
                check_label(image.label, label, where="the backend's JSON answer")
            except (ValueError, KeyError) as exc:
                response.failure(
                    ProtocolError(f"invalid JSON answer from the backend: {exc!r}")
                )
            except WrongAnswer as exc:
                response.failure(exc)


def _describe_error(response: Any) -> str:
    """Return the status and the backend's error detail, for the failure list."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    detail = body.get("detail", "") if isinstance(body, dict) else body
    return f"HTTP {response.status_code}: {detail}"
