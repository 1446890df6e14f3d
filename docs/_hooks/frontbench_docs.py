"""MkDocs hook that writes the generated parts of the documentation.

A page requests generated content with a marker line such as
`<!-- generated: api -->`. The API reference comes from the backend's OpenAPI
schema and the comparison tables from the code and the committed measurements,
so neither can drift from what they describe.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_hooks"))

from generate import render  # noqa: E402

logger = logging.getLogger("mkdocs.hooks.frontbench")
_MARKER = re.compile(r"^<!-- generated: (?P<name>[a-z-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace each generated-content marker on a page with its content."""

    def replace(match: re.Match[str]) -> str:
        logger.info("generating %s for %s", match["name"], page.file.src_path)
        return render(match["name"])

    return _MARKER.sub(replace, markdown)
