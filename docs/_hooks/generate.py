"""Generated documentation content: the API reference and the comparison tables.

`render(name)` returns Markdown for one marker. The tests call the same
functions, so a route without an example or a missing measurement fails there
as well as in `mkdocs build --strict`.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("streamlit", "dash", "gradio")
COMPARISON_RECORD = ROOT / "docs" / "benchmarks" / "comparison.json"
SCALING_RECORD = ROOT / "docs" / "benchmarks" / "scaling" / "summary.json"


def openapi_schema() -> dict[str, Any]:
    """Return the backend's OpenAPI schema, built without loading the model."""
    from frontbench_backend.app import create_app
    from frontbench_backend.settings import Settings

    schema: dict[str, Any] = create_app(Settings()).openapi()
    return schema


def curl_example(path: str, method: str, operation: dict[str, Any]) -> str:
    """Return a curl command line that calls one operation of the API."""
    url = DEFAULT_BASE_URL + path
    body = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in body:
        schema_ref = body["multipart/form-data"]["schema"]
        fields = _resolve_fields(schema_ref)
        form = " ".join(f"-F {field}=@digit.png" for field in fields)
        return f"curl -s {form} {url}"
    if method == "get":
        return f"curl -s {url}"
    return f"curl -s -X {method.upper()} {url}"


_SCHEMA: dict[str, Any] = {}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.rsplit("/", 1)[-1]
    resolved: dict[str, Any] = _SCHEMA["components"]["schemas"][name]
    return resolved


def _resolve_fields(schema: dict[str, Any]) -> list[str]:
    return list(_resolve(schema).get("properties", {}))


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if ref:
        return str(ref.rsplit("/", 1)[-1])
    return str(schema.get("type", "any"))


def _field_table(name: str) -> list[str]:
    schema = _SCHEMA["components"]["schemas"][name]
    required = set(schema.get("required", []))
    lines = [
        f"`{name}` fields:",
        "",
        "| field | type | required | description |",
        "|---|---|---|---|",
    ]
    for field, spec in schema.get("properties", {}).items():
        kind = _schema_name(spec) if "$ref" in spec else spec.get("type", "object")
        if "anyOf" in spec:
            kind = " or ".join(_schema_name(part) for part in spec["anyOf"])
        description = " ".join(spec.get("description", "").split())
        flag = "yes" if field in required else "no"
        lines.append(f"| `{field}` | {kind} | {flag} | {description} |")
    lines.append("")
    return lines


def render_api() -> str:
    """Render every route of the backend's OpenAPI schema as Markdown."""
    _SCHEMA.clear()
    _SCHEMA.update(openapi_schema())
    lines: list[str] = []
    shown_models: set[str] = set()
    for path, operations in _SCHEMA["paths"].items():
        for method, operation in operations.items():
            lines.append(f"## `{method.upper()} {path}`")
            lines.append("")
            # FastAPI repeats a one-line docstring as both summary and description.
            texts = [operation.get("summary", ""), operation.get("description", "")]
            for text in dict.fromkeys(text for text in texts if text):
                lines.append(" ".join(text.split()))
                lines.append("")
            lines.append("```bash")
            lines.append(curl_example(path, method, operation))
            lines.append("```")
            lines.append("")
            lines.append("| status | meaning | body |")
            lines.append("|---|---|---|")
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                body = "text"
                for media in content.values():
                    name = _schema_name(media.get("schema", {}))
                    body = f"`{name}`"
                    if "$ref" in media.get("schema", {}):
                        shown_models.add(name)
                meaning = " ".join(response.get("description", "").split())
                lines.append(f"| {status} | {meaning} | {body} |")
            lines.append("")
    lines.append("## Models")
    lines.append("")
    for name in sorted(shown_models):
        lines.extend(_field_table(name))
    return "\n".join(lines)


def app_file(framework: str, name: str = "app.py") -> Path:
    """Return the path of one file of a frontend's package."""
    return ROOT / "frontends" / framework / f"frontbench_{framework}" / name


def count_code_lines(path: Path) -> int:
    """Count the lines of a Python file that are neither blank nor comments."""
    count = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            count += 1
    return count


def _load_record(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(
            f"{path.relative_to(ROOT)} is missing; run the measurement that "
            "writes it (see docs/comparison.md) and commit the result"
        )
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def _machine_line(machine: dict[str, Any], date: str, command: str) -> str:
    memory_gib = machine.get("memory_bytes", 0) / 2**30
    return (
        f"Measured on {date} with `{command}` on {machine.get('cpu_model', '?')}, "
        f"{machine.get('cpus_available', '?')} CPUs, {memory_gib:.0f} GiB of memory."
    )


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


# How each app implements each feature: a description, the file and a regular
# expression that finds the implementing line. A feature whose pattern no
# longer matches fails the build, so the table cannot drift from the code.
# None means the app does not have the feature, and the text gives the reason.
Cell = tuple[str, str, str] | tuple[str, None, None]
FEATURES: dict[str, dict[str, Cell]] = {
    "upload an image": {
        "streamlit": ("`st.file_uploader`", "app.py", r"st\.file_uploader\("),
        "dash": ("`dcc.Upload` (a base64 data URL)", "app.py", r"dcc\.Upload\("),
        "gradio": ("`gr.Image` with `sources=['upload']`", "app.py", r"gr\.Image\("),
    },
    "preview of the upload": {
        "streamlit": ("`st.image` of a resized copy", "app.py", r"st\.image\(picture"),
        "dash": (
            "`html.Img`, set by a clientside callback",
            "app.py",
            r"clientside_callback\(",
        ),
        "gradio": ("the `gr.Image` input shows it", "app.py", r"gr\.Image\("),
    },
    "prediction through the shared client": {
        "streamlit": (
            "`Client.predict` in a widget callback",
            "app.py",
            r"\.predict\(",
        ),
        "dash": ("`Client.predict` in a server callback", "app.py", r"\.predict\("),
        "gradio": ("`Client.predict` in a queued event", "app.py", r"\.predict\("),
    },
    "label and confidence": {
        "streamlit": ("`st.subheader`, `st.markdown`", "app.py", r"Predicted digit: "),
        "dash": ("`html.P` children", "app.py", r"Predicted digit: "),
        "gradio": ("`gr.Markdown` output", "app.py", r"Predicted digit: "),
    },
    "probability bar chart": {
        "streamlit": ("`st.bar_chart` (Vega-Lite)", "app.py", r"st\.bar_chart\("),
        "dash": ("`dcc.Graph` with a plotly `go.Bar`", "app.py", r"go\.Bar\("),
        "gradio": ("`gr.BarPlot`", "app.py", r"gr\.BarPlot\("),
    },
    "one-click example digits": {
        "streamlit": ("one `st.button` per digit", "app.py", r'key=f"example-'),
        "dash": (
            "`html.Button`s with pattern-matching ids",
            "app.py",
            r'"type": "example"',
        ),
        "gradio": ("`gr.Examples`", "app.py", r"gr\.Examples\("),
    },
    "drawing with the mouse": {
        "streamlit": (
            "`streamlit-drawable-canvas` component",
            "app.py",
            r"st_canvas\(",
        ),
        "dash": ("not offered: no maintained drawing component", None, None),
        "gradio": ("`gr.Sketchpad`, built in", "app.py", r"gr\.Sketchpad\("),
    },
    "backend state without a reload": {
        "streamlit": ("`st.fragment(run_every=...)`", "app.py", r"st\.fragment\("),
        "dash": ("`dcc.Interval` callback", "app.py", r"dcc\.Interval\("),
        "gradio": ("`gr.Timer` tick event", "app.py", r"gr\.Timer\("),
    },
    "model information": {
        "streamlit": ("`st.caption` lines", "app.py", r"Held-out accuracy"),
        "dash": ("`html.P` lines", "app.py", r"Held-out accuracy"),
        "gradio": ("`gr.Markdown` lines", "app.py", r"Held-out accuracy"),
    },
    "latency of the last prediction": {
        "streamlit": ("`time.perf_counter` around the call", "app.py", r"latency: "),
        "dash": ("`time.perf_counter` around the call", "app.py", r"latency: "),
        "gradio": ("`time.perf_counter` around the call", "app.py", r"latency: "),
    },
    "errors in the page": {
        "streamlit": ("`st.error(user_message(...))`", "app.py", r"st\.error\("),
        "dash": ("an `html.P` in the `error` element", "app.py", r"def render_error"),
        "gradio": ("a `gr.Markdown` output", "app.py", r"def render_error"),
    },
    "concurrency setting": {
        "streamlit": (
            "none needed: one script thread per session",
            "cli.py",
            r"runner\.fastReruns",
        ),
        "dash": (
            "gunicorn `workers` x `threads`",
            "app.py",
            r"threads: ",
        ),
        "gradio": (
            "queue `default_concurrency_limit`",
            "app.py",
            r"default_concurrency_limit=",
        ),
    },
    "production server": {
        "streamlit": ("Streamlit's server, headless", "cli.py", r"server\.headless"),
        "dash": ("gunicorn with gthread workers", "cli.py", r"BaseApplication"),
        "gradio": ("Gradio's own server (uvicorn)", "cli.py", r"\.launch\("),
    },
}


def locate(framework: str, name: str, pattern: str) -> int:
    """Return the first line number of a frontend file that matches `pattern`.

    Raises:
        LookupError: No line matches, so the comparison no longer fits the code.
    """
    path = app_file(framework, name)
    expression = re.compile(pattern)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if expression.search(line):
            return number
    raise LookupError(
        f"no line of {path.relative_to(ROOT)} matches {pattern!r}; update "
        "FEATURES in docs/_hooks/generate.py to what the app does now"
    )


def render_comparison_features() -> str:
    """Render the feature parity table, each cell pointing at its code line."""
    lines = [
        "| feature | " + " | ".join(name.capitalize() for name in FRAMEWORKS) + " |",
        "|---|" + "---|" * len(FRAMEWORKS),
    ]
    for feature, cells in FEATURES.items():
        rendered = []
        for framework in FRAMEWORKS:
            text, name, pattern = cells[framework]
            if name is None or pattern is None:
                rendered.append(text)
                continue
            number = locate(framework, name, pattern)
            rendered.append(f"{text} (`{name}` line {number})")
        lines.append(f"| {feature} | " + " | ".join(rendered) + " |")
    return "\n".join(lines)


def render_comparison_measured() -> str:
    """Render the measured comparison: code size, install size, start, memory."""
    record = _load_record(COMPARISON_RECORD)
    lines = [
        "| | " + " | ".join(name.capitalize() for name in FRAMEWORKS) + " |",
        "|---|" + "---|" * len(FRAMEWORKS),
    ]

    def row(title: str, cells: list[str]) -> None:
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    row(
        "lines of code of `app.py` (no blanks, no comments)",
        [str(count_code_lines(app_file(name))) for name in FRAMEWORKS],
    )
    row(
        "lines of code of `cli.py` (the server start)",
        [str(count_code_lines(app_file(name, "cli.py"))) for name in FRAMEWORKS],
    )
    measured = record["frameworks"]
    row(
        "installed size of the extra, with every dependency",
        [
            f"{measured[name]['installed_mb']:.0f} MB "
            f"({measured[name]['distributions']} distributions)"
            for name in FRAMEWORKS
        ],
    )
    row(
        "cold start to the first rendered page (median)",
        [f"{measured[name]['cold_start_s']:.1f} s" for name in FRAMEWORKS],
    )
    row(
        "server memory when idle",
        [f"{measured[name]['idle_rss_mb']:.0f} MB" for name in FRAMEWORKS],
    )
    row(
        "server memory added per browser session",
        [f"{measured[name]['rss_per_session_mb']:.1f} MB" for name in FRAMEWORKS],
    )
    lines.append("")
    lines.append(
        _machine_line(record["machine"], record["date"], record["command"])
        + f" Memory per session: {measured[FRAMEWORKS[0]]['sessions']} sessions "
        "each opened the page in Chromium and made one prediction."
    )
    return "\n".join(lines)


def render_comparison_scaling() -> str:
    """Render added latency and throughput per setup from the scaling record."""
    record = _load_record(SCALING_RECORD)
    runs: list[dict[str, Any]] = record["runs"]
    environment = record["environment"]
    replicas = sorted({run["replicas"] for run in runs})
    setups = [
        name
        for name in ("direct", *FRAMEWORKS)
        if any(run["setup"] == name for run in runs)
    ]

    def runs_of(setup: str, count: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["setup"] == setup and r["replicas"] == count]

    lines = [
        "| setup | added p50 latency over direct (1 replica) | "
        + " | ".join(f"interactions/s at {count} replicas" for count in replicas)
        + " |",
        "|---|---|" + "---|" * len(replicas),
    ]
    direct_p50 = _median_of(runs_of("direct", replicas[0]), "p50_ms")
    for setup in setups:
        p50 = _median_of(runs_of(setup, replicas[0]), "p50_ms")
        if setup == "direct" or p50 is None or direct_p50 is None:
            added = "" if setup == "direct" else "n/a"
        else:
            added = f"{p50 - direct_p50:+.0f} ms"
        cells = []
        for count in replicas:
            throughput = _median_of(runs_of(setup, count), "throughput")
            cells.append("n/a" if throughput is None else f"{throughput:.1f}")
        lines.append(f"| {setup} | {added} | " + " | ".join(cells) + " |")
    users = sorted({run["users"] for run in runs})
    lines.append("")
    lines.append(
        _machine_line(
            environment.get("machine", {}),
            str(environment["started_at"]),
            str(environment.get("command", "frontbench bench")),
        )
        + f" Users: {', '.join(map(str, users))}. The full report is in "
        "[the scaling record](benchmarks/scaling/report.md)."
    )
    return "\n".join(lines)


_RENDERERS: dict[str, Callable[[], str]] = {
    "api": render_api,
    "comparison-features": render_comparison_features,
    "comparison-measured": render_comparison_measured,
    "comparison-scaling": render_comparison_scaling,
}


def render(name: str) -> str:
    """Return the Markdown for the generated-content marker `name`."""
    try:
        renderer = _RENDERERS[name]
    except KeyError:
        known = ", ".join(sorted(_RENDERERS))
        raise ValueError(
            f"unknown generated-content marker {name!r}; known markers: {known}"
        ) from None
    return renderer()


if __name__ == "__main__":
    import sys

    print(render(sys.argv[1]) if len(sys.argv) > 1 else json.dumps(openapi_schema()))
