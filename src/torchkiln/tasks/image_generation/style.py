"""Neural style transfer: repaint a content image in the style of another, by optimizing its pixels.

There is no training: each call optimizes one image against the frozen EfficientNet-Lite0 ImageNet
features (Gatys et al., 2016). The content loss keeps one deeper block's features close to the content
image's; the style loss matches the Gram matrices of several blocks' features to the style image's; a
total-variation loss keeps the pixels smooth.

EfficientNet, like ResNet, has residual blocks whose outputs are peaky (a few large values per channel,
std 7 to 10, maxima 34 to 60 on a photo); Wang et al. argue such peaks dominate plain Gram matrices.
``mode="swag"`` applies Wang et al.'s fix (CVPR 2021, "Rethinking and Improving the Robustness of Image
Style Transfer"): a softmax with a temperature before the Gram matrix ("stylization with activation
smoothing"). docs/tasks/generation.md compares the two (bench/style_transfer.py).

Example:
    >>> result = stylize("photo.jpg", "painting.jpg", size=256)
    >>> Path("out.png").write_bytes(result.png())
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from torchkiln.components.efficientnet_lite import efficientnet_lite0_imagenet
from torchkiln.components.images import FORMAT_NAMES, ImageLike, image_tensor, peek_image
from torchkiln.core.errors import ConfigError, DataError, did_you_mean
from torchkiln.engine.precision import resolve_device

Mode = Literal["gram", "swag"]
OptimizerName = Literal["lbfgs", "adam"]
MODES: tuple[str, ...] = ("gram", "swag")
OPTIMIZERS: tuple[str, ...] = ("lbfgs", "adam")
SIZE_RANGE = (32, 1024)  # the output's longer side, in pixels
STEPS_RANGE = (1, 2000)
WEIGHT_MAX = 1e6  # each loss weight is in [0, WEIGHT_MAX]
# Blocks of EfficientNet-Lite0's 16 (``net._blocks``), by their output stride at the input: 0 (16 ch, /2),
# 2 (24 ch, /4), 4 (40 ch, /8), 7 (80 ch, /16), 10 (112 ch, /16). Style spans fine to coarse textures;
# content is one deeper block, which keeps the layout but not the colours and strokes.
STYLE_LAYERS = (0, 2, 4, 7, 10)
CONTENT_LAYER = 7
# SWAG's softmax temperature, in units of the block outputs (std 7 to 10): at 1 each channel's softmax is
# nearly one-hot, the peakiness SWAG removes; 8 left the style loss at 2-5x lower after 100 steps, 16 and
# 32 at 12-62x (a sweep on the bench's 3 pairs, line-searched L-BFGS); far above, nearly linear.
SWAG_TEMPERATURE = 16.0
ADAM_LR = 0.1  # in logits; at 0.03, 200 steps cut astronaut/brick's style loss 11x (L-BFGS: 18x)
LBFGS_LR, LBFGS_HISTORY = 1.0, 20
INIT_NOISE = 0.1  # std of the start image's seeded noise (what ``seed`` changes), in logits
DEFAULTS = {"steps": 200, "size": 256, "content_weight": 1.0, "style_weight": 10.0, "tv_weight": 1.0}

Losses = dict[str, float]  # "content", "style", "tv" (unweighted) and "total" (weighted sum)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices of ``(B, C, H, W)`` features: ``(B, C, C)``, averaged over the H*W positions.

    Example:
        >>> gram(torch.ones(1, 2, 3, 3))  # tensor([[[1., 1.], [1., 1.]]])
    """
    flat = features.flatten(2)  # (B, C, N)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def swag(features: torch.Tensor, temperature: float = SWAG_TEMPERATURE) -> torch.Tensor:
    """SWAG's activation smoothing: a softmax over each channel's spatial positions, times their number N.

    The scale N makes a uniform channel all ones, so :func:`gram` of the result is about 1 whatever the
    image size (the content and style images may differ in size). Per channel, a channel's mean drops
    out (a softmax ignores a shift), and with it most of the colour: results keep the content's colours.
    (Wang et al.'s reference code takes one softmax over all C*H*W activations instead.)

    Example:
        >>> swag(torch.zeros(1, 1, 2, 2))  # uniform: tensor([[[[1., 1.], [1., 1.]]]])
    """
    b, c, h, w = features.shape
    soft = torch.softmax(features.flatten(2) / temperature, dim=-1)  # (B, C, N), each row sums to 1
    return (soft * (h * w)).view(b, c, h, w)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels of ``(B, 3, H, W)`` images in [0, 1]."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


class StyleFeatures(nn.Module):
    """The stem and first blocks of EfficientNet-Lite0 (ImageNet), frozen: images -> features per block."""

    def __init__(self, net: nn.Module, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks[: max(layers) + 1]
        self.layers = layers
        self.requires_grad_(False).eval()

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """``image``: ``(B, 3, H, W)`` RGB in [0, 1] -> {block index: ``(B, C, H/s, W/s)``}."""
        x = self.stem((image - 0.5) / 0.5)  # the packaged weights' normalization: mean = std = 0.5
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)  # eval mode: no drop-connect
            if i in self.layers:
                out[i] = x
        return out


@lru_cache(maxsize=4)
def style_features(device: str) -> StyleFeatures:
    """The frozen feature network on ``device``, built once per device (read-only, so threads share it)."""
    return StyleFeatures(efficientnet_lite0_imagenet(), (*STYLE_LAYERS, CONTENT_LAYER)).to(device)


@dataclass
class StyleResult:
    """What :func:`stylize` returns.

    ``losses_start`` and ``losses_end`` hold the content, style and tv losses (unweighted: relative
    squared errors, see :func:`stylize`) and the weighted total. ``history[i]`` holds those of the image
    after ``i`` steps, so ``history[0]`` is ``losses_start``; ``losses_end`` is the returned image's.
    """

    image: np.ndarray  # uint8 (H, W, 3)
    losses_start: Losses
    losses_end: Losses
    history: list[Losses] = field(repr=False)
    steps: int
    seconds: float
    mode: str
    optimizer: str

    def png(self) -> bytes:
        """The image as PNG file bytes."""
        buf = io.BytesIO()
        Image.fromarray(self.image).save(buf, format="PNG")
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the image as a PNG file at ``path``; returns the path."""
        path = Path(path)
        path.write_bytes(self.png())
        return path


def check_options(*, steps: int, size: int, weights: Mapping[str, float], mode: str, optimizer: str) -> None:
    """Refuse an option out of its range before any compute, naming the parameter and its valid values.

    ``weights``: {"content": content_weight, "style": style_weight, "tv": tv_weight}.

    Raises:
        ConfigError: e.g. "The 'size' parameter of stylize must be an int in [32, 1024]. Got 8 instead. ..."
    """
    ranges = {
        "steps": (steps, STEPS_RANGE, "the optimization steps; 200 suits 256 px"),
        "size": (size, SIZE_RANGE, "the output's longer side in pixels; 256 takes about 8 s on 2 CPU cores"),
    }
    for name, (value, (lo, hi), what) in ranges.items():
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(
                f"The '{name}' parameter of stylize must be an int in [{lo}, {hi}]. Got {value!r} instead. "
                f"It is {what}."
            )
    for key, value in weights.items():
        name = f"{key}_weight"
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= WEIGHT_MAX:
            raise ConfigError(
                f"The '{name}' parameter of stylize must be a float in [0, {WEIGHT_MAX:g}]. Got {value!r} "
                f"instead. Use 0 to switch its loss off; the defaults are {_default_weights()}."
            )
    for name, value, choices in (("mode", mode, MODES), ("optimizer", optimizer, OPTIMIZERS)):
        if value not in choices:
            raise ConfigError(
                f"The '{name}' parameter of stylize must be one of {', '.join(choices)}. Got {value!r} "
                f"instead.{did_you_mean(str(value), choices)}"
            )


def _default_weights() -> str:
    return ", ".join(f"{k} {DEFAULTS[k]:g}" for k in ("content_weight", "style_weight", "tv_weight"))


def load_rgb(source: ImageLike, longer_side: int, role: str = "content") -> torch.Tensor:
    """Any image (path, bytes, PIL, uint8 array) as ``(1, 3, H, W)`` float in [0, 1], its longer side
    ``longer_side``, its aspect ratio kept; ``role`` ("content", "style") names it in messages.

    Raises:
        DataError: the source is missing, not an image, or cannot be converted to RGB.
    """
    if isinstance(source, str | Path | bytes) and peek_image(source) is None:
        raise DataError(_not_an_image(source, role))
    img = Image.fromarray(image_tensor(source, channels=3).permute(1, 2, 0).numpy())  # any mode -> RGB
    scale = longer_side / max(img.size)
    w, h = (max(1, round(side * scale)) for side in img.size)
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None)  # reducing: antialiased
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def _not_an_image(source: str | Path | bytes, role: str) -> str:
    if isinstance(source, bytes):
        return (
            f"The {role} image ({len(source):,} bytes) is not an image file; expected the bytes of a "
            f"{FORMAT_NAMES} file. Pass the file's bytes as they are (not decoded pixels or text)."
        )
    if not Path(source).is_file():
        return f"The {role} image '{source}' does not exist or is not a file. Check the path."
    return (
        f"The {role} image '{source}' is not an image file that can be read; expected a {FORMAT_NAMES} "
        f"file. Convert it to PNG or JPEG, or pass another file."
    )


def stylize(
    content: ImageLike,
    style: ImageLike,
    *,
    steps: int = DEFAULTS["steps"],
    size: int = DEFAULTS["size"],
    content_weight: float = DEFAULTS["content_weight"],
    style_weight: float = DEFAULTS["style_weight"],
    tv_weight: float = DEFAULTS["tv_weight"],
    mode: Mode = "swag",
    optimizer: OptimizerName = "lbfgs",
    seed: int = 0,
    device: str = "cpu",
    tensorboard_dir: str | Path | None = None,
    on_step: Callable[[int, Losses], None] | None = None,
) -> StyleResult:
    """Repaint ``content`` in the style of ``style``: optimize the pixels of an image, starting from the
    content image (plus a little seeded noise), for ``steps`` steps.

    The output keeps the content's aspect ratio, its longer side ``size`` pixels; the style image is
    resized the same way (the Gram matrices are averages over positions, so sizes need not match).
    Losses are relative: content = mean squared feature error / mean square of the content features;
    style = the same for the Gram matrices, averaged over the 5 style blocks; tv = see
    :func:`total_variation`. The total is ``content_weight * content + style_weight * style +
    tv_weight * tv``.

    Args:
        content, style: a path, encoded bytes, a PIL image or a uint8 ``(H, W, 3)`` array.
        steps: optimizer steps (one L-BFGS iteration or one Adam update each), 1 to 2000.
        size: the output's longer side in pixels, 32 to 1024.
        content_weight, style_weight, tv_weight: the loss weights, >= 0.
        mode: ``"swag"`` (softmax-smoothed Gram matrices) or ``"gram"`` (plain Gram matrices).
        optimizer: ``"lbfgs"`` (fewer steps, more work each) or ``"adam"``.
        seed: of the start image's noise; the same seed gives the same image on the same machine.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU when there is one); fp32.
        tensorboard_dir: a TensorBoard folder: the losses after every step, the image 10 times a run.
        on_step: called after every step with (step from 1, its losses).

    Returns:
        A :class:`StyleResult`: the uint8 image, the losses at start and end, their history, the time.

    Raises:
        ConfigError: an option out of range, a device this machine lacks, or TensorBoard asked for but
            not installed.
        DataError: ``content`` or ``style`` is missing or not an image.

    Example:
        >>> result = stylize("photo.jpg", "painting.jpg", steps=200, size=256)
        >>> result.losses_end["style"] / result.losses_start["style"]
        0.03
    """
    weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}
    check_options(steps=steps, size=size, weights=weights, mode=mode, optimizer=optimizer)
    where = resolve_device(device, setting="The 'device' parameter of stylize")
    started = time.perf_counter()
    content_img, style_img = (
        load_rgb(src, size, role).to(where) for src, role in ((content, "content"), (style, "style"))
    )
    objective = StyleObjective(style_features(str(where)), content_img, style_img, mode, weights)
    logits = _start_logits(content_img, seed)
    writer = _tensorboard(tensorboard_dir)
    history: list[Losses] = []
    every = max(1, steps // 10)  # TensorBoard gets about 10 images a run
    for step, losses in enumerate(_optimize(objective, logits, steps, optimizer), start=1):
        history.append(losses)
        if on_step is not None:
            on_step(step, losses)
        if writer is not None:  # x axis: steps done; ``losses`` are those of the image before this step
            _log(writer, step - 1, losses, torch.sigmoid(logits) if step % every == 0 else None, step)
    with torch.no_grad():
        pixels = torch.sigmoid(logits)  # (1, 3, H, W) in [0, 1]
        final = {k: float(v) for k, v in objective(pixels).items()}
    if writer is not None:
        _log(writer, steps, final, pixels if steps % every else None, steps)
        writer.close()
    image = (pixels[0] * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    return StyleResult(
        image, history[0], final, history, steps, time.perf_counter() - started, mode, optimizer
    )


class StyleObjective:
    """The weighted loss of an image against fixed content and style targets (computed once, no grad)."""

    def __init__(
        self,
        features: StyleFeatures,
        content: torch.Tensor,
        style: torch.Tensor,
        mode: str,
        weights: Mapping[str, float],
    ) -> None:
        self.features, self.mode, self.weights = features, mode, dict(weights)
        with torch.no_grad():
            content_feats = features(content)
            self.content_target = content_feats[CONTENT_LAYER]
            self.style_targets = {i: self._gram(f) for i, f in features(style).items() if i in STYLE_LAYERS}
            # Denominators, so that every block counts alike whatever its scale. Content: the mean square
            # of its features. Style: the content image's own Gram mismatch, so the style loss starts near
            # 1 and says what fraction of it is left (a floor for a style image that is the content).
            self.content_scale = self.content_target.pow(2).mean()
            self.style_scales = {
                i: F.mse_loss(self._gram(content_feats[i]), g).clamp_min(1e-6 * g.pow(2).mean())
                for i, g in self.style_targets.items()
            }

    def _gram(self, f: torch.Tensor) -> torch.Tensor:
        return gram(swag(f) if self.mode == "swag" else f)  # (1, C, C)

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image``: ``(1, 3, H, W)`` in [0, 1] -> {"content", "style", "tv", "total"} 0-d tensors."""
        feats = self.features(image)
        content = F.mse_loss(feats[CONTENT_LAYER], self.content_target) / self.content_scale
        style = sum(
            F.mse_loss(self._gram(feats[i]), g) / self.style_scales[i] for i, g in self.style_targets.items()
        ) / len(self.style_targets)
        losses = {"content": content, "style": style, "tv": total_variation(image)}
        losses["total"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses


def _start_logits(content: torch.Tensor, seed: int) -> torch.Tensor:
    """The optimized parameter: pixel logits (the image is their sigmoid, so always in [0, 1]).

    The content is clipped to [0.02, 0.98] first: a logit of a pure black or white pixel would be infinite.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(content.shape, generator=generator).to(content.device) * INIT_NOISE
    return (torch.logit(content.clamp(0.02, 0.98)) + noise).requires_grad_(True)


def _optimize(objective: StyleObjective, logits: torch.Tensor, steps: int, name: str) -> Iterator[Losses]:
    """Update ``logits`` for ``steps`` steps of one evaluation each; yield each step's losses (those of
    the image the step started from)."""
    if name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([logits], lr=ADAM_LR)
    else:  # one L-BFGS iteration per step, its curvature pairs kept in opt.state between steps; no line
        # search (it may evaluate 25 times), so every step costs one forward and backward, as Adam's does
        opt = torch.optim.LBFGS([logits], lr=LBFGS_LR, max_iter=1, history_size=LBFGS_HISTORY)
    evaluated: dict[str, torch.Tensor] = {}

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        losses = objective(torch.sigmoid(logits))
        losses["total"].backward()
        evaluated.update(losses)
        return losses["total"]

    for _ in range(steps):
        opt.step(closure)  # both optimizers call the closure once per step
        yield {k: float(v.detach()) for k, v in evaluated.items()}


def _tensorboard(log_dir: str | Path | None) -> Any:
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard_dir was given but TensorBoard is not installed. Run: pip install "
            "'torchkiln[tracking]', or leave tensorboard_dir out."
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


def _log(writer: Any, done: int, losses: Losses, pixels: torch.Tensor | None, pixels_done: int) -> None:
    """The losses of the image after ``done`` steps; ``pixels``, the image after ``pixels_done`` steps."""
    for key, value in losses.items():
        writer.add_scalar(f"stylize/{key}", value, done)
    if pixels is not None:
        writer.add_image("stylize/image", pixels[0].detach().cpu(), pixels_done)
