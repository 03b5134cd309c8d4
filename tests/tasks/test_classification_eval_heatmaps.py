"""The evaluation report's Grad-CAM heatmaps (tasks/classification_eval.py ``mistake_heatmaps``): the tiny
CNN evaluated on images whose folders name the wrong classes, so every image is a mistake; each shown one
gets the predicted class's heatmap, the one ``kiln explain`` draws."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import yaml

from torchkiln import api
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.tasks.classification_eval import mistake_heatmaps

from ..conftest import CLASSES, write_image_folder


def test_the_gallery_shows_the_predicted_class_heatmap_of_each_mistake(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    # The dot pattern under hbar/, hbar under vbar/, vbar under dot/: the model's answers are all wrong.
    swapped = (CLASSES[1], CLASSES[2], CLASSES[0])
    images = write_image_folder(tmp_path / "images", per_class=4, classes=swapped, seed=5)
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    cfg = yaml.safe_load((bundle / "config.yaml").read_text())
    cfg["data"]["path"] = str(images)
    (bundle / "config.yaml").write_text(yaml.safe_dump(cfg))

    result = api.evaluate(bundle, split="train", out_dir=tmp_path / "eval", device="cpu")
    page = result.report.read_text()
    figures = re.findall(r'<figure class="mistake">.*?</figure>', page, re.S)
    assert figures and len(figures) == min(
        24, result.metrics.num_samples - round(result.metrics.accuracy * result.metrics.num_samples)
    )
    for figure in figures:
        source = re.search(r'<span class="source">([^<]+)</span>', figure).group(1)
        predicted = re.search(r"pred: ([a-z]+)</span>", figure).group(1)
        assert f'alt="Grad-CAM heatmap of {predicted} on {source}"' in figure

    # The heatmap is the one the predictor draws for that class.
    loaded = load_bundle(bundle)
    file = sorted(images.rglob("*.png"))[0]
    x = loaded.task.preprocess(loaded.config, [str(file)])[0]  # (C, H, W) uint8
    heatmap = mistake_heatmaps(loaded, lambda i: x.permute(1, 2, 0).numpy(), None)
    assert heatmap is not None
    explained = load_predictor(bundle, device="cpu").explain([str(file)], target="vbar")[0].heatmap
    assert np.allclose(heatmap(0, "vbar"), explained, atol=1e-6)
