"""The server on inputs far from the training inputs: answered, with ``warnings``, and counted in /metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from torchkiln import api
from torchkiln.serve.predlog import read_predictions

URL = "/v1/models/gray/predict"


def png(size: tuple[int, int], mode: str) -> str:
    """A base64 PNG of ``size`` (width, height) in ``mode`` ("L" or "RGB")."""
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any) -> Path:
    root = tmp_path_factory.mktemp("gray8-serve")
    cfg = make_config(make_image_folder(root / "images", size=8, mode="L", per_class=6), root / "runs")
    return api.train(api.load_config(cfg)) / "bundle"


def ood_counts(metrics: str) -> dict[str, float]:
    """reason -> kiln_inputs_out_of_distribution_total of the model 'gray'."""
    family = next(
        f for f in text_string_to_metric_families(metrics) if f.name == "kiln_inputs_out_of_distribution"
    )
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_a_photo_is_answered_with_warnings_and_counted(
    tmp_path: Path, gray_bundle: Path, serve_one: Any
) -> None:
    async def go() -> tuple[Any, Any, str]:
        async with serve_one(tmp_path, gray_bundle, "gray") as client:
            far = await client.post(URL, json={"images": [png((8, 8), "L"), png((640, 480), "RGB")]})
            near = await client.post(URL, json={"image": png((8, 8), "L")})
            return far, near, (await client.get("/metrics")).text

    far, near, metrics = asyncio.run(go())
    assert far.status_code == 200 and len(far.json()["predictions"]) == 2
    assert far.json()["warnings"] == [
        {"input": 1, "kind": "mode", "message": "mode RGB, trained on L"},
        {"input": 1, "kind": "size", "message": "size 640x480, trained on 8x8"},
    ]
    assert near.status_code == 200 and "warnings" not in near.json()
    assert ood_counts(metrics) == {"mode": 1.0, "size": 1.0}
    logged = read_predictions(f"sqlite:///{tmp_path}/p.db")
    summaries = next(r.input_summary for r in logged if r.items == 2)
    assert "warnings" not in summaries[0]
    assert summaries[1]["warnings"] == ["mode RGB, trained on L", "size 640x480, trained on 8x8"]


def test_a_bundle_without_a_profile_answers_without_warnings(
    tmp_path: Path, gray_bundle: Path, serve_one: Any
) -> None:
    old = shutil.copytree(gray_bundle, tmp_path / "old-bundle")
    (old / "profile.json").unlink()

    async def go() -> tuple[Any, str]:
        async with serve_one(tmp_path, old, "gray") as client:
            answer = await client.post(URL, json={"image": png((640, 480), "RGB")})
            return answer, (await client.get("/metrics")).text

    answer, metrics = asyncio.run(go())
    assert answer.status_code == 200 and "warnings" not in answer.json()
    assert ood_counts(metrics) == {}
