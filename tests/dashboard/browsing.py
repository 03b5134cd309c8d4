"""What the browser tests of the Versions and Runs pages share: real ``kiln`` processes on free loopback
ports, and Debian's chromium through Playwright (``needs_browser`` skips a test on a machine without them;
never ``playwright install``)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium) and playwright",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes appended to the list are stopped on exit: terminated, then killed after 30 s."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def start(cmd: list[str], *, cwd: Path, env: dict[str, str], errors: Path) -> subprocess.Popen:
    with errors.open("wb") as fh:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=fh)


def wait_until(ready: Any, proc: subprocess.Popen, errors: Path, timeout_s: float = 120) -> None:
    """Poll ``ready()`` until it is true; fail with the process's stderr if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, errors.read_text(errors="replace")
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, width: int = 1280) -> Any:
    """A page in a fresh context ``width`` px wide; ``page.console_errors`` collects console errors."""
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    return page


def overflows(page: Any) -> bool:
    """Whether the page is wider than its viewport (wide tables must scroll inside their box instead)."""
    return bool(page.evaluate("document.documentElement.scrollWidth > window.innerWidth"))
