"""Grad-CAM and Grad-CAM++: where in an image a CNN found its evidence for one class.

Both weigh the feature maps ``A`` (B, K, h, w) of one convolutional layer by how much the class score
``y_c`` grows with them, sum over the K maps and keep the positive part, so a heatmap marks the places
whose features raised that class's score:

- Grad-CAM (Selvaraju et al., 2017): ``w_k = mean_ij dy_c/dA_kij``;
- Grad-CAM++ (Chattopadhay et al., 2018): ``w_k = sum_ij a_kij relu(dy_c/dA_kij)``, with per-position
  weights ``a = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (``g`` the gradient), which spreads the heat over
  several instances of a class where Grad-CAM tends to mark one.

The map (h, w) is resized to the input's size (bilinear) and divided by its maximum: 1 marks this
image's strongest evidence, so two heatmaps' values do not compare. The layer's coarse grid (a 224-pixel
input gives 7 x 7 after five halvings) bounds how precise a heatmap can be.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from torchkiln.core.errors import PredictError

METHODS = ("gradcam", "gradcam++")
# None: each input's predicted class (argmax); a callable maps the outputs (B, K) to the classes (B,)
Target = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class CamResult:
    """What :func:`class_activation_maps` returns, all on the CPU.

    Attributes:
        heatmaps: ``(B, H, W)`` float32 in [0, 1] at the input's size; all zeros where no position
            raised the class's score.
        targets: ``(B,)`` int64, the class each heatmap explains.
        outputs: ``(B, num_classes)`` the model's outputs (logits) for the inputs.
    """

    heatmaps: Tensor
    targets: Tensor
    outputs: Tensor


def check_method(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`; else a PredictError listing them."""
    if method not in METHODS:
        raise PredictError(
            f"Unknown explanation method '{method}'. Expected one of {', '.join(METHODS)}. Pick one of them "
            f"(--method on the command line, method= in Python)."
        )
    return method


def last_conv_block(blocks: Sequence[nn.Module], model: str) -> nn.Module:
    """The last of a backbone's ``blocks`` that holds a convolution: Grad-CAM's usual layer.

    Its output is the coarsest feature map, the most specific to classes, that still has a layout.

    Raises:
        PredictError: no block holds an ``nn.Conv2d`` (an MLP on flattened pixels), naming ``model``.

    Example:
        >>> last_conv_block(net.blocks, "resnet18")  # layer4
    """
    for block in reversed(list(blocks)):
        if any(isinstance(m, nn.Conv2d) for m in block.modules()):
            return block
    raise PredictError(
        f"Model '{model}' has no convolutional layer, so Grad-CAM has no feature map to weigh. Heatmaps need "
        f"a convolutional network (cnn, a resnet, a mobilenet or efficientnet_lite0; kiln list models): "
        f"explain a bundle trained with one of them."
    )


def class_activation_maps(
    model: nn.Module, x: Tensor, layer: nn.Module, *, target: Target = None, method: str = "gradcam"
) -> CamResult:
    """Grad-CAM (or Grad-CAM++) heatmaps of ``model`` on the batch ``x``, over ``layer``'s feature maps.

    The model runs in eval mode (its mode is restored afterwards). Gradients are taken with respect to
    ``layer``'s output only, so no parameter's ``.grad`` changes, and the forward hook is removed before
    returning. Grad is enabled locally, so a caller under ``torch.no_grad()`` or ``torch.inference_mode()``
    gets heatmaps too.

    Args:
        model: maps ``x`` to ``(B, num_classes)`` scores (logits).
        x: ``(B, C, H, W)`` model inputs, on the model's device.
        layer: a module inside ``model`` whose output is a ``(B, K, h, w)`` feature map (the last
            convolutional block, for the coarsest and most class-specific maps).
        target: the class to explain: ``None`` for each input's predicted class, an int for all inputs,
            one int per input, or a function of the outputs ``(B, K)`` that returns the classes ``(B,)``
            (a two-class model's answers at its operating point).
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        A :class:`CamResult`: heatmaps ``(B, H, W)`` in [0, 1], the explained classes and the outputs.

    Raises:
        PredictError: an unknown method, a class index out of range, or a layer whose output is not a
            feature map, or that the forward pass does not run exactly once.

    Example:
        >>> cams = class_activation_maps(model, x, model.net.blocks[-1], method="gradcam++")
        >>> cams.heatmaps.shape  # (B, H, W), as x's
    """
    check_method(method)
    caught: list[Tensor] = []

    def cut(_module: nn.Module, _args: object, out: object) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise PredictError(
                f"Grad-CAM needs a layer whose output is a feature map (B, C, H, W); the chosen "
                f"{type(_module).__name__} gives {shape}. Pick a convolutional layer of the model."
            )
        # A leaf that needs grad: the gradient stops here (no backward through the backbone, no
        # parameter grads), and a frozen backbone whose output needs no grad is explained all the same.
        a = out.detach().requires_grad_(True)
        caught.append(a)
        return a

    was_training = model.training
    handle = layer.register_forward_hook(cut)
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            outputs = model(x.clone())  # a clone: an inference-mode tensor cannot enter autograd
            if len(caught) != 1:
                raise PredictError(
                    f"Grad-CAM's layer ran {len(caught)} times in one forward pass; expected once. Pick a "
                    f"layer that the model calls once per input (a block of its backbone)."
                )
            targets = _targets(target, outputs)
            score = outputs.gather(1, targets[:, None]).sum()  # items are independent in eval mode
            (grads,) = torch.autograd.grad(score, caught[0])
    finally:
        handle.remove()
        model.train(was_training)
    cam = _weighted_maps(caught[0].detach().float(), grads.float(), method)  # (B, h, w)
    return CamResult(_normalize(cam, x.shape[-2:]).cpu(), targets.cpu(), outputs.detach().cpu())


def _targets(target: Target, outputs: Tensor) -> Tensor:
    n, k = outputs.shape[0], outputs.shape[-1]
    if target is None:
        return outputs.detach().argmax(dim=1)
    if callable(target):
        target = target(outputs.detach())
    t = torch.as_tensor(target, dtype=torch.long, device=outputs.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise PredictError(
            f"Got {t.numel()} target classes for {n} inputs; expected one class, or one per input. Pass a "
            f"single class index or a list as long as the inputs."
        )
    bad = [int(v) for v in t.tolist() if not 0 <= v < k]
    if bad:
        raise PredictError(
            f"Class index {bad[0]} is out of range: the model has {k} classes (0 to {k - 1}). Pick a class "
            f"the model was trained on."
        )
    return t.contiguous()


def _weighted_maps(a: Tensor, g: Tensor, method: str) -> Tensor:
    """``relu(sum_k w_k A_k)``: ``a`` and ``g`` are ``(B, K, h, w)``; returns ``(B, h, w)``."""
    if method == "gradcam":
        weights = g.mean(dim=(2, 3))  # (B, K)
    else:  # gradcam++, in the closed form for an exponential score (the paper's eq. 19)
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
        weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3))  # (B, K)
    return torch.relu((weights[:, :, None, None] * a).sum(dim=1))


def _normalize(cam: Tensor, size: torch.Size) -> Tensor:
    """``cam`` (B, h, w) resized to ``size`` and divided by each map's maximum: [0, 1]."""
    if tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / torch.where(peak > 0, peak, 1.0), 0.0).clamp(0.0, 1.0)


# ---- drawing ---------------------------------------------------------------------------------------


def jet(heatmap: np.ndarray) -> np.ndarray:
    """The "jet" colours of values in [0, 1]: ``(H, W)`` -> ``(H, W, 3)`` uint8 (blue, cyan, yellow, red).

    The piecewise-linear form of MATLAB's jet, so drawing needs no matplotlib.
    """
    v = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)[..., None]  # (H, W, 1)
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at v = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray | Tensor, heatmap: np.ndarray | Tensor, *, alpha: float = 0.45) -> np.ndarray:
    """The heatmap in jet colours over the image: ``(H, W, 3)`` uint8.

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4 (alpha is dropped); the image the model
            saw (after resizing and cropping), so its pixels line up with the heatmap's.
        heatmap: ``(H, W)`` values in [0, 1].
        alpha: the heatmap's weight in the blend, in [0, 1].

    Raises:
        PredictError: the image is not uint8 of such a shape, or its size differs from the heatmap's.

    Example:
        >>> rgb = overlay(image, cams.heatmaps[0])  # (H, W, 3) uint8
    """
    img = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    heat = heatmap.detach().cpu().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))):
        raise PredictError(
            f"overlay needs a uint8 image of shape (H, W) or (H, W, C) with C in 1, 3, 4; got {img.dtype} "
            f"of shape {img.shape}. A (C, H, W) model input becomes x.permute(1, 2, 0).numpy()."
        )
    if heat.shape != img.shape[:2]:
        raise PredictError(
            f"The heatmap is {heat.shape[0]}x{heat.shape[1]} but the image is {img.shape[0]}x{img.shape[1]}; "
            f"expected the same size. Overlay the image the model saw (after its resize and crop)."
        )
    if not 0.0 <= alpha <= 1.0:
        raise PredictError(
            f"The 'alpha' parameter of overlay must be a float in [0, 1]. Got {alpha} instead."
        )
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * jet(heat).astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def overlay_png(
    image: np.ndarray | Tensor, heatmap: np.ndarray | Tensor, *, alpha: float = 0.45, min_side: int = 0
) -> bytes:
    """:func:`overlay` encoded as PNG bytes; ``min_side`` enlarges a small image (crisp pixels) to at least
    that many pixels on its longer side, so a 28-pixel digit's heatmap can be seen.

    Example:
        >>> Path("heat.png").write_bytes(overlay_png(image, cams.heatmaps[0], min_side=224))
    """
    out = Image.fromarray(overlay(image, heatmap, alpha=alpha))
    longer = max(out.size)
    if min_side and longer < min_side:
        scale = -(-min_side // longer)
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
