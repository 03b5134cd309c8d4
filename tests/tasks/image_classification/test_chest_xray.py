"""A chest X-ray run end to end: DICOM files in Kaggle's folders, CLAHE and patient-level splits, trained,
exported to ONNX, and predicted from file paths and from a served request's bytes, with one preprocessing."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkiln import api
from torchkiln.components.contrast import clahe
from torchkiln.components.image_requests import check_image
from torchkiln.components.images import to_model_input
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings

from ...conftest import running
from .chest_files import write_chest_xray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, make_config) -> Path:
    root = tmp_path_factory.mktemp("chest")
    data = write_chest_xray(root / "chest_xray", dicom=True, patients={"train": (8, 8), "test": (2, 2)})
    cfg = make_config(data, root / "runs")
    cfg["data"] |= {"contrast": "clahe", "group_pattern": r"(person\d+|IM-\d+)", "split": {"val": 0.25}}
    cfg["train"]["epochs"] = 2
    return api.train(api.load_config(cfg))


def test_the_bundle_records_the_preprocessing(run_dir: Path) -> None:
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    pre = meta["preprocessing"]
    assert pre["channels"] == 1 and pre["color_mode"] == "L" and pre["image_size"] == 16
    assert pre["contrast"] == "CLAHE (scikit-image equalize_adapthist, clip_limit 0.01) on the cropped square"
    cfg = api.load_predictor(run_dir).bundle.config
    assert (cfg.data.contrast, cfg.data.clahe, cfg.data.group_pattern) == (
        "clahe",
        0.01,
        r"(person\d+|IM-\d+)",
    )


def test_onnx_variant_preprocesses_dicom_bytes_like_training(run_dir: Path) -> None:
    variant = api.export(run_dir, bench_seconds=0.01).variant
    files = sorted(Path(api.load_predictor(run_dir).bundle.config.data.path).glob("test/*/*.dcm"))
    raw = [check_image(f.read_bytes(), i, 10_000) for i, f in enumerate(files)]  # as the server takes them
    expected = torch.stack([clahe(to_model_input(f, size=16, channels=1), clip_limit=0.01) for f in files])
    for bundle in (run_dir, variant):
        predictor = api.load_predictor(bundle)
        assert torch.equal(predictor.preprocess(raw), expected)
        assert torch.equal(predictor.preprocess([str(f) for f in files]), expected)
    eager = api.load_predictor(run_dir).predict(raw)
    onnx = api.load_predictor(variant).predict(raw)
    assert [a["label"] for a in onnx] == [a["label"] for a in eager]
    assert np.allclose([a["score"] for a in onnx], [a["score"] for a in eager], atol=1e-5)


def test_the_server_answers_dicom_requests_as_the_predictor_does(run_dir: Path, tmp_path: Path) -> None:
    files = sorted(Path(api.load_predictor(run_dir).bundle.config.data.path).glob("test/*/*.dcm"))
    raw = [f.read_bytes() for f in files]
    expected = api.load_predictor(run_dir).predict(raw, top_k=2)
    settings = load_settings(
        models=[{"uri": str(run_dir / "bundle"), "name": "chest"}], log_url=f"sqlite:///{tmp_path}/p.db"
    )

    async def go() -> dict:
        async with running(create_app(settings)) as client:
            body = {"images": [base64.b64encode(r).decode() for r in raw], "top_k": 2}
            response = await client.post("/v1/models/chest/predict", json=body)
            assert response.status_code == 200, response.text
            return response.json()

    answers = asyncio.run(go())["predictions"]
    assert [a["label"] for a in answers] == [a["label"] for a in expected]
    assert np.allclose([a["score"] for a in answers], [a["score"] for a in expected], atol=1e-6)
