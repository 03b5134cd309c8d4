"""The Drift page over a log with a shift: 400 clean images, then 600 three times darker, served by a real
server app. Windows of 200 inputs: two clean, three drifted, and the alert the third drifted one raises.

(Windows of 100 were tried: a clean one alarmed on input/std PSI 0.30 > 0.25, as small windows do; the
page shows what the monitor says, so the test uses windows the monitor judges reliably.)"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from torchkiln import api
from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.image_classification.example import draw

from ..conftest import running

PER_REQUEST = 10


def batch(n: int, *, seed: int, darken: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((draw(i % 3, rng, 8) // darken).astype(np.uint8)).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def serve(bundle: Path, url: str, requests: list[tuple[int, int]]) -> None:
    """Send ``(seed, darken)`` requests of PER_REQUEST images each to ``bundle`` served as ``shapes``."""

    async def go() -> None:
        settings = load_settings(models=[{"uri": str(bundle), "name": "shapes"}], log_url=url)
        async with running(create_app(settings)) as client:
            for seed, darken in requests:
                r = await client.post(
                    "/v1/models/shapes/predict", json={"images": batch(PER_REQUEST, seed=seed, darken=darken)}
                )
                assert r.status_code == 200, r.text

    asyncio.run(go())  # the log is flushed when the app stops


@pytest.fixture(scope="module")
def drifting(
    tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("drifting")
    cfg = make_config(make_image_folder(root / "images", size=8, mode="L", per_class=250), root / "runs")
    cfg["train"]["epochs"] = 2
    bundle = api.train(api.load_config(cfg)) / "bundle"
    url = f"sqlite:///{root}/p.db"
    serve(bundle, url, [(seed, 1) for seed in range(40)] + [(100 + seed, 3) for seed in range(60)])
    return {"root": root, "url": url, "bundle": bundle, "runs": root / "runs"}


def open_dashboard(url: str, runs: Path) -> TestClient:
    return TestClient(create_dashboard(load_dashboard_settings(log_url=url, runs_dir=str(runs))))


@pytest.fixture(scope="module")
def client(drifting: dict[str, Any]) -> Iterator[TestClient]:
    with open_dashboard(drifting["url"], drifting["runs"]) as c:
        yield c


def windows(page: str) -> list[tuple[str, str]]:
    """The windows table, newest first: (verdict class, rows that fired)."""
    return [
        (cls, html.unescape(fired))
        for cls, fired in re.findall(
            r'<tr class="(drift|clean)">.*?<td class="fired">(.*?)</td></tr>', page, re.S
        )
    ]


def chart(page: str) -> dict[str, Any]:
    """Each series by its label, one value per window (a step chart gives each value twice)."""
    (spec,) = re.findall(r'<div class="chart" data-series="([^"]*)"', page)
    return {s["label"]: s | {"values": s["values"][::2]} for s in json.loads(html.unescape(spec))["series"]}


def test_the_windows_show_the_shift_and_the_alert_it_raises(
    client: TestClient, drifting: dict[str, Any]
) -> None:
    r = client.get("/drift?model=shapes&window=200")
    assert r.status_code == 200, r.text
    page = r.text
    assert f"Reference: {drifting['bundle']}" in page
    found = windows(page)
    assert [cls for cls, _ in found] == ["drift", "drift", "drift", "clean", "clean"]
    assert all("input/mean/ks" in fired for cls, fired in found if cls == "drift")
    assert all(fired == "" for cls, fired in found if cls == "clean")
    assert page.count('<td class="num">200</td>') == 5  # 200 inputs each
    # The chart: every signal's score per window, 1 at the threshold; the brightness crosses it.
    lines = chart(page)
    assert lines["threshold"]["values"] == [1.0] * 5 and lines["threshold"]["dash"] is True
    mean = lines["input/mean"]["values"]
    assert max(mean[:2]) < 1.0 < min(mean[2:])
    # The third drifted window in a row opens an incident: one alert, naming the rows that fired.
    alerts = re.findall(r'<span class="event (\w+)">', page)
    assert alerts == ["alert"]
    assert "An incident is open." in page
    assert "0 inputs since the last window." in page


def test_windows_stay_put_and_only_new_ones_are_checked(drifting: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    shutil.copy(drifting["root"] / "p.db", db)
    with open_dashboard(f"sqlite:///{db}", drifting["runs"]) as c:
        before = c.get("/drift?model=shapes&window=200").text
        cache = c.app.state.drift_history  # made by the first render
        kept = cache.history("shapes", 200)[0].windows
        serve(drifting["bundle"], f"sqlite:///{db}", [(200 + seed, 1) for seed in range(22)])  # 220 clean
        after = c.get("/drift?model=shapes&window=200").text
        now = cache.history("shapes", 200)[0].windows
    assert len(now) == 6 and all(a is b for a, b in zip(now, kept, strict=False))  # not checked again
    assert now[-1].first == kept[-1].last + 1 and now[-1].items == 200
    assert [cls for cls, _ in windows(after)] == ["clean"] + [cls for cls, _ in windows(before)]
    assert "20 inputs since the last window." in after


def test_a_bundle_without_a_reference_profile_says_how_to_build_one(
    drifting: dict[str, Any], tmp_path: Path
) -> None:
    old = shutil.copytree(drifting["bundle"], tmp_path / "runs" / "old" / "bundle")
    (old / "reference.safetensors").unlink()
    profile = json.loads((old / "profile.json").read_text())
    del profile["reference"]
    (old / "profile.json").write_text(json.dumps(profile))
    with open_dashboard(drifting["url"], tmp_path / "runs") as c:
        page = html.unescape(c.get("/drift?model=shapes&window=200").text)
        overview = html.unescape(c.get("/overview?model=shapes").text)
    assert f"Bundle '{old}' has no reference profile" in page
    assert f"Build one with: kiln monitor profile {old} --split val" in page
    assert not windows(page)
    assert f"kiln monitor profile {old} --split val" in overview


def test_a_window_too_small_for_a_check_is_refused(client: TestClient) -> None:
    r = client.get("/drift?model=shapes&window=10")
    assert r.status_code == 422
    assert "The window must be a number of inputs from 50 to 10,000, like 1000" in html.unescape(r.text)
