"""Every setup's Locust user in one file, for Locust's web UI.

Pick the user class that matches the host, for example:

    locust -f loadtests/frontbench_loadtests/locustfile.py --class-picker

`frontbench bench` runs each user's own module instead.
"""

from frontbench_loadtests.dash_user import DashUser
from frontbench_loadtests.direct import DirectUser
from frontbench_loadtests.gradio_user import GradioUser
from frontbench_loadtests.streamlit_user import StreamlitUser

__all__ = ["DashUser", "DirectUser", "GradioUser", "StreamlitUser"]
