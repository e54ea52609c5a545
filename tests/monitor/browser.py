"""Headless Chromium for the dashboard tests and benchmark: Debian's `chromium` driven by
Playwright (its own browser download is not used). `make test` installs chromium as root."""
from __future__ import annotations

import contextlib
import shutil
from typing import Any, Iterator

import pytest

from fognode.tools.bench.dashboard import CHROMIUM, FLAGS


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched browser; skips the test when Chromium or Playwright are not installed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does, as root)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh temp profile each time
        try:
            yield browser
        finally:
            browser.close()


class ConsoleLog:
    """Collects a page's console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
