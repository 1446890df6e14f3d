"""Label extraction, option parsing and bottleneck reading, without servers.

The user modules import Locust, which patches the standard library with
gevent when imported, so these tests use only the modules that do not.
"""

from __future__ import annotations

import pytest

from frontbench_loadtests.bench import (
    RunResult,
    failure_kind,
    parse_int_list,
    parse_setups,
)
from frontbench_loadtests.common import WrongAnswer, check_label, find_label
from frontbench_loadtests.report import diagnose


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("### Predicted digit: 7\n\nConfidence: 98.5 %", "7"),
        ("Handwritten digit recognition\nBackend: ready\nPredicted digit: 3", "3"),
        ("Predicted digit: 0", "0"),
        ("Confidence: 99.1 %\nBackend latency: 12 ms", None),
        ("", None),
    ],
)
def test_find_label_reads_frontend_text(text, label):
    assert find_label(text) == label


def test_check_label_names_expected_and_actual():
    with pytest.raises(WrongAnswer, match="expected label '3', got '8'"):
        check_label("3", "8", where="the page")


def test_check_label_reports_missing_label():
    with pytest.raises(WrongAnswer, match="showed no label"):
        check_label("3", None, where="the page")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("WrongAnswer(\"expected label '3', got '8'\")", "WrongAnswer"),
        ("ConnectionError(MaxRetryError('...'))", "ConnectionError"),
        ("requests.exceptions.ReadTimeout('x')", "ReadTimeout"),
    ],
)
def test_failure_kind_is_exception_class(error, kind):
    assert failure_kind(error) == kind


@pytest.mark.parametrize("text", ["0", "1,-2", "a", "1,,2", ""])
def test_parse_int_list_rejects_invalid(text):
    with pytest.raises(ValueError, match="invalid replica count"):
        parse_int_list(text)


def test_parse_int_list_accepts_counts():
    assert parse_int_list("1, 2,4") == (1, 2, 4)


def test_parse_setups_rejects_unknown():
    with pytest.raises(ValueError, match="unknown setup flask"):
        parse_setups("direct,flask")


def _run(**figures) -> RunResult:
    result = RunResult(setup="dash", replicas=1, users=8, duration_s=30.0)
    result.interactions = 300
    result.throughput = 10.0
    for key, value in figures.items():
        setattr(result, key, value)
    return result


def _process(role: str, cpu: float) -> dict[str, object]:
    return {"role": role, "mean_cpu_percent": cpu, "peak_rss_bytes": 1}


def test_diagnose_names_saturated_frontend():
    result = _run(
        processes=[_process("backend", 20.0), _process("frontend", 97.0)],
        machine_cpu_mean_percent=60.0,
    )

    bottleneck, warnings = diagnose(result, cores=2)

    assert "the frontend" in bottleneck
    assert warnings == []


def test_diagnose_warns_about_saturated_locust_and_failures():
    result = _run(
        processes=[_process("backend", 20.0), _process("locust", 99.0)],
        machine_cpu_mean_percent=70.0,
        failures=3,
        failures_by_kind={"WrongAnswer": 3},
    )

    bottleneck, warnings = diagnose(result, cores=4)

    assert "load generator" in bottleneck
    assert any("3 of 300 interactions failed" in w for w in warnings), warnings
    assert any("load generator was saturated" in w for w in warnings), warnings


def test_diagnose_reads_idle_processes_as_waiting():
    result = _run(
        processes=[_process("backend", 10.0), _process("frontend", 15.0)],
        machine_cpu_mean_percent=20.0,
    )

    bottleneck, _ = diagnose(result, cores=2)

    assert bottleneck.startswith("waiting, not CPU")
