"""The report's mistake gallery with Grad-CAM heatmaps: one under each thumbnail, for the predicted class,
drawn over the image; none where the heatmap function draws none."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from torchkiln.components.classification_metrics import classification_metrics
from torchkiln.components.classification_report import write_report
from torchkiln.components.gradcam import overlay

from .test_classification_report import PNG_URI, image, noisy_probs

NAMES = ["cat", "dog", "bird", "fish"]


def heat(i: int, predicted: str) -> np.ndarray | None:
    """A left-to-right ramp for most samples; none for every third (a model that drew nothing)."""
    return None if i % 3 == 0 else np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (8, 1))


def test_each_mistake_gets_its_predicted_class_heatmap_under_the_thumbnail(tmp_path: Path) -> None:
    probs, targets = noisy_probs(40, 4)
    m = classification_metrics(probs, targets, NAMES)
    asked: list[tuple[int, str]] = []

    def heatmaps(i: int, predicted: str) -> np.ndarray | None:
        asked.append((i, predicted))
        return heat(i, predicted)

    page = write_report(
        tmp_path, m, probs, targets, NAMES, images=image, heatmaps=heatmaps, mistakes=6
    ).read_text()
    shown = re.findall(r'<figure class="mistake">.*?</figure>', page, re.S)
    assert len(shown) == 6 and len(asked) == 6
    predicted = probs.argmax(1)
    assert all(p == NAMES[int(predicted[i])] for i, p in asked)  # the predicted class, by name
    for (i, p), figure in zip(asked, shown, strict=True):
        pngs = PNG_URI.findall(figure)
        if heat(i, p) is None:
            assert len(pngs) == 1 and "Grad-CAM" not in figure
            continue
        assert len(pngs) == 2 and f'alt="Grad-CAM heatmap of {p} on #{i}"' in figure
        with Image.open(io.BytesIO(base64.b64decode(pngs[1]))) as img:
            drawn = np.asarray(img.convert("RGB"))
        assert drawn.shape == (96, 96, 3)  # an 8-pixel image, enlarged 12 times like its thumbnail
        expected = overlay(image(i), heat(i, p))
        assert np.array_equal(drawn[::12, ::12], expected)
    assert "Under an image, its Grad-CAM heatmap for the predicted class" in " ".join(page.split())


def test_without_heatmaps_the_gallery_is_as_before(tmp_path: Path) -> None:
    probs, targets = noisy_probs(40, 4)
    m = classification_metrics(probs, targets, NAMES)
    page = write_report(tmp_path, m, probs, targets, NAMES, images=image, mistakes=5).read_text()
    assert "Grad-CAM" not in page and len(PNG_URI.findall(page)) == 4 + 5
