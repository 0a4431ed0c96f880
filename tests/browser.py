"""Debian's headless chromium for the viewer tests (driven by Python playwright), and a run directory
served on a free port: the one way every browser test starts both.

    require_chromium()                 # skip, with the fix, where chromium or playwright is missing
    with launched() as browser, served(run_dir) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 800})   # a fresh context per page
        page.goto(base + "/tiles/index.html")
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from atlas.serve import make_server

__all__ = ["CHROMIUM", "ARGS", "require_chromium", "launched", "served"]

CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def require_chromium() -> None:
    """Skip the calling test (or fixture) where chromium or python playwright is not installed."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium, done by `make setup`)")
    pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")


@contextmanager
def launched() -> Iterator[Any]:
    """A headless chromium (``require_chromium`` first)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def served(run_dir: str | Path) -> Iterator[str]:
    """``atlas serve``'s server on ``run_dir`` at a free port, in a thread: its base URL (no trailing slash)."""
    server = make_server(run_dir, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
