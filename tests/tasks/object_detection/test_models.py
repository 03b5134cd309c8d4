"""The detector the bundle holds: tiles, the boxes each tile owns, and the merge; anchor sizes from data."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from torchkiln.core.errors import ConfigError
from torchkiln.tasks.object_detection.models import (
    DetectorModel,
    anchor_sizes_for,
    fasterrcnn_resnet_fpn,
    tile_windows,
)


class BrightSquares(nn.Module):
    """A detector of bright squares with torchvision's eval interface: per image, one box per bright
    region's rows and columns (each region is found whole or cut by the image edge, as a tile cuts it)."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            mask = image[0] > 0.5
            boxes = []
            seen = torch.zeros_like(mask)
            for y, x in mask.nonzero().tolist():
                if seen[y, x]:
                    continue
                x2 = x
                while x2 < mask.shape[1] and mask[y, x2]:
                    x2 += 1
                y2 = y
                while y2 < mask.shape[0] and mask[y2, x]:
                    y2 += 1
                seen[y:y2, x:x2] = True
                boxes.append([x, y, x2, y2])
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            out.append(
                {
                    "boxes": b,
                    "scores": torch.full((len(b),), 0.9),
                    "labels": torch.ones(len(b), dtype=torch.long),
                }
            )
        return out


def test_tile_windows_cover_the_image_with_overlap() -> None:
    windows = tile_windows(300, 700, 256, 0.25)
    assert windows[0][:2] == (0, 0) and windows[-1][2:] == (700, 300)
    covered = torch.zeros(300, 700, dtype=torch.bool)
    for x0, y0, x1, y1 in windows:
        assert x1 - x0 <= 256 and y1 - y0 <= 256
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({w[0] for w in windows})
    assert all(b - a <= 256 * 0.75 for a, b in itertools.pairwise(xs))  # neighbours overlap
    assert tile_windows(100, 120, 256, 0.25) == [(0, 0, 120, 100)]


def test_a_tiled_image_gives_each_object_once_and_whole() -> None:
    image = torch.zeros(1, 3, 200, 300, dtype=torch.uint8)
    squares = [
        (10, 20, 30, 40),
        (118, 60, 138, 80),
        (250, 150, 270, 170),
    ]  # the middle one crosses a tile edge
    for x1, y1, x2, y2 in squares:
        image[0, :, y1:y2, x1:x2] = 255
    model = DetectorModel(BrightSquares(), tile_size=128, tile_overlap=0.25, max_detections=10).eval()
    assert len(tile_windows(200, 300, 128, 0.25)) > 1
    rows = model(image)[0]
    found = sorted(tuple(int(v) for v in r[:4].tolist()) for r in rows if r[5] >= 0)
    assert found == sorted(squares)
    assert (rows[rows[:, 5] < 0, 4] == 0).all()  # padding rows score 0, label -1


def test_anchor_sizes_follow_the_box_sizes() -> None:
    sizes = torch.linspace(8, 64, 200)
    anchors = anchor_sizes_for(sizes)
    assert len(anchors) == 5 and anchors == sorted(anchors)
    assert 8 <= anchors[0] <= 10 and 60 <= anchors[-1] <= 64
    assert anchor_sizes_for(torch.zeros(0)) == [16, 32, 64, 128, 256]


def test_a_model_without_packaged_weights_refuses_pretrained_true() -> None:
    with pytest.raises(ConfigError) as info:
        fasterrcnn_resnet_fpn(num_classes=1, anchor_sizes=[8, 16, 32, 64, 128], pretrained=True)
    assert str(info.value) == (
        "Model 'fasterrcnn_resnet_fpn' has no packaged weights (model.pretrained: true): torchvision would "
        "download them, and nothing is downloaded at run time. Fix: set model.pretrained to the path of a "
        "local weights file, use false to train from scratch, or use fasterrcnn_lite0_fpn, whose ImageNet "
        "weights are packaged."
    )


def test_a_local_coco_state_dict_loads_all_but_the_box_predictor(tmp_path) -> None:
    from safetensors.torch import save_file

    source = fasterrcnn_resnet_fpn(num_classes=90, anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=32)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "coco.safetensors")
    net = fasterrcnn_resnet_fpn(
        num_classes=2,
        anchor_sizes=[8, 16, 32, 64, 128],
        fpn_channels=32,
        pretrained=str(tmp_path / "coco.safetensors"),
    )
    mine, theirs = net.state_dict(), source.state_dict()
    assert torch.equal(
        mine["backbone.body.layer4.1.conv2.weight"], theirs["backbone.body.layer4.1.conv2.weight"]
    )
    assert mine["roi_heads.box_predictor.cls_score.weight"].shape == (
        3,
        1024,
    )  # refit: 2 classes + background


def test_the_zoom_doubles_the_pixels_and_answers_in_the_input_pixels() -> None:
    from torchkiln.tasks.object_detection.models import IMAGENET_STATS, NativeTransform

    transform = NativeTransform(1, 1, list(IMAGENET_STATS[0]), list(IMAGENET_STATS[1]), size_divisible=32)
    transform.scale = 2.0
    image = torch.rand(3, 50, 70)
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([1])}
    batch, targets = transform.train()([image], [target])
    assert batch.image_sizes == [(100, 140)]
    assert targets[0]["boxes"].tolist() == [[20.0, 10.0, 60.0, 50.0]]
    back = transform.eval().postprocess([{"boxes": targets[0]["boxes"]}], batch.image_sizes, [(50, 70)])
    assert back[0]["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0]]
