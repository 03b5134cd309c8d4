"""A tiny, real image-classification run: drawn PNGs in class folders and a config that trains in seconds.

Used by the task conformance suite (every registered task and model goes through it) and by anyone who
wants a working example to start from: written to YAML, the returned config is one ``kiln train`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchkiln.core.config import quick_run

CLASSES = ("dot", "hbar", "vbar")
IMAGE_SIZE = 32  # the smallest side every registered architecture takes (ResNet and MobileNet: 32)
PER_CLASS = 8


def draw(cls: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One ``(size, size)`` uint8 picture of class ``cls``: dark noise plus a bright square or bar."""
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    lo = size // 4 + int(rng.integers(-1, 2))  # the shape moves by a pixel, so no two images are equal
    hi = lo + size // 2
    band = slice(size // 2 - 2, size // 2 + 2)
    if cls == 0:
        img[lo:hi, lo:hi] = 230
    elif cls == 1:
        img[band, :] = 230
    else:
        img[:, band] = 230
    return img


def write_images(folder: Path, *, per_class: int = PER_CLASS, size: int = IMAGE_SIZE, seed: int = 0) -> Path:
    """Write ``folder/<class>/NN.png`` (RGB, ``size`` x ``size``, three classes) and return ``folder``."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gray = draw(c, rng, size)
            # A class-dependent tint, so the three channels really differ.
            rgb = np.stack([gray, gray // (1 + c), gray // (3 - c)], axis=-1)
            Image.fromarray(rgb).save(folder / name / f"{i:02d}.png")
    return folder


def example_config(root: Path) -> dict[str, Any]:
    """Write a tiny image folder under ``root`` and return a raw config that trains on it in seconds.

    Args:
        root: an existing or new folder; ``root/images`` gets the PNGs, ``root/runs`` the runs.

    Returns:
        A raw config dict (validate it with :func:`torchkiln.tasks.base.validate`): a small CNN, one
        epoch, batch size 8, a constant learning rate, on the CPU in fp32, with TensorBoard and MLflow off.

    Example:
        >>> cfg = validate(example_config(tmp_path))
    """
    root = Path(root)
    images = write_images(root / "images")
    return {
        "task": "image-classification",
        "data": {"path": str(images), "num_workers": 0, "split": {"val": 0.15, "test": 0.15}},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        **quick_run(str(root / "runs"), batch_size=8),
    }
