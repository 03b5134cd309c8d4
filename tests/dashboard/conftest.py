"""Dashboard fixtures: a prediction log written by a real server app, and the dashboard app over it.

``logged`` serves the tiny image model and the tiny text model in process, with every request body kept,
sends them requests (one text holds markup) and labels some of them; the dashboard then reads that log.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings

from ..conftest import running

ADMIN = "dashboard-admin-token-0123456789"
MARKUP = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def png(seed: int, size: int = 16) -> str:
    """A small base64 PNG: noise with a bright bar (the tiny model's classes are bars and squares)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[:, size // 2 - 2 : size // 2 + 2] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def send(client: Any, images: int, texts: list[str]) -> list[dict[str, Any]]:
    answers = []
    for i in range(images):
        r = await client.post("/v1/models/shapes/predict", json={"images": [png(i)]})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    for t in texts:
        r = await client.post("/v1/models/reviews/predict", json={"texts": [t]})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, tiny_text_bundle: Path
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dashboard-log")
    url = f"sqlite:///{root}/p.db"
    settings = load_settings(
        models=[
            {"uri": str(tiny_bundle), "name": "shapes"},
            {"uri": str(tiny_text_bundle), "name": "reviews"},
        ],
        log_url=url,
        log_payload_sample_rate=1.0,
        admin_token=ADMIN,
    )

    async def go() -> list[dict[str, Any]]:
        async with running(create_app(settings)) as client:
            answers = await send(client, 30, ["a wonderful film", MARKUP])
            for i, a in enumerate(answers[:10]):  # the first ten labelled: five right, five wrong
                right = a["predictions"][0]["label"]
                wrong = next(c for c in ("dot", "hbar", "vbar") if c != right)
                label = right if i % 2 == 0 else wrong
                r = await client.post("/v1/feedback", json={"request_id": a["request_id"], "label": label})
                assert r.status_code == 201, r.text
            return answers

    answers = asyncio.run(go())  # the log is flushed when the app stops
    return {"url": url, "root": root, "answers": answers}


@pytest.fixture
def dashboard(logged: dict[str, Any]) -> Callable[..., Any]:
    """``with dashboard(**settings) as client``: the dashboard over ``logged``'s log, in process."""

    def make(**values: Any) -> TestClient:
        settings = load_dashboard_settings(log_url=logged["url"], **values)
        return TestClient(create_dashboard(settings), base_url="http://127.0.0.1:8050")

    return make


@pytest.fixture
def client(dashboard: Callable[..., Any]) -> Iterator[TestClient]:
    with dashboard() as c:
        yield c
