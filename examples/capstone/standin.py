"""The capstone's stand-in data: a binary, imbalanced, grayscale problem with the chest X-ray set's shape.

No chest radiograph can be downloaded on this machine and none ships inside a package (docs/capstone.md), so
``make capstone`` runs on a **stand-in**, and says so everywhere: real Fashion-MNIST images of two classes
that are hard to tell apart, written in the Kaggle ``chest_xray`` layout:

    standin-xray/{train,val,test}/{T-shirt,Shirt}/*.png

- ``Shirt`` stands in for ``PNEUMONIA`` (the positive class, the majority: 2.9 : 1 in train, as in Kaggle's
  3,875 : 1,341) and ``T-shirt`` for ``NORMAL``;
- ``val`` holds 16 images (8 + 8), as Kaggle's does, so the capstone meets the same too-small val split;
- ``test`` keeps Kaggle's 390 : 234 ratio, with images from Fashion-MNIST's test split (never in train);
- the traffic the capstone replays comes from Fashion-MNIST training images no split uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from torchkiln.components.catalog import load_image_catalog

POSITIVE, NEGATIVE = "Shirt", "T-shirt"  # stand-ins for PNEUMONIA and NORMAL
_SOURCE = {POSITIVE: "Shirt", NEGATIVE: "T-shirt/top"}  # Fashion-MNIST's names


@dataclass(frozen=True)
class Sizes:
    """How many images each part gets, per class: (positive, negative)."""

    train: tuple[int, int] = (1160, 400)  # 2.9 : 1, as Kaggle's train
    val: tuple[int, int] = (8, 8)  # Kaggle's 16-image val
    test: tuple[int, int] = (390, 234)  # Kaggle's test
    traffic: tuple[int, int] = (900, 900)  # replayed to the server (clean, shifted, shadow, after)


SMALL = Sizes(train=(240, 84), val=(8, 8), test=(60, 36), traffic=(150, 150))


def png(image: np.ndarray) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_standin(root: Path, sizes: Sizes, *, seed: int = 0) -> tuple[Path, list[tuple[bytes, str]]]:
    """Write the stand-in folder under ``root`` (once; kept between runs) and return it with the traffic:
    (PNG bytes, label) pairs of images in no split, shuffled."""
    data = load_image_catalog("fashion-mnist")
    rng = np.random.default_rng(seed)
    folder = root / "standin-xray"
    traffic: list[tuple[bytes, str]] = []
    for c, name in enumerate((POSITIVE, NEGATIVE)):
        label = data.classes.index(_SOURCE[name])
        train_pool = rng.permutation(np.flatnonzero((data.labels == label) & (data.splits == "train")))
        test_pool = rng.permutation(np.flatnonzero((data.labels == label) & (data.splits == "test")))
        n_train, n_val, n_traffic = sizes.train[c], sizes.val[c], sizes.traffic[c]
        parts = {
            "train": train_pool[:n_train],
            "val": train_pool[n_train : n_train + n_val],
            "test": test_pool[: sizes.test[c]],
        }
        for split, idx in parts.items():
            out = folder / split / name
            if out.is_dir() and len(list(out.glob("*.png"))) == len(idx):
                continue  # written by an earlier run, with the same seed and sizes
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("*.png"):
                old.unlink()
            for i in idx:
                (out / f"{split}-{int(i):05d}.png").write_bytes(png(data.images[i]))
        start = n_train + n_val
        traffic += [(png(data.images[i]), name) for i in train_pool[start : start + n_traffic]]
    order = rng.permutation(len(traffic))
    return folder, [traffic[i] for i in order]
