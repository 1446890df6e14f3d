"""A real headless Chromium, driven by Playwright, for the end-to-end tests.

The browser is Debian's Chromium at /usr/bin/chromium (or $CHROMIUM_PATH).
Without it the tests are skipped, except in CI (CI=true), where a missing
browser is an error because .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    return configured if os.path.exists(configured) else shutil.which("chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


# Playwright's sync API keeps its event loop marked as running in the main
# thread while it is open, so asyncio.run() fails anywhere in between. One
# browser per test module confines that to the browser tests.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Launch one headless Chromium for the tests of one module."""
    path = _chromium_path()
    if path is None:
        message = "Chromium not found; install Debian's chromium or set CHROMIUM_PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """Open a fresh browser context and page for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
