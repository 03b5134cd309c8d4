"""A detector's answers on the dashboard: the box count and class mix per input, and the boxes drawn on
its thumbnail."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from torchkiln import api
from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.inputs import BOX_COLOUR
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.base import get_task

from ..conftest import running


@pytest.fixture(scope="module")
def detector_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example detector, trained for one epoch, served with every body kept; two requests logged."""
    root = tmp_path_factory.mktemp("detector-log")
    run_dir = api.train(api.load_config(get_task("object-detection").example_config(root)))
    images = sorted((root / "shapes-voc" / "JPEGImages").glob("test*.png"))[:2]
    url = f"sqlite:///{root}/p.db"
    settings = load_settings(
        models=[{"uri": str(run_dir / "bundle"), "name": "shapes"}], log_url=url, log_payload_sample_rate=1.0
    )
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in images], "score_threshold": 0.0}

    async def go() -> dict[str, Any]:
        async with running(create_app(settings)) as client:
            r = await client.post("/v1/models/shapes/predict", json=body)
            assert r.status_code == 200, r.text
            return r.json()

    return {"url": url, "answer": asyncio.run(go()), "images": images}


def test_the_live_page_shows_box_counts_and_draws_the_boxes(detector_log: dict[str, Any]) -> None:
    settings = load_dashboard_settings(log_url=detector_log["url"])
    predictions = detector_log["answer"]["predictions"]
    assert predictions[0]["count"] > 0  # score_threshold 0: a barely trained detector keeps boxes
    with TestClient(create_dashboard(settings), base_url="http://127.0.0.1:8050") as client:
        page = client.get("/live")
        assert page.status_code == 200
        for p in predictions:
            assert f"{p['count']} box{'' if p['count'] == 1 else 'es'}" in page.text
        row = page.text.split('id="row-', 1)[1].split('"', 1)[0]
        thumb = client.get(f"/inputs/{row}/0.png")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"))
    plain = np.asarray(Image.open(detector_log["images"][0]).convert("RGB"))
    assert drawn.shape[:2] == (58, 96)  # the 160 x 96 input, at most 96 px on its longer side
    assert (drawn == np.array(BOX_COLOUR, dtype=np.uint8)).all(axis=2).sum() >= 8
    assert not (plain == np.array(BOX_COLOUR, dtype=np.uint8)).all(axis=2).any()
