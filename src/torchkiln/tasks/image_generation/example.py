"""A tiny, real GAN run: drawn bars and squares in an .npz file, and a config that trains in seconds.

Used by the task conformance suite (every registered generator goes through it) and by anyone who wants a
working example to start from: written to YAML, the returned config is one ``kiln train`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.config import quick_run

CLASSES = ("bar", "column", "square")


def shapes(n: int, *, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` grayscale ``(size, size)`` images of a bright bar, column or square on dark noise, and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, (n, size, size)).astype(np.uint8)
    labels = np.arange(n) % len(CLASSES)
    for img, label in zip(images, labels, strict=True):
        a = int(rng.integers(2, size - 12))
        b = a + int(rng.integers(6, 10))
        c = int(rng.integers(2, size - 10))
        if label == 0:
            img[c : c + 6, a:b] = 220
        elif label == 1:
            img[a:b, c : c + 6] = 220
        else:
            img[c : c + 8, c : c + 8] = 220
    return images, labels.astype(np.int64)


def write_shapes(path: Path, *, seed: int = 0) -> Path:
    """An .npz of 36 train, 9 val and 9 test images (``x_train``, ``y_train``...; ``classes``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"classes": np.array(CLASSES)}
    for i, (split, n) in enumerate((("train", 36), ("val", 9), ("test", 9))):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = shapes(n, seed=seed + i)
    np.savez(path, **arrays)
    return path


def example_config(root: Path) -> dict[str, Any]:
    """A raw config over :func:`write_shapes`' data in ``root``: a narrow DCGAN, one epoch, on the CPU."""
    data = write_shapes(root / "shapes.npz")
    run = quick_run(str(root / "runs"), batch_size=8)
    run["train"]["optimizer"] = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}
    return {
        "task": {
            "kind": "image-generation",
            "latent_dim": 16,
            "eval_samples": 16,
            "grid": 8,
        },
        "data": {"path": str(data)},
        "model": {"name": "dcgan", "args": {"width": 8}},
        "evaluate": {"batch_size": 8},
        **run,
    }
