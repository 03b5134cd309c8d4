"""A generator's requests on the dashboard: their inputs are seeds, so no thumbnail is offered for them."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from torchkiln import api
from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.base import get_task

from ..conftest import running


def test_the_live_page_shows_a_generators_answers_without_broken_images(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("gan-log")
    raw = get_task("image-generation").example_config(root)
    raw["task"] |= {"conditional": True, "features": "none"}
    run_dir = api.train(api.load_config(raw))
    url = f"sqlite:///{root}/p.db"
    settings = load_settings(
        models=[{"uri": str(run_dir / "bundle"), "name": "gan"}], log_url=url, log_payload_sample_rate=1.0
    )

    async def go() -> None:
        async with running(create_app(settings)) as client:
            r = await client.post("/v1/models/gan/predict", json={"n": 2, "seed": 1, "label": "bar"})
            assert r.status_code == 200, r.text

    asyncio.run(go())
    with TestClient(
        create_dashboard(load_dashboard_settings(log_url=url)), base_url="http://127.0.0.1:8050"
    ) as c:
        page = c.get("/live")
        assert page.status_code == 200
        assert page.text.count('<span class="label">bar</span>') == 2
        assert "/inputs/" not in page.text and "no preview for this input" in page.text
        assert c.get("/inputs/1/0.png").status_code == 404
