"""The dashboard in a real browser (Debian's chromium through Playwright), against a real ``kiln serve`` and a
real ``kiln dashboard`` on loopback: predictions sent over HTTP appear in the open live view without a
reload, and the filters narrow it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import KILN
from .browsing import answers, chromium, free_port, needs_browser, new_page, processes, start, wait_until
from .conftest import png

pytestmark = needs_browser
ADMIN = "browser-admin-token-0123456789ab"
WAIT_MS = 30_000  # a loaded 2-core machine: the log writer and the poll may take seconds


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
    with processes() as procs:
        server = f"http://127.0.0.1:{serve_port}"
        cmd = [KILN, "serve", str(tiny_bundle), "--name", "shapes", "--port", str(serve_port)]
        procs.append(start([*cmd, "--log-url", log_url], cwd=root, env=env, errors=root / "serve.txt"))
        wait_until(lambda: answers(f"{server}/readyz"), procs[-1], root / "serve.txt")
        url = f"http://127.0.0.1:{dash_port}"
        cmd = [KILN, "dashboard", "--log-url", log_url, "--port", str(dash_port), "--server", server]
        procs.append(start(cmd, cwd=root, env=env, errors=root / "dashboard.txt"))
        wait_until(lambda: answers(f"{url}/live"), procs[-1], root / "dashboard.txt")
        yield {"server": server, "url": url, "root": root}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = new_page(browser)
    yield page
    page.context.close()


def predict(server: str, seeds: range) -> list[dict[str, Any]]:
    with httpx.Client(base_url=server, timeout=30) as client:
        answers = []
        for s in seeds:
            r = client.post("/v1/models/shapes/predict", json={"images": [png(s)]})
            assert r.status_code == 200, r.text
            answers.append(r.json())
        return answers


def test_predictions_appear_in_the_open_live_view_without_a_reload(stack: dict[str, Any], page: Any) -> None:
    from playwright.sync_api import expect

    predict(stack["server"], range(3))
    page.goto(f"{stack['url']}/live")
    rows = page.locator("#rows tr[id^=row-]")
    expect(rows).to_have_count(3, timeout=WAIT_MS)  # the log writer flushes within its interval
    page.evaluate("window.kilnMarker = 'same page'")
    sent = predict(stack["server"], range(3, 8))
    expect(rows).to_have_count(8, timeout=WAIT_MS)
    newest = sent[-1]["predictions"][0]["label"]
    expect(rows.first.locator("td.answer .label")).to_have_text(newest, timeout=WAIT_MS)
    assert page.evaluate("window.kilnMarker") == "same page"  # no reload happened
    images = page.locator("#rows img")
    expect(images).to_have_count(8, timeout=WAIT_MS)
    for i in range(8):  # every thumbnail loaded: a broken image has naturalWidth 0
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), i
    assert page.console_errors == []


def test_the_filters_narrow_the_view(stack: dict[str, Any], page: Any) -> None:
    from playwright.sync_api import expect

    sent = predict(stack["server"], range(20, 30))
    label = sent[0]["predictions"][0]["label"]
    page.goto(f"{stack['url']}/live")
    expect(page.locator("#rows tr[id^=row-]").first).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("Class").fill(label)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(f"**/live?*label={label}*")
    labels = page.locator("#rows td.answer .label")
    expect(labels.first).to_have_text(label, timeout=WAIT_MS)
    assert set(labels.all_inner_texts()) == {label}
    assert page.console_errors == []


def test_a_missing_or_wrong_token_is_refused_in_the_browser(
    stack: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    """A dashboard with a token: the browser gets the sign-in page, a wrong token is refused, the right
    one opens the live view."""
    from playwright.sync_api import expect

    token, port = "browser-dashboard-token-0123456789", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILN_DASHBOARD_TOKEN": token}
    log_url = f"sqlite:///{stack['root']}/p.db"
    with processes() as procs:
        cmd = [KILN, "dashboard", "--log-url", log_url, "--port", str(port)]
        procs.append(start(cmd, cwd=tmp_path, env=env, errors=tmp_path / "dashboard.txt"))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/login"), procs[-1], tmp_path / "dashboard.txt")
        page = new_page(browser)
        response = page.goto(f"{url}/live")
        assert response is not None and response.status == 401
        expect(page.get_by_role("alert")).to_have_text("This dashboard needs its token.")
        assert page.locator("#rows").count() == 0
        page.get_by_label("Dashboard token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text(
            "The token is wrong. It is the dashboard's KILN_DASHBOARD_TOKEN.", timeout=WAIT_MS
        )
        page.get_by_label("Dashboard token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/live")
        expect(page.locator("h1")).to_have_text("Live predictions", timeout=WAIT_MS)
        page.context.close()


def test_a_heatmap_button_puts_the_heatmap_beside_the_image(stack: dict[str, Any], page: Any) -> None:
    """The button's fragment swaps in through htmx, and its data: PNG loads under the page's CSP."""
    from playwright.sync_api import expect

    predict(stack["server"], range(40, 41))
    page.goto(f"{stack['url']}/live")
    button = page.get_by_role("button", name="heatmap").first
    expect(button).to_be_visible(timeout=WAIT_MS)
    button.click()
    heat = page.locator("#rows img.heat").first
    expect(heat).to_be_visible(timeout=WAIT_MS)
    assert heat.evaluate("img => img.complete && img.naturalWidth === 16")  # the model's 16-pixel input
    expect(heat).to_have_attribute("alt", re.compile(r"^Grad-CAM heatmap of input 0: where the model found "))
    assert (
        page.get_by_role("button", name="heatmap").count() == page.locator("#rows tr[id^=row-]").count() - 1
    )
    assert page.console_errors == []
