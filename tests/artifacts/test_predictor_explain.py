"""Predictor.explain on the tiny trained CNN: the task's preprocessing, heatmaps at the model's input size,
the predicted class by default or another by name or index, and the refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.artifacts.predictor import load_predictor
from torchkiln.core.errors import PredictError

from ..conftest import CLASSES, write_image_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = write_image_folder(tmp_path_factory.mktemp("explain") / "images", per_class=1, size=24, seed=7)
    return [root / c / "00.png" for c in CLASSES]


def test_heatmaps_come_with_the_predicted_answer(tiny_bundle: Path, images: list[Path]) -> None:
    p = load_predictor(tiny_bundle, device="cpu")
    found = p.explain([str(i) for i in images], method="gradcam++")
    answers = p.predict([str(i) for i in images])
    assert [e.answer["label"] for e in found] == [a["label"] for a in answers]
    for e, a in zip(found, answers, strict=True):
        assert e.answer["score"] == pytest.approx(a["score"], abs=1e-5)
        assert e.explained == a["label"] and e.method == "gradcam++"
        assert e.heatmap.shape == (16, 16) and e.heatmap.dtype == np.float32  # image_size, not the file's 24
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0
        assert e.image.shape == (16, 16, 3) and e.image.dtype == np.uint8
        with Image.open(io.BytesIO(e.png(min_side=64))) as img:
            assert img.size == (64, 64)
    # The model that serves predictions is untouched: no hooks, no grads (the heatmaps use a copy).
    assert all(not m._forward_hooks for m in p.model.modules())
    assert all(q.grad is None for q in p.model.parameters())


def test_another_class_by_name_or_index(tiny_bundle: Path, images: list[Path]) -> None:
    p = load_predictor(tiny_bundle, device="cpu")
    by_name = p.explain([str(images[0])], target="vbar")[0]
    by_index = p.explain([str(images[0])], target=2)[0]
    assert by_name.explained == by_index.explained == "vbar"
    assert np.array_equal(by_name.heatmap, by_index.heatmap)
    with torch.inference_mode():  # a caller under inference mode gets heatmaps all the same
        assert p.explain([str(images[0])], target="2")[0].explained == "vbar"


def test_an_unknown_class_or_method_says_what_to_pass(tiny_bundle: Path, images: list[Path]) -> None:
    p = load_predictor(tiny_bundle, device="cpu")
    with pytest.raises(PredictError) as err:
        p.explain([str(images[0])], target="vbars")
    assert str(err.value) == (
        "Unknown class 'vbars'. Did you mean 'vbar'? The model's classes are dot, hbar, vbar. Pass one of "
        "them, spelled exactly, or its index."
    )
    with pytest.raises(PredictError, match="Unknown explanation method 'scorecam'"):
        p.explain([str(images[0])], method="scorecam")
