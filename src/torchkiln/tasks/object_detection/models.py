"""Detectors: torchvision's Faster R-CNN on three FPN backbones, and the model the bundle holds.

Every detector is a :class:`torchvision.models.detection.FasterRCNN` whose backbone is a feature
pyramid over four strides (4, 8, 16, 32) plus a pooled fifth level, so one anchor size per level:

- ``fasterrcnn_lite0_fpn``: EfficientNet-Lite0 with the packaged ImageNet weights (``pretrained: true``),
  the offline pretrained option (no COCO weights can be downloaded here);
- ``fasterrcnn_mobilenet_v3_fpn``: torchvision's MobileNetV3-Large, from scratch;
- ``fasterrcnn_resnet_fpn``: torchvision's ResNet-18/34/50 (``depth``), from scratch; ``pretrained`` may be
  the path of a COCO-trained ``fasterrcnn_resnet50_fpn`` state dict, whose box predictor is refit.

Images are not resized: the detector sees them at their own resolution (:class:`NativeTransform`), as
aerial and microscope images need, where an object's size in pixels is what the anchors are chosen for.
:class:`DetectorModel` is what the bundle stores. It takes uint8 images, cuts large ones into tiles,
and returns fixed-shape rows ``(x1, y1, x2, y2, score, label)``, so batching, the prediction log and the
server handle it like any other model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import batched_nms
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from torchkiln.components.efficientnet_lite import (
    PRETRAINED_STATS,
    lite0,
    lite0_weights_file,
    lite_stages,
)
from torchkiln.components.models import load_backbone_weights, load_state_file, register_model
from torchkiln.core.errors import ConfigError

TASK = "object-detection"
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
OUTPUT_COLUMNS = ("x1", "y1", "x2", "y2", "score", "label")  # one row per box; label -1 pads


class NativeTransform(GeneralizedRCNNTransform):
    """torchvision's batching and normalization with a fixed zoom instead of its resize to 800 px.

    ``scale`` 1 keeps each image's own pixels; 2 doubles its sides, which gives objects of 10 to 30 px
    four times the pixels in the backbone. Boxes come back in the input's pixels either way
    (torchvision's ``postprocess`` maps them to the original size).
    """

    scale: float = 1.0

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.scale == 1.0:
            return image, target
        h, w = image.shape[-2:]
        size = [max(1, int(h * self.scale + 0.5)), max(1, int(w * self.scale + 0.5))]  # traceable
        image = nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            target = {**target, "boxes": resize_boxes(target["boxes"], (h, w), (size[0], size[1]))}
        return image, target


def freeze_batchnorm_statistics(module: nn.Module) -> None:
    """Keep the BatchNorm layers of ``module`` in eval mode: pretrained statistics, trainable affine."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _fpn(body: nn.Module, return_layers: dict[str, str], in_channels: list[int], width: int) -> nn.Module:
    return BackboneWithFPN(body, return_layers, in_channels, width, extra_blocks=LastLevelMaxPool())


def _detector(
    backbone: nn.Module,
    *,
    num_classes: int,
    anchor_sizes: Sequence[int],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    max_detections: int,
    tile_size: int,
) -> FasterRCNN:
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in anchor_sizes), aspect_ratios=(ASPECT_RATIOS,) * len(anchor_sizes)
    )
    # Proposal counts scale with the tile: a 512 px tile of tree crowns holds up to ~150 objects.
    scale = max(1.0, (tile_size / 512) ** 2)
    net = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,  # + background
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=int(2000 * scale),
        rpn_post_nms_top_n_train=int(1000 * scale),
        rpn_pre_nms_top_n_test=int(1000 * scale),
        rpn_post_nms_top_n_test=int(500 * scale),
        box_batch_size_per_image=256,
        box_detections_per_img=max_detections,
        box_score_thresh=0.01,
    )
    net.transform = NativeTransform(1, 1, list(stats[0]), list(stats[1]), size_divisible=32)
    return net


@register_model(
    "fasterrcnn_lite0_fpn",
    summary="Faster R-CNN, EfficientNet-Lite0 + FPN backbone; packaged ImageNet weights (pretrained: true)",
    pretrained_stats=PRETRAINED_STATS,
    packaged_weights=True,
    in_channels=3,
    task=TASK,
)
def fasterrcnn_lite0_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[int],
    pretrained: bool | str = False,
    max_detections: int = 100,
    tile_size: int = 512,
    fpn_channels: int = 128,
    trainable_stages: int = 6,
) -> FasterRCNN:
    """EfficientNet-Lite0's stages 2, 3, 5 and 7 (strides 4, 8, 16, 32) under a feature pyramid.

    Args:
        num_classes: object classes (the background class is added).
        anchor_sizes: five anchor sizes in pixels, one per pyramid level, finest first.
        pretrained: ``True`` for the packaged ImageNet weights, a path to a state dict of the original
            EfficientNet-Lite0, or ``False``.
        max_detections: boxes kept per image (per tile when tiled).
        tile_size: the training tile side; it sizes the proposal counts.
        fpn_channels: the pyramid's width.
        trainable_stages: how many of the 8 backbone stages (stem, 7 MBConv stages) train, counted from
            the deepest; the others, and all BatchNorm statistics with pretrained weights, stay as loaded.

    Example:
        >>> net = fasterrcnn_lite0_fpn(num_classes=1, anchor_sizes=[8, 16, 32, 64, 128], pretrained=True)
    """
    net = lite0(3, 224, dropout=0.0, drop_path=0.0)
    if pretrained:
        path = lite0_weights_file() if pretrained is True else pretrained
        load_backbone_weights(net, load_state_file(path), skip_prefixes=("_fc.",))
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    body = nn.Sequential(stem, *lite_stages(net, 0.0))  # children "0" (stem) .. "7" (stage 7)
    _freeze_early(body, trainable_stages)
    backbone = _fpn(body, {"2": "0", "3": "1", "5": "2", "7": "3"}, [24, 40, 112, 320], fpn_channels)
    backbone.frozen_bn = bool(pretrained)  # type: ignore[assignment]
    stats = PRETRAINED_STATS if pretrained else IMAGENET_STATS
    return _detector(
        backbone,
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        stats=stats,
        max_detections=max_detections,
        tile_size=tile_size,
    )


@register_model(
    "fasterrcnn_mobilenet_v3_fpn",
    summary="Faster R-CNN, MobileNetV3-Large + FPN backbone (torchvision), from scratch",
    task=TASK,
)
def fasterrcnn_mobilenet_v3_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[int],
    pretrained: bool | str = False,
    max_detections: int = 100,
    tile_size: int = 512,
    fpn_channels: int = 128,
) -> FasterRCNN:
    """MobileNetV3-Large's last block at each stride (4, 8, 16, 32) under a feature pyramid.

    ``pretrained`` may be the path of a state dict of torchvision's ``mobilenet_v3_large`` classifier
    (ImageNet), whose ``features`` are loaded; there are no packaged weights.

    Example:
        >>> net = fasterrcnn_mobilenet_v3_fpn(num_classes=2, anchor_sizes=[16, 32, 64, 128, 256])
    """
    if pretrained is True:
        raise ConfigError(_NO_PACKAGED.format(name="fasterrcnn_mobilenet_v3_fpn"))
    classifier = tvm.mobilenet_v3_large()
    if pretrained:
        load_backbone_weights(classifier, load_state_file(pretrained), skip_prefixes=("classifier.",))
    body = classifier.features
    backbone = _fpn(body, {"3": "0", "6": "1", "12": "2", "16": "3"}, [24, 40, 112, 960], fpn_channels)
    return _detector(
        backbone,
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        stats=IMAGENET_STATS,
        max_detections=max_detections,
        tile_size=tile_size,
    )


@register_model(
    "fasterrcnn_resnet_fpn",
    summary="Faster R-CNN, ResNet-18/34/50 + FPN backbone (torchvision); a local COCO state dict loads",
    task=TASK,
)
def fasterrcnn_resnet_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[int],
    pretrained: bool | str = False,
    max_detections: int = 100,
    tile_size: int = 512,
    depth: int = 18,
    fpn_channels: int = 256,
) -> FasterRCNN:
    """ResNet's ``layer1`` to ``layer4`` (strides 4 to 32) under a feature pyramid, as torchvision builds it.

    Args:
        pretrained: the path of a COCO-trained ``fasterrcnn_resnet50_fpn`` state dict (``depth: 50``,
            ``fpn_channels: 256``): every weight loads except the box predictor's, which is refit for
            ``num_classes``; or ``False``.

    Example:
        >>> net = fasterrcnn_resnet_fpn(num_classes=3, anchor_sizes=[32, 64, 128, 256, 512], depth=50)
    """
    if depth not in (18, 34, 50):
        raise ConfigError(
            f"model.args.depth is {depth}; expected 18, 34 or 50 (ResNet-18, -34, -50). Fix model.args.depth."
        )
    if pretrained is True:
        raise ConfigError(_NO_PACKAGED.format(name="fasterrcnn_resnet_fpn"))
    resnet = getattr(tvm, f"resnet{depth}")()
    wide = 4 if depth == 50 else 1
    body_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    channels = [64 * wide, 128 * wide, 256 * wide, 512 * wide]
    backbone = _fpn(resnet, body_layers, channels, fpn_channels)
    net = _detector(
        backbone,
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        stats=IMAGENET_STATS,
        max_detections=max_detections,
        tile_size=tile_size,
    )
    if pretrained:
        load_detector_weights(net, Path(pretrained))
    return net


_NO_PACKAGED = (
    "Model '{name}' has no packaged weights (model.pretrained: true): torchvision would download them, and "
    "nothing is downloaded at run time. Fix: set model.pretrained to the path of a local weights file, use "
    "false to train from scratch, or use fasterrcnn_lite0_fpn, whose ImageNet weights are packaged."
)


def _freeze_early(body: nn.Sequential, trainable: int) -> None:
    if not 0 <= trainable <= len(body):
        raise ConfigError(
            f"model.args.trainable_stages is {trainable}; expected 0 to {len(body)} (the backbone's stages). "
            f"Fix model.args.trainable_stages."
        )
    for stage in list(body)[: len(body) - trainable]:
        stage.requires_grad_(False)


def load_detector_weights(net: FasterRCNN, path: Path) -> list[str]:
    """Load a full detector state dict (e.g. COCO ``fasterrcnn_resnet50_fpn``), except weights whose shape
    differs (the box predictor of another class count). Returns the keys left at their initial values.

    Raises:
        ConfigError: the file cannot be read, or fits no part of the detector (a different architecture).
    """
    state = load_state_file(path)
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < len(own) // 2:
        raise ConfigError(
            f"Weights file '{path}' fits {len(fitting)} of the detector's {len(own)} tensors; expected a "
            f"state dict of the same architecture (torchvision fasterrcnn_resnet50_fpn for depth 50 with "
            f"fpn_channels 256). Check model.args.depth and the file."
        )
    net.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows ``(x0, y0, x1, y1)`` of at most ``tile`` pixels covering the image, neighbours overlapping by
    about ``overlap`` of a tile; one window when the image fits.

    Example:
        >>> tile_windows(400, 1000, 512, 0.25)
        [(0, 0, 512, 400), (244, 0, 756, 400), (488, 0, 1000, 400)]
    """

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        stride = max(1, int(tile * (1 - overlap)))
        n = math.ceil((size - tile) / stride) + 1
        return [round(i * (size - tile) / (n - 1)) for i in range(n)]

    return [
        (x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)
    ]


class DetectorModel(nn.Module):
    """What the bundle holds: uint8 images in, detections out, large images predicted tile by tile.

    - Training: ``model(images, targets)`` with lists of uint8 ``(3, H, W)`` tiles and their targets
      (``boxes`` absolute ``xyxy``, ``labels`` 1..K) returns torchvision's loss dict.
    - Inference: ``model(x)`` with uint8 ``(B, 3, H, W)`` (images padded at the bottom and right) returns
      ``(B, max_detections, 6)`` rows ``(x1, y1, x2, y2, score, label)`` in the input's pixels, best first;
      ``label`` is 0..K-1, and -1 on padding rows. An image larger than ``tile_size`` is cut into
      overlapping tiles; each tile keeps the boxes whose centre lies in its own share of the overlap, and
      non-maximum suppression per class merges what is left.
    """

    def __init__(
        self,
        net: FasterRCNN,
        *,
        tile_size: int,
        tile_overlap: float,
        max_detections: int,
        merge_iou: float = 0.5,
        tiles_per_pass: int = 4,
    ) -> None:
        super().__init__()
        self.net = net
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.max_detections, self.merge_iou, self.tiles_per_pass = max_detections, merge_iou, tiles_per_pass

    def train(self, mode: bool = True) -> DetectorModel:
        super().train(mode)
        if mode and getattr(self.net.backbone, "frozen_bn", False):
            freeze_batchnorm_statistics(self.net.backbone.body)
        return self

    def forward(self, x: Any, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if self.training:
            return self.net([img.float().div(255) for img in x], targets)
        return self.detect(x)[0]

    def detect(self, x: torch.Tensor, *, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rows (B, max_detections, 6), features (B, D) or None)``; features are the backbone's deepest
        map, averaged over each image's pixels and tiles (the drift monitor's embedding)."""
        b, _, h, w = x.shape
        windows = tile_windows(h, w, self.tile_size, self.tile_overlap)
        caught: list[torch.Tensor] = []
        hook = None
        if features:
            hook = self.net.backbone.body.register_forward_hook(
                lambda _m, _i, out: caught.append(next(reversed(out.values())).float().mean(dim=(2, 3)))
            )
        try:
            crops = [(i, win) for i in range(b) for win in windows]
            found: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(b)]
            for start in range(0, len(crops), self.tiles_per_pass):
                part = crops[start : start + self.tiles_per_pass]
                images = [x[i, :, y0:y1, x0:x1].float().div(255) for i, (x0, y0, x1, y1) in part]
                for (i, win), det in zip(part, self.net(images), strict=True):
                    found[i].append(self._own_share(det, win, windows, h, w))
        finally:
            if hook is not None:
                hook.remove()
        rows = torch.stack([self._merge(parts, len(windows) > 1) for parts in found])
        if not features:
            return rows, None
        pooled = torch.cat(caught).view(b, len(windows), -1).mean(dim=1)
        return rows, pooled

    def _own_share(
        self,
        det: dict[str, torch.Tensor],
        win: tuple[int, int, int, int],
        windows: list[tuple[int, int, int, int]],
        h: int,
        w: int,
    ) -> dict[str, torch.Tensor]:
        x0, y0, x1, y1 = win
        shift = torch.tensor([x0, y0, x0, y0], dtype=det["boxes"].dtype, device=det["boxes"].device)
        boxes = det["boxes"] + shift
        if len(windows) == 1:
            return {**det, "boxes": boxes}
        # A tile owns the boxes centred in its share: up to the middle of each overlap with a neighbour.
        half = self.tile_size * self.tile_overlap / 2
        lo_x = x0 + half if x0 > 0 else 0.0
        lo_y = y0 + half if y0 > 0 else 0.0
        hi_x = x1 - half if x1 < w else float(w)
        hi_y = y1 - half if y1 < h else float(h)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (cx >= lo_x) & (cx <= hi_x) & (cy >= lo_y) & (cy <= hi_y)
        return {"boxes": boxes[keep], "scores": det["scores"][keep], "labels": det["labels"][keep]}

    def _merge(self, parts: list[dict[str, torch.Tensor]], tiled: bool) -> torch.Tensor:
        boxes = torch.cat([p["boxes"] for p in parts])
        scores = torch.cat([p["scores"] for p in parts])
        labels = torch.cat([p["labels"] for p in parts])
        if tiled and len(boxes):
            keep = batched_nms(boxes, scores, labels, self.merge_iou)
        else:
            keep = torch.argsort(scores, descending=True)
        keep = keep[: self.max_detections]
        out = torch.zeros(self.max_detections, 6, dtype=torch.float32, device=boxes.device)
        out[:, 5] = -1
        n = len(keep)
        out[:n, :4] = boxes[keep].float()
        out[:n, 4] = scores[keep].float()
        out[:n, 5] = (labels[keep] - 1).float()  # torchvision's 1..K -> 0..K-1
        return out


def anchor_sizes_for(sizes: torch.Tensor) -> list[int]:
    """Five anchor sizes for boxes of ``sizes`` (``sqrt(w * h)`` in pixels): geometric steps from the 2nd to
    the 98th percentile, so the pyramid's levels cover the boxes this data set has.

    Example:
        >>> anchor_sizes_for(torch.tensor([8.0, 16.0, 30.0, 64.0]))
        [8, 14, 23, 38, 62]
    """
    if not len(sizes):
        return [16, 32, 64, 128, 256]
    lo, hi = torch.quantile(sizes.float(), torch.tensor([0.02, 0.98])).tolist()
    lo, hi = max(lo, 4.0), max(hi, lo * 2)
    ratio = (hi / lo) ** 0.25
    out: list[int] = []
    for i in range(5):
        s = max(round(lo * ratio**i), (out[-1] + 1) if out else 2)
        out.append(int(s))
    return out
