"""DCGAN (Radford et al., 2016) for 28-64 px images: a generator and a discriminator, optionally conditional.

The generator projects ``z`` (with a one-hot class when conditional) to a small map (7x7 for 28 and 56 px,
4x4 for 32 and 64 px), then doubles it with strided transposed convolutions, BatchNorm and ReLU up to the
image, ending in tanh. The discriminator mirrors it: strided convolutions with LeakyReLU 0.2 (BatchNorm
after the first), down to the same small map, then one logit. Conditional, it adds the projection term
of Miyato & Koyama (2018), ``<embed(y), h>``. ``spectral_norm`` constrains every discriminator layer
(Miyato et al., 2018) in place of its BatchNorm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from torchkiln.components.models import register_model
from torchkiln.core.errors import ConfigError

TASK = "image-generation"


def _layout(image_size: int) -> tuple[int, int]:
    """(the smallest map's side, how many doublings reach ``image_size``): 28 -> (7, 2), 32 -> (4, 3)."""
    start = 7 if image_size % 7 == 0 else 4
    doublings = round(math.log2(image_size / start))
    if start * 2**doublings != image_size or doublings < 2:
        raise ConfigError(
            f"The DCGAN draws images of 28, 32, 56 or 64 pixels; got image_size {image_size}. Set "
            f"data.image_size to one of them."
        )
    return start, doublings


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialization: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(w, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """``(B, latent_dim + num_classes)`` noise (and one-hot class) -> ``(B, C, S, S)`` images in [-1, 1]."""

    def __init__(self, *, latent_dim: int, num_classes: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.latent_dim, self.num_classes, self.channels, self.image_size = (
            latent_dim,
            num_classes,
            channels,
            image_size,
        )
        start, doublings = _layout(image_size)
        ch = width * 2 ** (doublings - 1)
        self.start, self.start_channels = start, ch
        self.project = nn.Sequential(
            nn.Linear(latent_dim + num_classes, ch * start * start, bias=False),
            nn.BatchNorm1d(ch * start * start),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for _ in range(doublings - 1):
            blocks += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        self.body = nn.Sequential(*blocks)
        self.to_image = nn.ConvTranspose2d(ch, channels, 4, 2, 1)
        self.feature_channels = ch

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images ``(B, C, S, S)``, the last hidden map averaged over space ``(B, width)``)."""
        h = self.project(x).view(-1, self.start_channels, self.start, self.start)  # (B, ch, s0, s0)
        h = self.body(h)  # (B, width, S/2, S/2)
        return torch.tanh(self.to_image(h)), h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


class Discriminator(nn.Module):
    """``(B, C, S, S)`` images in [-1, 1] (and labels ``(B,)`` when conditional) -> ``(B,)`` logits."""

    def __init__(self, *, num_classes: int, channels: int, image_size: int, width: int, spectral_norm: bool):
        super().__init__()
        start, doublings = _layout(image_size)
        norm = sn if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [norm(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(doublings - 1):
            layers.append(norm(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=spectral_norm)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch *= 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.logit = norm(nn.Linear(ch * start * start, 1))
        self.embed = norm(nn.Embedding(num_classes, ch * start * start)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)  # (B, F)
        out = self.logit(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs the labels: D(x, labels)")
            out = out + (self.embed(labels) * h).sum(dim=1)  # the projection term
        return out


@register_model("dcgan", summary="DCGAN generator and discriminator (28-64 px; conditional, SN)", task=TASK)
def dcgan(
    *,
    image_size: int,
    in_channels: int,
    num_classes: int,
    latent_dim: int,
    width: int = 64,
    d_width: int | None = None,
    spectral_norm: bool = False,
) -> nn.ModuleDict:
    """The two networks of a DCGAN, initialized as in the paper.

    Args:
        image_size: 28, 32, 56 or 64.
        in_channels: 1 or 3.
        num_classes: 0 for an unconditional GAN, else the classes it is conditioned on.
        latent_dim: the size of ``z``.
        width: the generator's channels before its output layer (doubled at each smaller scale).
        d_width: the discriminator's first channels (default: ``width``).
        spectral_norm: spectral normalization on every discriminator layer, in place of its BatchNorm.

    Returns:
        ``nn.ModuleDict({"generator": Generator, "discriminator": Discriminator})``.

    Example:
        >>> nets = dcgan(image_size=28, in_channels=1, num_classes=0, latent_dim=64)
        >>> nets["generator"](torch.randn(2, 64)).shape
        torch.Size([2, 1, 28, 28])
    """
    if width < 4 or (d_width is not None and d_width < 4):
        raise ConfigError(f"model.args width and d_width must be at least 4; got {width} and {d_width}.")
    g = Generator(
        latent_dim=latent_dim,
        num_classes=num_classes,
        channels=in_channels,
        image_size=image_size,
        width=width,
    )
    d = Discriminator(
        num_classes=num_classes,
        channels=in_channels,
        image_size=image_size,
        width=d_width or width,
        spectral_norm=spectral_norm,
    )
    nets = nn.ModuleDict({"generator": g, "discriminator": d})
    dcgan_init(nets)
    return nets
