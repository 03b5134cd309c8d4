"""The dashboard in a real browser (Debian's chromium through Playwright), against a real ``kiln serve`` and a
real ``kiln dashboard`` on loopback: predictions sent over HTTP appear in the open live view without a
reload, and the filters narrow it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import KILN
from .conftest import png

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():  # .ci/run installs it; a machine without it cannot run these tests
    pytest.skip(
        "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api")
ADMIN = "browser-admin-token-0123456789ab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, errors: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, errors.read_text(errors="replace")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("browser")
    log_url, serve_port, dash_port = f"sqlite:///{root}/p.db", free_port(), free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "KILN_SERVE_LOG_PAYLOAD_SAMPLE_RATE": "1.0",
        "KILN_SERVE_ADMIN_TOKEN": ADMIN,
        "KILN_ADMIN_TOKEN": ADMIN,
        "KILN_DASHBOARD_POLL_S": "0.3",
    }
    procs = []
    try:
        err = root / "serve.txt"
        with err.open("wb") as fh:
            cmd = [KILN, "serve", str(tiny_bundle), "--name", "shapes", "--port", str(serve_port)]
            cmd += ["--log-url", log_url]
            serve = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=fh)
        procs.append(serve)
        server = f"http://127.0.0.1:{serve_port}"
        wait_http(f"{server}/readyz", serve, err)
        err = root / "dashboard.txt"
        with err.open("wb") as fh:
            cmd = [KILN, "dashboard", "--log-url", log_url, "--port", str(dash_port), "--server", server]
            dash = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=fh)
        procs.append(dash)
        url = f"http://127.0.0.1:{dash_port}"
        wait_http(f"{url}/live", dash, err)
        yield {"server": server, "url": url, "root": root}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))  # type: ignore[attr-defined]
    yield page
    context.close()


def predict(server: str, seeds: range) -> list[dict[str, Any]]:
    with httpx.Client(base_url=server, timeout=30) as client:
        answers = []
        for s in seeds:
            r = client.post("/v1/models/shapes/predict", json={"images": [png(s)]})
            assert r.status_code == 200, r.text
            answers.append(r.json())
        return answers


def test_predictions_appear_in_the_open_live_view_without_a_reload(stack: dict[str, Any], page: Any) -> None:
    expect = sync_api.expect
    predict(stack["server"], range(3))
    page.goto(f"{stack['url']}/live")
    rows = page.locator("#rows tr[id^=row-]")
    expect(rows).to_have_count(3)  # the log writer flushes within its interval: expect() waits for it
    page.evaluate("window.kilnMarker = 'same page'")
    answers = predict(stack["server"], range(3, 8))
    expect(rows).to_have_count(8)
    newest = answers[-1]
    expect(rows.first.locator("td.answer .label")).to_have_text(newest["predictions"][0]["label"])
    assert page.evaluate("window.kilnMarker") == "same page"  # no reload happened
    images = page.locator("#rows img")
    expect(images).to_have_count(8)
    for i in range(8):  # every thumbnail loaded: a broken image has naturalWidth 0
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), i
    assert page.console_errors == []


def test_the_filters_narrow_the_view(stack: dict[str, Any], page: Any) -> None:
    expect = sync_api.expect
    answers = predict(stack["server"], range(20, 30))
    label = answers[0]["predictions"][0]["label"]
    page.goto(f"{stack['url']}/live")
    expect(page.locator("#rows tr[id^=row-]").first).to_be_visible()
    page.get_by_label("Class").fill(label)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(f"**/live?*label={label}*")
    labels = page.locator("#rows td.answer .label")
    expect(labels.first).to_have_text(label)
    assert set(labels.all_inner_texts()) == {label}
    assert page.console_errors == []
