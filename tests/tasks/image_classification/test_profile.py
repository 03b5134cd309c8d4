"""The image check: mode (grayscale vs colour) and size, against the training images' raw form."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from torchkiln.tasks.base import InputWarning
from torchkiln.tasks.image_classification.profile import array_profile, image_warnings, raw_profile


def encoded(width: int, height: int, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_colour_image_for_a_grayscale_model_is_far_in_mode_and_size() -> None:
    profile = array_profile(100, 28, 28, 1)  # Fashion-MNIST-like
    assert image_warnings(profile, encoded(640, 480, "RGB")) == [
        InputWarning("mode", "mode RGB, trained on L"),
        InputWarning("size", "size 640x480, trained on 28x28"),
    ]
    assert image_warnings(profile, np.zeros((28, 56), dtype=np.uint8)) == []  # twice as wide: not far


def test_alpha_and_palette_modes_are_not_far_from_their_colour_kind() -> None:
    profile = raw_profile([(30, 20, "RGB"), (40, 24, "RGB"), (36, 36, "RGBA")])
    assert profile["modes"] == {"RGB": 2, "RGBA": 1}
    assert image_warnings(profile, encoded(32, 32, "P")) == []
    assert image_warnings(profile, Image.new("LA", (32, 32))) == [
        InputWarning("mode", "mode LA, trained on RGB/RGBA")
    ]
    assert image_warnings(profile, encoded(100, 30, "RGB")) == [
        InputWarning("size", "size 100x30, trained on 30-40 x 20-36")
    ]


def test_an_unreadable_input_or_an_empty_profile_flags_nothing() -> None:
    assert image_warnings(array_profile(10, 8, 8, 1), b"not an image") == []
    assert image_warnings({}, encoded(640, 480, "RGB")) == []
