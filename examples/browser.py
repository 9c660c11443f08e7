"""Debian's Chromium driven by Playwright, headless and offline (Playwright's own browser download
is never used): the page test and `examples.page_screenshots` launch it the same way."""

from __future__ import annotations

import shutil
from typing import Any

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("Debian's chromium is not installed: run ./scripts/install --test")
    return path


def launch(playwright: Any, executable: str | None = None) -> Any:
    """A headless Chromium browser from a `sync_playwright()` context."""
    return playwright.chromium.launch(executable_path=executable or chromium(), args=ARGS)
