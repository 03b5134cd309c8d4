"""A prediction log filled by really serving a tiny bundle: clean and darker traffic, feedback labels.

``served_log`` trains a 3-class CNN on 8x8 grayscale images (tests/conftest.py's drawn shapes), serves it
in process (serve.app.create_app, its prediction log in SQLite) as ``shapes``, and sends 120 clean
images, then 120 images three times darker, each as one request, with a feedback label for every clean
one. The log is written by the server's own writer; nothing here writes SQL.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from torchkiln import api
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.image_classification.example import draw

from ..conftest import running

CLASSES = ["dot", "hbar", "vbar"]
CLEAN = DARK = 120


@dataclass(frozen=True)
class ServedLog:
    bundle: Path
    url: str  # sqlite:///.../p.db
    clean_url: str  # a log with the clean traffic only
    version: str


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def images(n: int, *, seed: int, darken: int = 1) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(i % 3, (draw(i % 3, rng, 8) // darken).astype(np.uint8)) for i in range(n)]


async def serve_traffic(bundle: Path, db: Path, batches: list[list[tuple[int, np.ndarray]]]) -> str:
    s = load_settings(models=[{"uri": str(bundle), "name": "shapes"}], log_url=f"sqlite:///{db}")
    app = create_app(s)
    version = ""
    async with running(app) as client:
        for batch, labelled in batches:
            for label, image in batch:
                r = await client.post("/v1/models/shapes/predict", json={"images": [png(image)]})
                assert r.status_code == 200, r.text
                version = r.json()["version"]
                if labelled:
                    f = await client.post(
                        "/v1/feedback",
                        json={"request_id": r.json()["request_id"], "label": CLASSES[label]},
                    )
                    assert f.status_code == 201, f.text
    return version


@pytest.fixture(scope="session")
def served_log(
    tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any
) -> ServedLog:
    root = tmp_path_factory.mktemp("served")
    cfg = make_config(make_image_folder(root / "images", size=8, mode="L", per_class=250), root / "runs")
    cfg["train"]["epochs"] = 2
    run = api.train(api.load_config(cfg))
    bundle = run / "bundle"
    clean, dark = images(CLEAN, seed=1), images(DARK, seed=2, darken=3)
    version = asyncio.run(serve_traffic(bundle, root / "p.db", [(clean, True), (dark, False)]))
    asyncio.run(serve_traffic(bundle, root / "clean.db", [(clean, False)]))
    return ServedLog(bundle, f"sqlite:///{root}/p.db", f"sqlite:///{root}/clean.db", version)
