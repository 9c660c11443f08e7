"""`python -m examples.page_screenshots --stream NAME [--url URL] [--out docs/img]`: screenshots of
the service's web page at 1280 px and at phone width (375 px), as in the README.

Needs Debian's `chromium` and the `playwright` package (`./scripts/install --test` installs both;
Playwright's own browser download is never used). Run it with the service up and a stream that
has learned a few tasks, e.g. after `python -m examples.service_demo --stream wordnet-demo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from .browser import chromium, launch


def try_prompt(page: Any, prompt: str) -> None:
    """Ask the playground with task "auto", so that the shot shows an answer and its path."""
    if not prompt or page.locator("#play").count() == 0:
        return
    page.fill("#play textarea[name=prompt]", prompt)
    page.click("#play button[type=submit]")
    page.wait_for_selector("#play-result:not([hidden])", timeout=120_000)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--stream", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--prompt", default="", help="a prompt for the playground (task auto) before the shots")
    ap.add_argument("--chromium", default=None, help="the browser program (default: Debian's chromium on PATH)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p, args.chromium or chromium())
        wide = browser.new_page(viewport={"width": 1280, "height": 900})
        wide.goto(f"{args.url}/")
        wide.wait_for_load_state("networkidle")
        wide.screenshot(path=str(args.out / "streams-1280.png"))
        wide.goto(f"{args.url}/streams/{args.stream}")
        wide.wait_for_load_state("networkidle")
        try_prompt(wide, args.prompt)
        wide.evaluate("window.scrollTo(0, 0)")
        wide.screenshot(path=str(args.out / "stream-1280.png"), full_page=True)
        phone = browser.new_page(viewport={"width": 375, "height": 812}, device_scale_factor=2)
        phone.goto(f"{args.url}/streams/{args.stream}")
        phone.wait_for_load_state("networkidle")
        phone.screenshot(path=str(args.out / "stream-375.png"))
        browser.close()
    for name in ("streams-1280.png", "stream-1280.png", "stream-375.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
