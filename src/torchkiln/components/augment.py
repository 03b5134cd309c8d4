"""Image augmentation from the config list: whole-batch ops, and torchvision v2 policies per image.

Every step but ``trivial_augment`` and ``rand_augment`` runs on the whole batch on the batch's device
(``components.batch_augment``), each image with its own parameters. The loader passes a seed per
``(seed, epoch, batch)``, so a resumed run augments every batch exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torchvision.transforms import v2

from torchkiln.components.batch_augment import (
    BatchColorJitter,
    BatchFlip,
    BatchOp,
    BatchRandomCrop,
    BatchRandomErasing,
    BatchRandomResizedCrop,
    BatchRotation,
    BatchTranslate,
)
from torchkiln.core.config import Strict


# --- the config: one model per step, a union tagged by ``name`` ---------------------------------
class RandomCrop(Strict):
    name: Literal["random_crop"]
    padding: Annotated[int, Field(ge=0)] = 4


class RandomResizedCrop(Strict):
    name: Literal["random_resized_crop"]
    scale: tuple[float, float] = (0.6, 1.0)


class HorizontalFlip(Strict):
    name: Literal["horizontal_flip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5


class VerticalFlip(Strict):
    name: Literal["vertical_flip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5


class Translate(Strict):
    name: Literal["translate"]
    max_shift: Annotated[float, Field(ge=0, le=0.5)] = 0.1  # a share of the image's side, each way


class Rotation(Strict):
    name: Literal["rotation"]
    degrees: Annotated[float, Field(ge=0, le=180)] = 10.0


class ColorJitter(Strict):
    name: Literal["color_jitter"]
    brightness: Annotated[float, Field(ge=0)] = 0.2
    contrast: Annotated[float, Field(ge=0)] = 0.2
    saturation: Annotated[float, Field(ge=0)] = 0.2
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class TrivialAugment(Strict):
    name: Literal["trivial_augment"]


class RandAugment(Strict):
    name: Literal["rand_augment"]
    num_ops: Annotated[int, Field(ge=1)] = 2
    magnitude: Annotated[int, Field(ge=0, le=30)] = 9


class RandomErasing(Strict):
    name: Literal["random_erasing"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.25


AugmentStep = Annotated[
    RandomCrop
    | RandomResizedCrop
    | HorizontalFlip
    | VerticalFlip
    | Translate
    | Rotation
    | ColorJitter
    | TrivialAugment
    | RandAugment
    | RandomErasing,
    Field(discriminator="name"),
]


# --- the augmentation ---------------------------------------------------------------------------
PER_IMAGE = ("trivial_augment", "rand_augment")  # policies with no batched version: v2, image by image


class Augment:
    """The configured augmentation, applied to a batch ``(B, C, S, S)`` on whatever device it is on.

    Batched steps draw each image's parameters from one generator on the batch's device, seeded with
    the batch's seed. The per-image v2 policies draw from the CPU's global RNG, which is forked and
    seeded with the same seed around the call, so the caller's RNG stream is left as it was. Config
    order is kept.
    """

    def __init__(self, stages: list[BatchOp | v2.Compose]) -> None:
        self.stages = stages
        self.per_image = any(isinstance(s, v2.Compose) for s in stages)

    def __call__(self, x: torch.Tensor, *, seed: int) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(seed)
        with _seeded_global_rng(seed) if self.per_image else contextlib.nullcontext():
            for stage in self.stages:
                per_image = isinstance(stage, v2.Compose)
                x = torch.stack([stage(img) for img in x]) if per_image else stage(x, g)
        return x


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """The CPU's global RNG, seeded with ``seed`` inside and as it was after: v2 draws its parameters
    there, whatever the images' device. The CUDA generators are left alone (dropout draws from them)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def build_augment(steps: Sequence[AugmentStep]) -> Augment | None:
    """Build the augmentation for image batches ``(B, C, S, S)`` from the config list (None: no steps).

    Example:
        >>> aug = build_augment([HorizontalFlip(name="horizontal_flip")])
        >>> aug(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), seed=0).shape
        torch.Size([4, 1, 28, 28])
    """
    if not steps:
        return None
    stages: list[BatchOp | v2.Compose] = []
    for s in steps:
        if s.name in PER_IMAGE:
            if stages and isinstance(stages[-1], v2.Compose):  # consecutive policies: one pass
                stages[-1] = v2.Compose([*stages[-1].transforms, _v2_policy(s)])
            else:
                stages.append(v2.Compose([_v2_policy(s)]))
        else:
            stages.append(_batch_op(s))
    return Augment(stages)


def _batch_op(s: AugmentStep) -> BatchOp:
    match s:
        case RandomCrop():
            return BatchRandomCrop(s.padding)
        case RandomResizedCrop():
            return BatchRandomResizedCrop(s.scale)
        case HorizontalFlip():
            return BatchFlip(s.p, dim=-1)
        case VerticalFlip():
            return BatchFlip(s.p, dim=-2)
        case Translate():
            return BatchTranslate(s.max_shift)
        case Rotation():
            return BatchRotation(s.degrees)
        case ColorJitter():
            return BatchColorJitter(s.brightness, s.contrast, s.saturation, s.hue)
        case RandomErasing():
            return BatchRandomErasing(s.p)
    raise AssertionError(s.name)  # unreachable: the policies are handled by the caller


def _v2_policy(s: AugmentStep) -> torch.nn.Module:
    if isinstance(s, RandAugment):
        return v2.RandAugment(num_ops=s.num_ops, magnitude=s.magnitude)
    return v2.TrivialAugmentWide()
