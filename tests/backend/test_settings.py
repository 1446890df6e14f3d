"""Backend settings: defaults, parsing, and the messages for invalid values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from frontbench_backend.settings import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_WAIT_MS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    SettingsError,
    available_cpus,
    default_torch_threads,
    load_settings,
)
from frontbench_backend.training import DEFAULT_MODEL_PATH

SetEnv = Callable[[Mapping[str, str]], None]


def test_settings_defaults(clean_env: SetEnv) -> None:
    clean_env({})
    settings = load_settings()
    assert settings.model_path == Path(DEFAULT_MODEL_PATH)
    assert settings.device == "auto"
    assert settings.torch_threads == available_cpus()
    assert settings.batching is True
    assert settings.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert settings.max_batch_wait_ms == DEFAULT_MAX_BATCH_WAIT_MS
    assert settings.max_upload_bytes == DEFAULT_MAX_UPLOAD_BYTES
    assert settings.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert settings.log_level == "info"


def test_settings_default_limits_pass_a_12_megapixel_photo() -> None:
    assert DEFAULT_MAX_IMAGE_PIXELS >= 4000 * 3000
    assert DEFAULT_MAX_IMAGE_PIXELS < 20000 * 20000


def test_settings_read_from_env(clean_env: SetEnv, tmp_path: Path) -> None:
    clean_env(
        {
            "FRONTBENCH_MODEL_PATH": str(tmp_path / "m.pt"),
            "FRONTBENCH_DEVICE": "CPU",
            "FRONTBENCH_TORCH_THREADS": "3",
            "FRONTBENCH_BATCHING": "off",
            "FRONTBENCH_MAX_BATCH_SIZE": "8",
            "FRONTBENCH_MAX_BATCH_WAIT_MS": "0.5",
            "FRONTBENCH_MAX_UPLOAD_BYTES": "1000",
            "FRONTBENCH_MAX_IMAGE_PIXELS": "2000",
            "FRONTBENCH_LOG_LEVEL": "DEBUG",
        }
    )
    settings = load_settings()
    assert settings.model_path == tmp_path / "m.pt"
    assert settings.device == "cpu"
    assert settings.torch_threads == 3
    assert settings.batching is False
    assert settings.max_batch_size == 8
    assert settings.max_batch_wait_ms == 0.5
    assert settings.max_upload_bytes == 1000
    assert settings.max_image_pixels == 2000
    assert settings.log_level == "debug"


def test_settings_overrides_beat_env(clean_env: SetEnv) -> None:
    clean_env({"FRONTBENCH_LOG_LEVEL": "warning"})
    assert load_settings(log_level="debug").log_level == "debug"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("FRONTBENCH_DEVICE", "gpu", "auto, cpu, cuda, cuda:N"),
        ("FRONTBENCH_DEVICE", "cuda:x", "auto, cpu, cuda, cuda:N"),
        ("FRONTBENCH_TORCH_THREADS", "0", "an integer from 1 to 1024"),
        ("FRONTBENCH_TORCH_THREADS", "many", "an integer from 1 to 1024"),
        ("FRONTBENCH_BATCHING", "maybe", "true or false"),
        ("FRONTBENCH_MAX_BATCH_SIZE", "0", "an integer from 1 to 4096"),
        ("FRONTBENCH_MAX_BATCH_WAIT_MS", "-1", "milliseconds from 0 to 10000"),
        ("FRONTBENCH_MAX_UPLOAD_BYTES", "10MB", "a positive integer number of bytes"),
        ("FRONTBENCH_MAX_IMAGE_PIXELS", "0", "a positive integer number of pixels"),
        ("FRONTBENCH_LOG_LEVEL", "loud", "critical, error, warning, info or debug"),
    ],
)
def test_settings_invalid_value_names_variable(
    clean_env: SetEnv, variable: str, value: str, accepted: str
) -> None:
    clean_env({variable: value})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert f"{variable}={value!r}" in message, message
    assert accepted in message, message


def test_settings_unavailable_cuda_says_why(clean_env: SetEnv) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so cuda is a valid device")
    clean_env({"FRONTBENCH_DEVICE": "cuda"})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "FRONTBENCH_DEVICE='cuda'" in message, message
    assert "CUDA is not available" in message, message


def test_settings_reports_every_invalid_variable(clean_env: SetEnv) -> None:
    clean_env({"FRONTBENCH_DEVICE": "gpu", "FRONTBENCH_MAX_BATCH_SIZE": "0"})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    lines = str(raised.value).splitlines()
    assert len(lines) == 2, lines
    assert any("FRONTBENCH_DEVICE" in line for line in lines), lines
    assert any("FRONTBENCH_MAX_BATCH_SIZE" in line for line in lines), lines


@pytest.mark.parametrize("workers", [1, 2, 3, 64])
def test_default_torch_threads_shares_cpus(workers: int) -> None:
    threads = default_torch_threads(workers)
    assert threads >= 1
    assert threads == max(1, available_cpus() // workers)


@pytest.mark.timeout(120)
def test_backend_start_with_invalid_env_exits_2() -> None:
    env = {
        name: text
        for name, text in os.environ.items()
        if not name.startswith("FRONTBENCH_")
    }
    env.update({"FRONTBENCH_DEVICE": "gpu", "FRONTBENCH_MAX_UPLOAD_BYTES": "-5"})
    completed = subprocess.run(
        [sys.executable, "-m", "frontbench_backend", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "FRONTBENCH_DEVICE='gpu': expected auto, cpu" in completed.stderr
    assert "FRONTBENCH_MAX_UPLOAD_BYTES='-5': expected" in completed.stderr
    assert "Traceback" not in completed.stderr
