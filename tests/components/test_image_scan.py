"""The image scan: digests, standardized thumbnails and their DCT block (against SciPy's), pixel figures."""

from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dctn

from torchkiln.components.doctor_data import ArrayImages
from torchkiln.components.image_scan import THUMB, scan_images


def test_thumbnails_are_standardized_and_their_block_is_the_orthonormal_dct() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 40, 40), dtype=np.uint8)
    scan = scan_images(ArrayImages(torch.from_numpy(images)), chunk=2)  # chunks of 2: 3 takes
    z = scan.thumbs.astype(np.float64)
    assert np.allclose(z.mean(axis=1), 0.0, atol=1e-3)
    assert np.allclose(np.sqrt((z**2).mean(axis=1)), 1.0, atol=1e-3)
    expected = dctn(z.reshape(5, THUMB, THUMB), type=2, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(5, 64)
    assert np.allclose(scan.coef, expected, atol=2e-3)  # the thumbnails are kept in float16


def test_pixel_figures_digests_and_flat_images() -> None:
    images = np.zeros((4, 2, 8, 8), dtype=np.uint8)
    images[1] = 255  # white and flat
    images[2, 0] = 10  # channels of 10 and 0: a flat grey of 5, though its pixels differ
    images[3, :, :4] = 255  # half white: a contrast
    scan = scan_images(ArrayImages(images))
    assert scan.flat.tolist() == [True, True, True, False]
    assert scan.low.tolist() == [0, 255, 0, 0] and scan.high.tolist() == [0, 255, 10, 255]
    assert np.allclose(scan.white, [0.0, 1.0, 0.0, 0.5])
    assert np.allclose(scan.mean[2], [10.0, 0.0]) and np.allclose(scan.square[3], [255.0**2 / 2] * 2)
    again = scan_images(ArrayImages(images.copy()))
    assert scan.digest.tolist() == again.digest.tolist()  # equal pixels, equal digests
    assert len(set(scan.digest.tolist())) == 4


def test_an_empty_source_scans_to_nothing() -> None:
    assert len(scan_images(ArrayImages(np.zeros((0, 1, 8, 8), dtype=np.uint8)))) == 0
