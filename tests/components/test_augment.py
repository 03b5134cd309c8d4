"""Whole-batch augmentation ops against their definitions: per-image parameters, ranges, dtype and device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter
from torchvision.transforms.v2 import functional as TF

from torchkiln.components.augment import AugmentStep, build_augment
from torchkiln.components.batch_augment import (
    BatchColorJitter,
    BatchFlip,
    BatchRandomCrop,
    BatchRandomErasing,
    BatchRandomResizedCrop,
    BatchRotation,
    BatchTranslate,
    _shift_hue,
)

OPS = {
    "random_crop": BatchRandomCrop(4),
    "translate": BatchTranslate(0.2),
    "horizontal_flip": BatchFlip(0.5, dim=-1),
    "vertical_flip": BatchFlip(0.5, dim=-2),
    "random_resized_crop": BatchRandomResizedCrop((0.3, 1.0)),
    "rotation": BatchRotation(30.0),
    "color_jitter": BatchColorJitter(0.4, 0.4, 0.4, 0.1),
    "random_erasing": BatchRandomErasing(0.5),
}
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def images(n: int = 16, channels: int = 3, size: int = 16, low: int = 0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_every_op_keeps_shape_dtype_and_device_and_repeats_per_seed(name: str, dtype, device: str) -> None:
    x = images(channels=3).to(device)
    x = x if dtype == torch.uint8 else x.float() / 255
    op = OPS[name]
    out = op(x, gen(1, device))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    if dtype.is_floating_point:
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, op(x, gen(1, device)))  # same seed, same batch
    assert not torch.equal(out, op(x, gen(2, device)))  # another seed, other parameters


def test_crop_is_the_reflect_padded_image_at_an_offset_each_image_its_own() -> None:
    x, pad = images(n=12, channels=1, size=10), 3
    out = BatchRandomCrop(pad)(x, gen())
    offsets = set()
    for img, got in zip(x, out, strict=True):
        padded = F.pad(img.float()[None], (pad,) * 4, mode="reflect")[0]
        found = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if torch.equal(padded[:, i : i + 10, j : j + 10], got.float())
        ]
        assert found, "not a crop of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 6  # different images, different offsets


def test_translate_shifts_by_whole_pixels_within_range_and_fills_zeros() -> None:
    x, size = images(n=12, channels=1, size=10, low=1), 10  # no zero pixels of its own
    out = BatchTranslate(0.2)(x, gen())
    shifts = set()
    for img, got in zip(x, out, strict=True):
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                moved = torch.zeros_like(img)
                src = img[:, max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)]
                moved[:, max(0, dy) : size - max(0, -dy), max(0, dx) : size - max(0, -dx)] = src
                if torch.equal(moved, got):
                    found.append((dy, dx))
        assert found, "not a shift of at most 2 pixels"
        shifts.add(found[0])
    assert len(shifts) > 6


def test_flip_flips_each_image_on_its_own_with_probability_p() -> None:
    x = images(n=2000, channels=1, size=4)
    out = BatchFlip(0.5, dim=-1)(x, gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())  # each image is one or the other
    assert 0.45 < flipped.float().mean().item() < 0.55
    assert torch.equal(BatchFlip(0.0, dim=-2)(x, gen()), x)
    assert torch.equal(BatchFlip(1.0, dim=-2)(x, gen()), x.flip(-2))


def test_rotation_by_zero_is_the_identity_and_otherwise_matches_torchvision() -> None:
    x = images(n=6, channels=3, size=12)
    assert torch.equal(BatchRotation(0.0)(x, gen()), x)
    out = BatchRotation(30.0)(x, gen(3))
    angles = torch.rand(6, generator=gen(3)) * 60 - 30  # the op's one draw: uniform in [-30, 30]
    for img, got, angle in zip(x, out, angles.tolist(), strict=True):
        assert torch.equal(got, TF.rotate(img, angle))  # nearest, corners 0, counter-clockwise
    assert len(set(angles.tolist())) == 6


def test_resized_crop_of_the_whole_image_is_the_identity() -> None:
    x = images(n=4)
    assert torch.equal(BatchRandomResizedCrop((1.0, 1.0), (1.0, 1.0))(x, gen()), x)


def test_resized_crop_boxes_cover_the_drawn_share_of_the_image() -> None:
    ramp = torch.arange(32, dtype=torch.float32).mul(8).expand(64, 1, 32, 32)  # value = 8 x column
    out = BatchRandomResizedCrop((0.25, 0.25), (1.0, 1.0))(ramp.to(torch.uint8), gen()).float()
    spans = (out[:, 0, 16, -1] - out[:, 0, 16, 0]) / 8  # columns the box spans, as stretched
    assert torch.allclose(spans, torch.full_like(spans, 15.0), atol=1.1)  # half the width
    starts = out[:, 0, 16, 0] / 8
    assert starts.min() >= 0 and starts.max() <= 16.5 and starts.std() > 2  # anywhere, per image


def test_color_jitter_with_no_amounts_is_the_identity() -> None:
    x = images()
    assert torch.equal(BatchColorJitter(0, 0, 0, 0)(x, gen()), x)


def test_brightness_scales_each_image_by_its_own_factor_in_range() -> None:
    x = images(n=32).float() / 510 + 0.01  # in (0, 0.5]: no clamping at 1.5x
    out = BatchColorJitter(0.5, 0, 0, 0)(x, gen())
    factors = out / x  # (B, C, H, W): one value per image
    per_image = factors.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), rtol=1e-5)
    assert per_image.min() >= 0.5 - 1e-6 and per_image.max() <= 1.5 + 1e-6
    assert per_image[:, 0].std() > 0.1


def test_contrast_and_saturation_blend_toward_the_mean_and_the_grey_image() -> None:
    grey = images(n=8, channels=1).expand(8, 3, 16, 16).contiguous()
    assert torch.equal(BatchColorJitter(0, 0, 0.9, 0.3)(grey, gen()), grey)  # no colour to change
    x = images(n=8).float() / 255
    out = BatchColorJitter(0, 0.5, 0, 0)(x, gen())
    mean = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    f = (out - mean) / (x - mean)  # the contrast factor, where nothing was clamped
    unclamped = (out > 0) & (out < 1) & ((x - mean).abs() > 0.05)
    assert ((f - f.nanmedian()).abs()[unclamped] < 0.5).all()
    assert f[unclamped].min() >= 0.5 - 1e-4 and f[unclamped].max() <= 1.5 + 1e-4


def test_hue_shift_matches_torchvision() -> None:
    x = images(n=3).float() / 255
    for shift in (-0.3, 0.0, 0.2):
        want = torch.stack([TF.adjust_hue(img, shift) for img in x])
        got = _shift_hue(x, torch.full((3,), shift))
        assert torch.allclose(got, want, atol=1e-4)


def test_random_erasing_blanks_one_box_per_image_of_the_drawn_share() -> None:
    x = images(n=200, channels=1, size=20, low=1)  # no zero pixels of its own
    assert torch.equal(BatchRandomErasing(0.0)(x, gen()), x)
    out = BatchRandomErasing(1.0)(x, gen())
    erased = out == 0  # (B, 1, H, W)
    areas = erased.flatten(1).sum(1)
    assert (areas > 0).float().mean() > 0.95  # almost always a box fits within 10 draws
    for box, area in zip(erased[:, 0], areas.tolist(), strict=True):
        if area:
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert h * w == area  # one filled rectangle
            assert 0.02 * 400 - 2 * math.sqrt(400) <= area <= 0.33 * 400 + 2 * math.sqrt(400)
    half = BatchRandomErasing(0.5)(x, gen()).eq(0).flatten(1).any(1).float().mean()
    assert 0.35 < half < 0.65


STEPS = TypeAdapter(list[AugmentStep])


def test_build_augment_runs_the_batched_ops_and_the_per_image_policies_in_config_order() -> None:
    steps = STEPS.validate_python(
        [
            {"name": "random_crop"},
            {"name": "trivial_augment"},
            {"name": "rand_augment"},
            {"name": "translate"},
        ]
    )
    aug = build_augment(steps)
    assert aug is not None
    kinds = [type(s).__name__ for s in aug.stages]
    assert kinds == ["BatchRandomCrop", "Compose", "BatchTranslate"]  # the two policies in one pass
    x = images(n=4)
    assert torch.equal(aug(x, seed=5), aug(x, seed=5))
