"""Generated documentation content: the API reference and the comparison tables.

`render(name)` returns Markdown for one marker. The tests call the same
functions, so a route without an example or a missing measurement fails there
as well as in `mkdocs build --strict`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


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


_RENDERERS: dict[str, Callable[[], str]] = {"api": render_api}


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
