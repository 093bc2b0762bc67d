"""Serve the built site on localhost and drive it with Chromium through Playwright.

Shared by the browser tests (tests/test_browser.py) and `make screenshots`.
On an offline machine Playwright cannot download its own browser, so it launches Debian's
/usr/bin/chromium (see chromium_path() for the order it looks in) with the flags that keep
Chromium from calling home on a machine with no network.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions",
]


def chromium_path() -> str | None:
    """The Chromium (or Chrome) to drive: $BOOK_CHROMIUM, else Debian's chromium, chromium-browser,
    Google Chrome, else the browser that `python -m playwright install chromium` downloaded."""
    explicit = os.environ.get("BOOK_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return _playwright_chromium()


@functools.cache
def _playwright_chromium() -> str | None:
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # playwright missing, or its driver cannot start
        return None
    return path if path and Path(path).is_file() else None


def pages_in_order() -> list[str]:
    """Every page of the book, as paths relative to _build/html, in _toc.yml's reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return [f"{p}.html" for p in pages]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path = HTML):
    """An HTTP server for `directory` on 127.0.0.1 and a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browser():
    """A headless Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright
    path = chromium_path()
    if path is None:
        raise RuntimeError("Chromium is not installed (apt-get install chromium, or "
                           "python -m playwright install chromium, or set BOOK_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def set_theme(page, theme: str) -> None:
    """Switch the pydata/book theme to 'light' or 'dark' the way a reader's click would persist it."""
    page.evaluate("t => { localStorage.setItem('theme', t); localStorage.setItem('mode', t); }", theme)
    page.reload(wait_until="networkidle")
