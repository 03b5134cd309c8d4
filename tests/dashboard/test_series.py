"""A forecaster's logged inputs are drawn as sparklines in the live view."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.inputs import SPARK_H, SPARK_W, sparkline
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks import get_task

from ..conftest import running


def test_a_forecast_request_is_a_sparkline_of_its_history(tmp_path: Path, tiny_forecast_bundle: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    body = get_task("forecasting").example_request()  # 36 months of AirPassengers
    settings = load_settings(
        models=[{"uri": str(tiny_forecast_bundle), "name": "series"}],
        log_url=url,
        log_payload_sample_rate=1.0,
    )

    async def go() -> None:
        async with running(create_app(settings)) as client:
            r = await client.post("/v1/models/series/predict", json=body)
            assert r.status_code == 200, r.text

    asyncio.run(go())
    with TestClient(create_dashboard(load_dashboard_settings(log_url=url))) as client:
        html = client.get("/live").text
    [points] = re.findall(r'<polyline points="([^"]+)"/>', html)
    assert points == sparkline(np.array(body["history"]))
    xy = [tuple(map(float, p.split(","))) for p in points.split()]
    assert len(xy) == len(body["history"]) and all(0 <= x <= SPARK_W and 0 <= y <= SPARK_H for x, y in xy)
    # the highest month is at the top of the box, the lowest at the bottom
    ys = [y for _, y in xy]
    assert ys[body["history"].index(max(body["history"]))] == min(ys) == 1.0
    assert ys[body["history"].index(min(body["history"]))] == max(ys) == SPARK_H - 1
