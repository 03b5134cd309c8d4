"""Shared fixtures: a tiny generated image folder and a tiny run config that trains in about a second.

The images are drawn, not downloaded: three classes whose patterns a small CNN tells apart easily
(a bright square in the middle, a horizontal bar, a vertical bar), on seeded noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CLASSES = ("dot", "hbar", "vbar")

ImageFolderFactory = Callable[..., Path]
ConfigFactory = Callable[..., dict[str, Any]]


def draw(cls: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """One ``(size, size)`` uint8 picture of class ``cls``: dark noise plus a bright shape."""
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    lo = size // 4 + int(rng.integers(-1, 2))  # the shape moves by a pixel, so it is not one fixed image
    hi = lo + size // 2
    band = slice(size // 2 - 2, size // 2 + 2)
    if cls == 0:
        img[lo:hi, lo:hi] = 230
    elif cls == 1:
        img[band, :] = 230
    else:
        img[:, band] = 230
    return img


def write_image_folder(
    root: Path,
    *,
    per_class: int = 12,
    size: int = 16,
    mode: str = "RGB",
    classes: Sequence[str] = CLASSES,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/NN.png`` and return ``root``; ``mode`` is "RGB" or "L" (grayscale)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gray = draw(c % len(CLASSES), rng, size)
            if mode == "RGB":
                # A class-dependent tint, so RGB data really has three different channels.
                arr = np.stack([gray, gray // (1 + c % 3), gray // (3 - c % 3)], axis=-1)
            else:
                arr = gray
            Image.fromarray(arr).save(folder / f"{i:02d}.png")
    return root


def tiny_config_dict(data_path: str | Path, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """A config that trains a small CNN for one epoch on CPU, with TensorBoard and MLflow off."""
    return {
        "task": "image-classification",
        "data": {"path": str(data_path), "num_workers": 0},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "tracking": {"tensorboard": False, "mlflow": False},
        "runs_dir": str(runs_dir),
    }


@pytest.fixture(scope="session")
def make_image_folder() -> ImageFolderFactory:
    """The folder writer, for tests that need a non-default folder or a wider scope than ``tmp_path``."""
    return write_image_folder


@pytest.fixture(scope="session")
def make_config() -> ConfigFactory:
    """``make_config(data_path, runs_dir)`` -> the tiny config dict (a fresh copy each call)."""
    return tiny_config_dict


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """3 classes x 12 RGB PNGs of 16x16 in ``tmp_path/images/<class>/``."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_config(tiny_image_folder: Path, tmp_path: Path) -> dict[str, Any]:
    """The tiny config dict on :func:`tiny_image_folder`, writing runs under ``tmp_path/runs``."""
    return tiny_config_dict(tiny_image_folder, tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained bundle (the tiny CNN on 16x16 RGB shapes), made once per session. Treat it as read-only."""
    from torchkiln import api

    root = tmp_path_factory.mktemp("tiny-bundle")
    cfg = tiny_config_dict(write_image_folder(root / "images"), root / "runs")
    cfg["train"]["epochs"] = 3
    return api.train(api.load_config(cfg)) / "bundle"
