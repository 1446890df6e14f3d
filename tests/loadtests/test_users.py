"""Each setup's Locust user completes real interactions and reports wrong ones."""

from __future__ import annotations

import pytest

from frontbench_shared.processes import ManagedProcess, free_port, python_argv

FRONTENDS = ["streamlit", "dash", "gradio"]
# No example digit has this label, so every answer is wrong.
WRONG_LABEL = "not-a-digit"


def _host(setup: str, backend_url: str, start_frontend) -> str:
    return backend_url if setup == "direct" else start_frontend(setup, backend_url)


@pytest.mark.parametrize("setup", ["direct", *FRONTENDS])
def test_user_completes_interactions(setup, backend_url, start_frontend, run_locust):
    result = run_locust(setup, _host(setup, backend_url, start_frontend))

    assert result.interactions > 0, f"no interactions recorded:\n{result.error}"
    assert result.failures == 0, (
        f"{result.failures} failures: {result.failure_messages}\n{result.error}"
    )


@pytest.mark.parametrize("setup", ["direct", *FRONTENDS])
def test_user_reports_wrong_label(setup, backend_url, start_frontend, run_locust):
    host = _host(setup, backend_url, start_frontend)

    result = run_locust(
        setup, host, env={"FRONTBENCH_BENCH_EXPECTED_LABEL": WRONG_LABEL}
    )

    assert result.interactions > 0, f"no interactions recorded:\n{result.error}"
    assert result.failures == result.interactions, result.failure_messages
    assert set(result.failures_by_kind) == {"WrongAnswer"}, result.failures_by_kind
    assert f"expected label '{WRONG_LABEL}'" in result.failure_messages[0]


@pytest.mark.parametrize("setup", ["direct", *FRONTENDS])
def test_user_reports_stopped_backend(setup, start_frontend, run_locust, checkpoint):
    port = free_port()
    backend = ManagedProcess(
        f"backend-{port}",
        python_argv(
            "-m",
            "frontbench_shared.cli",
            "backend",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ),
        env={"FRONTBENCH_MODEL_PATH": str(checkpoint), "FRONTBENCH_TORCH_THREADS": "1"},
    )
    with backend:
        backend_url = f"http://127.0.0.1:{port}"
        backend.wait_ready(backend_url + "/readyz")
        host = _host(setup, backend_url, start_frontend)
    # The backend is stopped now; the frontend (if any) keeps running.

    result = run_locust(setup, host)

    assert result.interactions > 0, f"no interactions recorded:\n{result.error}"
    assert result.failures == result.interactions, result.failure_messages
    assert "WrongAnswer" not in result.failures_by_kind, result.failure_messages
