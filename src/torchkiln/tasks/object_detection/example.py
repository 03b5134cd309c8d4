"""A tiny, real detection run: drawn squares and discs with VOC boxes, and a config that trains in seconds.

Used by the task conformance suite (every registered detector goes through it) and by anyone who wants a
working example to start from: written to YAML, the returned config is one ``kiln train`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from torchkiln.core.config import quick_run

CLASSES = ("disc", "square")
TILE = 96
# (images, width): training images are one tile each; the held-out ones are wider, so they are predicted
# in two overlapping tiles whose boxes are merged, as a large aerial image is.
SPLITS = {"train": (8, TILE), "val": (3, 160), "test": (3, 160)}


def draw(rng: np.random.Generator, width: int) -> tuple[Image.Image, list[tuple[str, list[int]]]]:
    """One RGB picture (``width`` x 96) with 1 to 3 objects on dark noise, and its VOC boxes (1-based)."""
    size = TILE
    img = Image.fromarray(rng.integers(0, 60, (size, width, 3)).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    objects: list[tuple[str, list[int]]] = []
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.integers(14, 30))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, size - side))
        name = CLASSES[int(rng.integers(0, 2))]
        shape = pen.ellipse if name == "disc" else pen.rectangle
        shape((x, y, x + side - 1, y + side - 1), fill=(230, 200, 40) if name == "disc" else (40, 200, 230))
        objects.append((name, [x + 1, y + 1, x + side, y + side]))
    return img, objects


def write_voc(folder: Path, *, seed: int = 0) -> Path:
    """Write ``folder`` in the Pascal VOC layout (JPEGImages, Annotations, ImageSets/Main) and return it."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, (n, width) in SPLITS.items():
        names = [f"{split}{i:02d}" for i in range(n)]
        for name in names:
            img, objects = draw(rng, width)
            img.save(folder / "JPEGImages" / f"{name}.png")
            items = "".join(
                f"<object><name>{c}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                f"<ymax>{b[3]}</ymax></bndbox></object>"
                for c, b in objects
            )
            xml = (
                f"<annotation><filename>{name}.png</filename><size><width>{width}</width>"
                f"<height>{TILE}</height><depth>3</depth></size>{items}</annotation>\n"
            )
            (folder / "Annotations" / f"{name}.xml").write_text(xml, encoding="utf-8")
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return folder


def example_config(root: Path) -> dict[str, Any]:
    """Write a tiny VOC data set under ``root`` and return a raw config that trains on it in seconds.

    The held-out images are wider than the 96 px tile, so evaluation predicts them by tiles and merges
    the boxes, as on real aerial images.

    Example:
        >>> cfg = validate(example_config(tmp_path))
    """
    root = Path(root)
    folder = write_voc(root / "shapes-voc")
    return {
        "task": {"kind": "object-detection", "score_threshold": 0.05},
        "data": {"path": str(folder), "tile_size": TILE, "anchor_sizes": [8, 14, 20, 28, 40]},
        "model": {"name": "fasterrcnn_mobilenet_v3_fpn", "args": {"fpn_channels": 32}},
        **quick_run(str(root / "runs"), batch_size=4),
    }
