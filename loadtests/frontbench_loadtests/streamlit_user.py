"""A Locust user that drives the Streamlit frontend the way its browser page does.

Each user opens one Streamlit session: it gets the XSRF cookie, opens the
websocket at `/_stcore/stream` and runs the page. Each interaction then asks
for an upload URL over the websocket, uploads the file to it with the XSRF
header and cookie, reruns the script with the file uploader's new widget
state, and reads messages until the script finishes. The messages are the
protobufs that ship with the streamlit package (`streamlit.proto`).

The upload must reach the server process that holds the session's websocket,
so a Streamlit frontend behind a load balancer needs sticky sessions. Run it
on its own, with Locust's web UI, as:

    locust -f loadtests/frontbench_loadtests/streamlit_user.py --host http://127.0.0.1:8501
"""

from __future__ import annotations

import uuid
from typing import Any

import requests
import websocket
from locust import User, constant, task
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

from frontbench_loadtests.common import (
    DigitImage,
    ErrorAnswer,
    ProtocolError,
    check_label,
    find_label,
    images_from_env,
    interaction,
    pick_image,
    register_run_hooks,
    require_host,
)

REQUEST_TYPE = "streamlit"
INTERACTION_NAME = "upload, rerun"
UPLOADER_KEY = "upload"
XSRF_COOKIE = "_streamlit_xsrf"
TIMEOUT_S = 120.0
# The states in which a script run is over; FINISHED_EARLY_FOR_RERUN is not,
# because the rerun that replaced it is still to come.
_FINISHED = {
    ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY,
    ForwardMsg.ScriptFinishedStatus.FINISHED_WITH_COMPILE_ERROR,
}

register_run_hooks()


class RunOutput:
    """The text elements and the file uploader that one script run sent."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.errors: list[str] = []
        self.uploader_id: str | None = None
        self.bytes = 0

    def add(self, message: ForwardMsg) -> None:
        """Record the element that a delta message carries, if it is one we read."""
        if message.WhichOneof("type") != "delta":
            return
        if message.delta.WhichOneof("type") != "new_element":
            return
        element = message.delta.new_element
        kind = element.WhichOneof("type")
        if kind == "file_uploader":
            widget_id = element.file_uploader.id
            if self.uploader_id is None or widget_id.endswith(f"-{UPLOADER_KEY}"):
                self.uploader_id = widget_id
        elif kind == "heading":
            self.texts.append(element.heading.body)
        elif kind == "markdown":
            self.texts.append(element.markdown.body)
        elif kind == "alert":
            self.errors.append(element.alert.body)
        elif kind == "exception":
            self.errors.append(f"{element.exception.type}: {element.exception.message}")


class StreamlitUser(User):
    """Upload a digit in a Streamlit session, rerun the page, check the label."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Open a session and run the page once, as a browser tab does."""
        self.base_url = require_host(self.host)
        self.images: list[DigitImage] = images_from_env()
        self.http = requests.Session()
        self.http.get(self.base_url + "/_stcore/health", timeout=TIMEOUT_S)
        self.xsrf = self.http.cookies.get(XSRF_COOKIE) or ""
        # websocket-client sets TCP_NODELAY on its socket, as browsers do.
        self.socket = websocket.create_connection(
            self.base_url.replace("http", "ws", 1) + "/_stcore/stream",
            subprotocols=["streamlit", self.xsrf],
            cookie=f"{XSRF_COOKIE}={self.xsrf}" if self.xsrf else None,
            origin=self.base_url,
            timeout=TIMEOUT_S,
        )
        self.session_id = ""
        first = self._run_script([])
        if first.uploader_id is None:
            raise ProtocolError("the Streamlit page has no file uploader")
        self.uploader_id = first.uploader_id

    def on_stop(self) -> None:
        """Close the websocket, which ends the Streamlit session."""
        self.socket.close()
        self.http.close()

    def _send(self, message: BackMsg) -> None:
        self.socket.send_binary(message.SerializeToString())

    def _receive(self) -> tuple[ForwardMsg, int]:
        raw = self.socket.recv()
        message = ForwardMsg()
        message.ParseFromString(raw)
        if message.WhichOneof("type") == "new_session":
            self.session_id = message.new_session.initialize.session_id
        return message, len(raw)

    def _run_script(self, widgets: list[WidgetState]) -> RunOutput:
        request = BackMsg()
        request.rerun_script.query_string = ""
        request.rerun_script.widget_states.widgets.extend(widgets)
        self._send(request)
        output = RunOutput()
        while True:
            message, size = self._receive()
            output.bytes += size
            output.add(message)
            if (
                message.WhichOneof("type") == "script_finished"
                and message.script_finished in _FINISHED
            ):
                return output

    def _upload(self, image: DigitImage) -> Any:
        request = BackMsg()
        request.file_urls_request.request_id = uuid.uuid4().hex
        request.file_urls_request.file_names.append(image.filename)
        request.file_urls_request.session_id = self.session_id
        self._send(request)
        while True:
            message, _ = self._receive()
            if message.WhichOneof("type") != "file_urls_response":
                continue
            answer = message.file_urls_response
            if answer.response_id != request.file_urls_request.request_id:
                continue
            if answer.error_msg:
                raise ErrorAnswer(
                    f"Streamlit rejected the upload request: {answer.error_msg}"
                )
            break

        urls = answer.file_urls[0]
        response = self.http.put(
            self.base_url + urls.upload_url,
            files={"file": (image.filename, image.data, image.content_type)},
            headers={"X-Xsrftoken": self.xsrf},
            timeout=TIMEOUT_S,
        )
        if response.status_code >= 400:
            raise ErrorAnswer(
                f"Streamlit's upload route responded with HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        return urls

    @task
    def predict_digit(self) -> None:
        """Upload one image, rerun with the uploader's state, check the label."""
        image = pick_image(self.images)
        with interaction(self.environment, REQUEST_TYPE, INTERACTION_NAME) as result:
            urls = self._upload(image)
            state = WidgetState(id=self.uploader_id)
            info = state.file_uploader_state_value.uploaded_file_info.add()
            info.name = image.filename
            info.size = len(image.data)
            info.file_id = urls.file_id
            info.file_urls.CopyFrom(urls)
            output = self._run_script([state])
            result["bytes"] = output.bytes
            if output.errors:
                raise ErrorAnswer(f"the app showed an error: {output.errors[0]}")
            check_label(
                image.label,
                find_label("\n".join(output.texts)),
                where="the Streamlit page's text",
            )
