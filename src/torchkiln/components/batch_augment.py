"""Whole-batch augmentation ops: each image gets its own random parameters, with no loop over images.

Every op takes a batch ``(B, C, H, W)`` (uint8, or float in [0, 1]) and a ``torch.Generator`` on the
batch's device, and returns a batch of the same shape, dtype and device. Parameters are drawn from that
generator only, so the same generator seed gives the same output on the same device: the loader seeds
one per ``(seed, epoch, batch)``. Crops, shifts, flips and erasing move or blank whole pixels (index
arithmetic, exact for any dtype); resized crops and rotations resample (``F.grid_sample``); colour
jitter blends in float and rounds back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


class BatchOp(Protocol):
    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor: ...


def _uniform(g: torch.Generator, shape: int | tuple[int, ...], lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=device) * (hi - lo) + lo


def _randint(g: torch.Generator, n: int, lo: int, hi: int, device) -> torch.Tensor:
    """(n,) int64 in [lo, hi], both ends included."""
    return torch.randint(lo, hi + 1, (n,), generator=g, device=device)


def _bound(x: torch.Tensor) -> float:
    return 1.0 if x.is_floating_point() else 255.0


def _back(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float result in ``like``'s dtype: rounded and clamped for integers."""
    if like.is_floating_point():
        return y.to(like.dtype)
    return y.round_().clamp_(0, 255).to(like.dtype)


def _take(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]``; rows (B, H'), cols (B, W')."""
    b, c, _, w = x.shape
    x = x.gather(2, rows[:, None, :, None].expand(b, c, rows.shape[1], w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, rows.shape[1], cols.shape[1]))


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices into an axis of length ``n``, reflected at its ends without repeating the edge
    (``padding_mode="reflect"``: -1 -> 1, n -> n - 2)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i < n, i, period - i)


@dataclass(frozen=True)
class BatchFlip:
    """Flip each image on its own with probability ``p``; ``dim`` -1 is horizontal, -2 vertical."""

    p: float
    dim: int

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = torch.rand(len(x), generator=g, device=x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(self.dim), x)


@dataclass(frozen=True)
class BatchRandomCrop:
    """Pad by ``padding`` (reflect), then crop the original size at a random offset per image: the same
    as ``v2.RandomCrop(size, padding, padding_mode="reflect")``, computed as reflected indices."""

    padding: int

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p, dev = self.padding, x.device
        oy, ox = _randint(g, n, 0, 2 * p, dev), _randint(g, n, 0, 2 * p, dev)  # (B,): offsets in the pad
        rows = _reflect(oy[:, None] + torch.arange(h, device=dev) - p, h)  # (B, H)
        cols = _reflect(ox[:, None] + torch.arange(w, device=dev) - p, w)  # (B, W)
        return _take(x, rows, cols)


@dataclass(frozen=True)
class BatchTranslate:
    """Shift each image by whole pixels, up to ``max_shift`` of its side each way; uncovered pixels are 0."""

    max_shift: float

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        my, mx = round(self.max_shift * h), round(self.max_shift * w)
        rows = torch.arange(h, device=dev) - _randint(g, n, -my, my, dev)[:, None]  # (B, H): source rows
        cols = torch.arange(w, device=dev) - _randint(g, n, -mx, mx, dev)[:, None]  # (B, W)
        out = _take(x, rows.clamp(0, h - 1), cols.clamp(0, w - 1))
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        return out * inside.to(out.dtype)


def _resample(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``x`` through per-image affine maps ``theta`` (B, 2, 3), from output to input in [-1, 1]."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return _back(y, x)


@dataclass(frozen=True)
class BatchRandomResizedCrop:
    """A box per image (area a ``scale`` share, aspect ratio log-uniform in ``ratio``), resized back to
    the full size (bilinear). As ``v2.RandomResizedCrop``, except that a box too wide or tall for the
    image is clipped to it instead of redrawn, and there is no antialiasing (the box is never larger
    than the output, so it is only ever enlarged)."""

    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev = len(x), x.device
        area = _uniform(g, n, *self.scale, dev)
        aspect = _uniform(g, n, math.log(self.ratio[0]), math.log(self.ratio[1]), dev).exp()
        bw = (area * aspect).sqrt().clamp(max=1.0)  # (B,): box width, a share of the image's
        bh = (area / aspect).sqrt().clamp(max=1.0)
        x0, y0 = (
            torch.rand(n, generator=g, device=dev) * (1 - bw),
            torch.rand(n, generator=g, device=dev) * (1 - bh),
        )
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = bw, 2 * x0 + bw - 1  # output [-1, 1] -> the box's columns
        theta[:, 1, 1], theta[:, 1, 2] = bh, 2 * y0 + bh - 1
        return _resample(x, theta, "bilinear")


@dataclass(frozen=True)
class BatchRotation:
    """Rotate each image by an angle uniform in ``[-degrees, degrees]`` about its centre; nearest
    neighbour, corners filled with 0 (``v2.RandomRotation``'s defaults)."""

    degrees: float

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = _uniform(g, n, -self.degrees, self.degrees, x.device).deg2rad()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.zeros(n, 2, 3, device=x.device)
        # In [-1, 1] coordinates a non-square image needs the aspect ratio on the off-diagonal terms.
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        return _resample(x, theta, "nearest")


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): the luma of RGB, or the image itself with one channel."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] with each image's hue turned by ``shift`` (B,) of a full turn (HSV)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), 0.0)
    d = torch.where(delta > 0, delta, 1.0)  # grey pixels: any hue, s = 0 keeps them grey
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    h = torch.where(v == r, bc - gc, torch.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + shift.view(-1, 1, 1)).remainder(1.0) * 6.0  # (B, H, W) in [0, 6)
    i = h.floor().clamp(max=5).long()
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q]).view(3, 6, *v.shape)
    return choices.gather(1, i.expand(3, 1, *i.shape)).squeeze(1).permute(1, 0, 2, 3)  # (B, 3, H, W)


@dataclass(frozen=True)
class BatchColorJitter:
    """Brightness, contrast, saturation and hue factors drawn per image, as ``v2.ColorJitter`` draws
    them, applied in this fixed order (v2 shuffles the order per call) in float, rounded once at the end.
    Saturation and hue leave one-channel images alone."""

    brightness: float
    contrast: float
    saturation: float
    hue: float

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, dev = len(x), x.shape[1], x.device
        top = _bound(x)
        y = x.float()

        def factor(amount: float) -> torch.Tensor:  # (B, 1, 1, 1)
            return _uniform(g, n, max(0.0, 1 - amount), 1 + amount, dev).view(-1, 1, 1, 1)

        if self.brightness:
            y = (y * factor(self.brightness)).clamp_(0, top)
        if self.contrast:
            f, mean = factor(self.contrast), _gray(y).mean(dim=(1, 2, 3), keepdim=True)
            y = (f * y + (1 - f) * mean).clamp_(0, top)
        if self.saturation and c == 3:
            f = factor(self.saturation)
            y = (f * y + (1 - f) * _gray(y)).clamp_(0, top)
        if self.hue and c == 3:
            y = _shift_hue(y / top, _uniform(g, n, -self.hue, self.hue, dev)) * top
        return _back(y, x)


@dataclass(frozen=True)
class BatchRandomErasing:
    """With probability ``p`` per image, set a box to 0: its area a ``scale`` share, its aspect ratio
    log-uniform in ``ratio``, up to 10 draws for one that fits (``v2.RandomErasing``'s defaults)."""

    p: float
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    tries: int = 10

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        erase = torch.rand(n, generator=g, device=dev) < self.p
        area = _uniform(g, (n, self.tries), *self.scale, dev) * (h * w)
        aspect = _uniform(g, (n, self.tries), math.log(self.ratio[0]), math.log(self.ratio[1]), dev).exp()
        eh, ew = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()  # (B, tries)
        fits = (eh < h) & (ew < w)
        first = fits.int().argmax(1, keepdim=True)  # the first draw that fits
        eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)  # (B,)
        erase &= fits.any(1)
        top = (torch.rand(n, generator=g, device=dev) * (h - eh + 1)).long()
        left = (torch.rand(n, generator=g, device=dev) * (w - ew + 1)).long()
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (B, H)
        in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (B, W)
        box = in_rows[:, None, :, None] & in_cols[:, None, None, :] & erase.view(-1, 1, 1, 1)
        return x.masked_fill(box, 0)
