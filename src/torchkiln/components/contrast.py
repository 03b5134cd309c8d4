"""Contrast normalization as preprocessing: CLAHE (contrast-limited adaptive histogram equalization).

Radiographs differ in exposure from machine to machine and hospital to hospital; CLAHE evens out local
contrast so that a model sees lung texture rather than the exposure setting. It is preprocessing, not
augmentation: :func:`torchkiln.components.images.to_model_input` applies it to every image on the model's
square (after the resize), in training, ``kiln predict``, the server and an exported bundle alike.

scikit-image is the optional ``medical`` extra and is imported only when CLAHE is on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchkiln.core.errors import ConfigError

INSTALL_HINT = "pip install 'torchkiln[medical]'"


def _exposure() -> Any:
    try:
        from skimage import exposure
    except ImportError:
        raise ConfigError(
            f"data.contrast: clahe needs scikit-image, which is not installed; expected the medical extra. "
            f"Fix: {INSTALL_HINT}, or set data.contrast: none."
        ) from None
    return exposure


def clahe(images: torch.Tensor, *, clip_limit: float) -> torch.Tensor:
    """CLAHE on each uint8 image, ``(C, H, W)`` or ``(N, C, H, W)`` -> the same shape, uint8.

    scikit-image's ``equalize_adapthist`` with its default tiles (an eighth of each side): grayscale as it
    is, RGB on the V channel of HSV; a flat image is left as it is. Deterministic: the same image always
    gives the same pixels.

    Args:
        images: uint8 images on the CPU.
        clip_limit: in (0, 1]; higher gives more contrast (0.01, scikit-image's default, is mild).

    Raises:
        ConfigError: scikit-image is not installed.

    Example:
        >>> clahe(torch.zeros(1, 32, 32, dtype=torch.uint8), clip_limit=0.01).shape
        torch.Size([1, 32, 32])
    """
    exposure = _exposure()
    batch = images if images.ndim == 4 else images[None]
    out = torch.empty_like(batch)
    for i, img in enumerate(batch.numpy()):  # (C, H, W)
        if img.min() == img.max():  # scikit-image would turn a flat image (a black frame) white
            out[i] = torch.from_numpy(img)
            continue
        hwc = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        eq = exposure.equalize_adapthist(hwc, clip_limit=clip_limit)  # float64 in [0, 1]
        eq = np.rint(eq * 255.0).astype(np.uint8)
        out[i] = torch.from_numpy(eq[None] if eq.ndim == 2 else eq.transpose(2, 0, 1).copy())
    return out if images.ndim == 4 else out[0]
