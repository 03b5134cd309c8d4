"""CLAHE as preprocessing: deterministic, on the model's square, flat images untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import exposure

from torchkiln.components.contrast import clahe
from torchkiln.components.images import to_model_input
from torchkiln.core.errors import ConfigError


def low_contrast(h: int = 32, w: int = 32, *, seed: int = 0) -> np.ndarray:
    """A dim gradient with noise: values 90..140 only, as an underexposed radiograph."""
    rng = np.random.default_rng(seed)
    base = np.linspace(90, 130, w)[None, :].repeat(h, axis=0)
    return (base + rng.integers(0, 10, (h, w))).astype(np.uint8)


def test_clahe_is_scikit_images_equalize_adapthist_in_uint8() -> None:
    img = low_contrast()
    out = clahe(torch.from_numpy(img)[None], clip_limit=0.02)
    expected = np.rint(exposure.equalize_adapthist(img, clip_limit=0.02) * 255).astype(np.uint8)
    assert out.dtype == torch.uint8 and out.shape == (1, 32, 32)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    assert out.float().std() > 2 * torch.from_numpy(img).float().std()  # the contrast really went up


def test_batches_rgb_and_determinism() -> None:
    gray = torch.from_numpy(np.stack([low_contrast(seed=s) for s in range(3)]))[:, None]  # (3, 1, 32, 32)
    batch = clahe(gray, clip_limit=0.01)
    assert batch.shape == gray.shape
    assert torch.equal(batch[1], clahe(gray[1], clip_limit=0.01))
    assert torch.equal(clahe(gray, clip_limit=0.01), batch)
    rgb = gray[0].expand(3, -1, -1).contiguous()
    assert clahe(rgb, clip_limit=0.01).shape == (3, 32, 32)


def test_a_flat_image_stays_as_it_is() -> None:
    black = torch.zeros(1, 16, 16, dtype=torch.uint8)  # scikit-image alone would return it white
    assert torch.equal(clahe(black, clip_limit=0.01), black)


def test_to_model_input_applies_it_after_the_crop(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(low_contrast(48, 64)).save(path)
    plain = to_model_input(path, size=24, channels=1)
    assert torch.equal(to_model_input(path, size=24, channels=1, clahe=0.01), clahe(plain, clip_limit=0.01))
    assert not torch.equal(to_model_input(path, size=24, channels=1, clahe=0.01), plain)


def test_without_scikit_image_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ConfigError) as err:
        clahe(torch.zeros(1, 8, 8, dtype=torch.uint8), clip_limit=0.01)
    assert str(err.value) == (
        "data.contrast: clahe needs scikit-image, which is not installed; expected the medical extra. "
        "Fix: pip install 'torchkiln[medical]', or set data.contrast: none."
    )
