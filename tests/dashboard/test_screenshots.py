"""Every page of the dashboard in chromium, at 1280 px and at a phone's 390 px, over a real server: no
console error, no broken image, nothing wider than the screen; each page's screenshot is saved.

With ``KILN_SCREENSHOTS=DIR`` the screenshots go to DIR (``docs/images`` refreshes the ones in
docs/dashboard.md); otherwise to the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from torchkiln.serve import registry

from ..conftest import KILN
from .browsing import (
    answers,
    chromium,
    free_port,
    needs_browser,
    new_page,
    overflows,
    processes,
    start,
    wait_until,
)
from .conftest import png

pytestmark = needs_browser
ADMIN = "screens-admin-token-0123456789ab"
WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[dict[str, Any]]:
    """The tiny model registered and served as models:/shapes@champion (every body kept), 60 requests,
    the first 20 labelled, and a dashboard over the log, the registry and the model's runs folder."""
    root = tmp_path_factory.mktemp("screens")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry.register_bundle(tiny_bundle, name="shapes", alias="champion", tracking_uri=uri)
    log, serve_port, dash_port = f"sqlite:///{root / 'p.db'}", free_port(), free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "KILN_CACHE_DIR": str(root / "cache"),
        "KILN_SERVE_LOG_PAYLOAD_SAMPLE_RATE": "1.0",
        "KILN_SERVE_ADMIN_TOKEN": ADMIN,
        "KILN_ADMIN_TOKEN": ADMIN,
    }
    server = f"http://127.0.0.1:{serve_port}"
    with processes() as procs:
        cmd = [KILN, "serve", "models:/shapes@champion", "--registry-uri", uri, "--port", str(serve_port)]
        procs.append(start([*cmd, "--log-url", log], cwd=root, env=env, errors=root / "serve.txt"))
        wait_until(lambda: answers(f"{server}/readyz"), procs[-1], root / "serve.txt")
        with httpx.Client(base_url=server, timeout=30) as client:
            for i in range(60):
                r = client.post("/v1/models/shapes/predict", json={"images": [png(i)]}).json()
                if i < 20:
                    wrong = "dot" if r["predictions"][0]["label"] != "dot" else "hbar"
                    label = r["predictions"][0]["label"] if i % 3 else wrong
                    client.post("/v1/feedback", json={"request_id": r["request_id"], "label": label})
        runs = tiny_bundle.parent.parent.parent  # RUNS_DIR/<name>/<run>/bundle
        cmd = [KILN, "dashboard", "--log-url", log, "--tracking-uri", uri, "--runs-dir", str(runs)]
        cmd += ["--server", server, "--port", str(dash_port)]
        procs.append(start(cmd, cwd=root, env=env, errors=root / "dashboard.txt"))
        url = f"http://127.0.0.1:{dash_port}"
        wait_until(lambda: answers(f"{url}/live"), procs[-1], root / "dashboard.txt")
        yield {"url": url, "root": root}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_every_page_renders_without_errors_at_both_widths(
    stack: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    out = Path(os.environ.get("KILN_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    first = new_page(browser)
    first.goto(f"{stack['url']}/live")
    pages = first.eval_on_selector_all("header nav a", "links => links.map(a => a.getAttribute('href'))")
    first.context.close()
    assert pages[:2] == ["/live", "/overview"] and {"/drift", "/versions", "/runs", "/label"} <= set(pages)
    for width in WIDTHS:
        for path in pages:
            page = new_page(browser, width)
            response = page.goto(f"{stack['url']}{path}")
            assert response is not None and response.status == 200, (path, response and response.status)
            page.wait_for_load_state("networkidle")
            broken = page.eval_on_selector_all(  # thumbnails load lazily: load each now, or name it
                "img",
                "imgs => Promise.all(imgs.map(i => { i.loading = 'eager'; return i.decode().then("
                "() => null, () => i.src); })).then(r => r.filter(Boolean))",
            )
            assert broken == [], (path, width)
            assert page.eval_on_selector_all("img", "imgs => imgs.filter(i => !i.alt).length") == 0, path
            assert page.console_errors == [], (path, width, page.console_errors)
            assert not overflows(page), (path, width)
            name = path.strip("/").replace("/", "-") or "home"
            page.screenshot(path=str(out / f"dashboard-{name}{'' if width == 1280 else '-phone'}.png"))
            page.context.close()
