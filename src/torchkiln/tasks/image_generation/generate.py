"""Drawing images from a generator bundle: the Python API under ``kiln generate``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from torchkiln.artifacts.predictor import Predictor, load_predictor
from torchkiln.core.errors import PredictError
from torchkiln.core.io import atomic_write
from torchkiln.tasks.image_generation.models import TASK as KIND
from torchkiln.tasks.image_generation.task import MAX_SEED, GenerateInput
from torchkiln.tasks.image_generation.train import to_uint8

MAX_IMAGES = 4096
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def generate_images(
    bundle: str | Path | Predictor,
    *,
    n: int = 64,
    label: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> torch.Tensor:
    """Draw ``n`` images from a generator bundle: image i from seed ``seed + i``, as the server draws it.

    Args:
        bundle: an image-generation bundle or run directory, or a predictor of one.
        n: how many images (1 to 4096).
        label: the class to draw (conditional generators only); None draws the classes in turn.
        seed: the first image's seed.
        device: auto, cpu, cuda or cuda:N.

    Returns:
        uint8 ``(n, C, S, S)`` images.

    Raises:
        PredictError: not a generator bundle, n out of range, or a label the model does not know.

    Example:
        >>> generate_images("runs/fashion-mnist-dcgan/20261205-101500", n=8, label="Bag").shape
        torch.Size([8, 1, 28, 28])
    """
    predictor = bundle if isinstance(bundle, Predictor) else load_predictor(bundle, device=device)
    kind = predictor.bundle.task.kind
    if kind != KIND:
        raise PredictError(
            f"'{predictor.bundle.path}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind} bundle; kiln "
            f"generate draws from an {KIND} bundle (a trained GAN). Pass the run directory or bundle of one."
        )
    if not 1 <= n <= MAX_IMAGES:
        raise PredictError(f"--n is {n}; expected 1 to {MAX_IMAGES} images. Ask for fewer, in several runs.")
    if not 0 <= seed <= MAX_SEED - n:
        raise PredictError(f"--seed is {seed}; expected 0 to {MAX_SEED - n} (image i uses seed + i).")
    items = [GenerateInput(seed + i, label) for i in range(n)]
    parts = []
    for start in range(0, n, predictor.batch_size):
        x = predictor.preprocess(items[start : start + predictor.batch_size])
        parts.append(to_uint8(predictor.forward(x).cpu()))
    return torch.cat(parts)


def save_grid(images: torch.Tensor, path: Path, *, nrow: int = 8, overwrite: bool = True) -> Path:
    """Write uint8 ``(N, C, H, W)`` images as one grid image (``nrow`` per row), atomically.

    Raises:
        PredictError: ``path`` is not a .png/.jpg/.webp name, or exists and ``overwrite`` is off.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    if path.suffix.lower() not in GRID_SUFFIXES:
        raise PredictError(f"--out {path}: expected an image file name ending in {', '.join(GRID_SUFFIXES)}.")
    if path.exists() and not overwrite:
        raise PredictError(f"--out {path} exists. Pass --overwrite to replace it, or choose another name.")
    grid = make_grid(images, nrow=min(nrow, len(images)), padding=2, pad_value=255)  # (3, H', W') uint8
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(_encoded(image, fmt)))
    return path


def _encoded(image: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()
