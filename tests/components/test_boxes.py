"""The internal xyxy format, the converters' round trips, the checks and their format traps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from torchkiln.components import boxes as B
from torchkiln.components.boxes import ImageBoxes, check_records, crop_boxes, to_tv_boxes
from torchkiln.core.errors import DataError


def random_xyxy(n: int, width: int, height: int, seed: int) -> torch.Tensor:
    """(n, 4) float64 valid boxes inside a width x height image."""
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.rand(n, 2, generator=g, dtype=torch.float64),
        torch.rand(n, 2, generator=g, dtype=torch.float64),
    )
    lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 1e-3
    scale = torch.tensor([width, height], dtype=torch.float64)
    return torch.cat([lo * scale, hi.clamp(max=1) * scale], dim=-1)


def record(
    boxes: list[list[float]], *, fmt: str = "csv", w: int = 200, h: int = 100, labels=None
) -> ImageBoxes:
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    names = tuple(labels) if labels is not None else ("tree",) * len(t)
    return ImageBoxes(Path("img.png"), w, h, t, names, Path("ann.csv"), fmt)


# --- converters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("to_file", "from_file"),
    [(B.xyxy_to_coco, B.coco_to_xyxy), (B.xyxy_to_voc, B.voc_to_xyxy)],
    ids=["coco", "voc"],
)
def test_absolute_formats_round_trip(seed: int, to_file, from_file) -> None:
    xyxy = random_xyxy(64, 640, 480, seed)
    torch.testing.assert_close(from_file(to_file(xyxy)), xyxy)
    file_boxes = to_file(xyxy)
    torch.testing.assert_close(to_file(from_file(file_boxes)), file_boxes)


@pytest.mark.parametrize("seed", range(5))
def test_yolo_round_trips_and_is_normalized(seed: int) -> None:
    xyxy = random_xyxy(64, 640, 480, seed)
    yolo = B.xyxy_to_yolo(xyxy, width=640, height=480)
    assert bool(((yolo >= 0) & (yolo <= 1)).all())
    torch.testing.assert_close(B.yolo_to_xyxy(yolo, width=640, height=480), xyxy)
    torch.testing.assert_close(
        B.xyxy_to_yolo(B.yolo_to_xyxy(yolo, width=640, height=480), width=640, height=480), yolo
    )


def test_known_values() -> None:
    box = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    assert B.xyxy_to_coco(box).tolist() == [[10.0, 20.0, 30.0, 40.0]]
    assert B.xyxy_to_voc(box).tolist() == [[11.0, 21.0, 40.0, 60.0]]  # 1-based: pixel 11 is the first inside
    assert B.voc_to_xyxy(torch.tensor([[1.0, 1.0, 640.0, 480.0]])).tolist() == [[0.0, 0.0, 640.0, 480.0]]
    assert B.xyxy_to_yolo(box, width=100, height=100)[0].tolist() == pytest.approx([0.25, 0.4, 0.3, 0.4])


def test_converters_take_no_boxes() -> None:
    empty = torch.zeros(0, 4)
    for convert in (B.coco_to_xyxy, B.xyxy_to_coco, B.voc_to_xyxy, B.xyxy_to_voc):
        assert convert(empty).shape == (0, 4)
    assert B.yolo_to_xyxy(empty, width=10, height=10).shape == (0, 4)


# --- torchvision -----------------------------------------------------------------------------------
def test_tv_boxes_follow_a_horizontal_flip() -> None:
    rec = record([[10, 20, 50, 60], [150, 0, 200, 100]])
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)  # (C, H, W)
    _, flipped = v2.RandomHorizontalFlip(p=1)(image, to_tv_boxes(rec))
    assert flipped.canvas_size == (100, 200)
    assert flipped.tolist() == [[150, 20, 190, 60], [0, 0, 50, 100]]  # x -> 200 - x, the corners swap


# --- checks ----------------------------------------------------------------------------------------
def test_valid_boxes_pass_and_are_clipped_within_tolerance() -> None:
    (out,) = check_records([record([[-0.5, 0, 200.5, 100], [10, 10, 20, 20]])], classes=["tree"])
    assert out.boxes.tolist() == [[0, 0, 200, 100], [10, 10, 20, 20]]


def test_an_image_without_boxes_passes() -> None:
    assert len(check_records([record([])])[0].boxes) == 0


def test_box_outside_the_image() -> None:
    with pytest.raises(DataError) as exc:
        check_records([record([[10, 10, 20, 20], [150, 10, 230, 50]])])
    assert str(exc.value) == (
        "Box 1 [150, 10, 230, 50] (x1,y1,x2,y2) of image 'img.png' in 'ann.csv' lies outside the 200x100 "
        "image; expected 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100 (within 1 px). Fix the box, or the "
        "image size in the annotation."
    )


def test_single_box_outside_that_fits_swapped_hints_at_the_swap() -> None:
    with pytest.raises(
        DataError, match=r"It would fit with x and y swapped: check that the box is not y1,x1"
    ):
        check_records([record([[10, 10, 20, 20]] * 9 + [[120, 10, 150, 50]], w=100, h=200)])


def test_degenerate_box() -> None:
    with pytest.raises(DataError) as exc:
        check_records([record([[10, 10, 10, 20]], fmt="voc")])
    assert str(exc.value) == (
        "Box 0 [10, 10, 10, 20] (x1,y1,x2,y2) of image 'img.png' in 'ann.csv' has no size (width 0, height "
        "10); expected x2 > x1 and y2 > y1 in Pascal VOC xmin,ymin,xmax,ymax (absolute 1-based pixels). Fix "
        "the box or remove it."
    )


def test_unknown_label() -> None:
    with pytest.raises(DataError) as exc:
        check_records([record([[10, 10, 20, 20]], labels=["tre"])], classes=["tree", "bush"])
    assert str(exc.value) == (
        "Box 0 [10, 10, 20, 20] (x1,y1,x2,y2) of image 'img.png' in 'ann.csv' has the unknown label 'tre'; "
        "expected one of ['tree', 'bush']. Did you mean 'tree'? Fix the label, or add it to the classes."
    )


def test_non_finite_box() -> None:
    with pytest.raises(DataError, match=r"Box 0 \[nan, 10, 20, 20\] .* has a missing or infinite value"):
        check_records([record([[float("nan"), 10, 20, 20]])])


# --- format traps ----------------------------------------------------------------------------------
def test_trap_y_x_order() -> None:
    # Landscape 200x100 images, boxes written y1,x1,y2,x2: the x values (up to 180) land in y (height 100).
    true = [[20, 10, 60, 40], [120, 50, 180, 90], [5, 5, 30, 30], [130, 20, 190, 80]]
    swapped = [[b[1], b[0], b[3], b[2]] for b in true]
    with pytest.raises(DataError) as exc:
        check_records([record(swapped[:2]), record(swapped[2:])])
    assert str(exc.value) == (
        "The boxes look like y,x order (y1,x1,y2,x2): 2 of 4 boxes are outside their image or have no size "
        "as read, and all 4 fit when read that way. First: box 1 [50, 120, 90, 180] of image 'img.png' in "
        "'ann.csv' (200x100), which is [120, 50, 180, 90] as x1,y1,x2,y2 when read that way. Expected CSV "
        "xmin,ymin,xmax,ymax (absolute pixels). Write x before y in every box (swap the first two values and "
        "the last two)."
    )


def test_trap_y_x_order_needs_more_than_one_box() -> None:
    # One bad box among many is a bad box, not a format: the single-box message names it.
    ok = [[10, 10, 20, 20]] * 20
    with pytest.raises(DataError, match=r"^Box 20 \[120, 10, 150, 50\] .* lies outside"):
        check_records([record([*ok, [120, 10, 150, 50]], w=100, h=200)])


def test_trap_normalized_in_a_pixel_format() -> None:
    with pytest.raises(DataError) as exc:
        check_records([record([[0.1, 0.2, 0.4, 0.5], [0.5, 0.5, 0.9, 1.0]])])
    assert str(exc.value) == (
        "All 2 boxes of image 'img.png' in 'ann.csv' lie in [0, 1] (box 0 is [0.1, 0.2, 0.4, 0.5] in the "
        "file), but the image is 200x100 pixels and CSV xmin,ymin,xmax,ymax (absolute pixels) expects "
        "absolute pixels. These look like normalized coordinates: multiply x by the width and y by the "
        "height, or give the file as YOLO (normalized cx,cy,w,h)."
    )


def test_trap_normalized_in_voc_looks_at_the_file_values() -> None:
    voc = B.voc_to_xyxy(torch.tensor([[0.1, 0.2, 0.4, 0.5]]))  # read as VOC: x1 = 0.1 - 1 < 0
    rec = ImageBoxes(Path("a.jpg"), 200, 100, voc, ("tree",), Path("a.xml"), "voc")
    with pytest.raises(DataError, match=r"box 0 is \[0.1, 0.2, 0.4, 0.5\] in the file"):
        check_records([rec])


def test_trap_xywh_where_xyxy_is_expected() -> None:
    # x, y, w, h written in an x1,y1,x2,y2 column: "x2" (the width) is below x1 for boxes off the left edge.
    xywh = [[100, 20, 30, 40], [150, 50, 40, 30], [10, 10, 50, 50]]
    with pytest.raises(DataError) as exc:
        check_records([record(xywh)])
    assert str(exc.value) == (
        "The boxes look like x,y,w,h (COCO layout) where x1,y1,x2,y2 is expected: 2 of 3 boxes are outside "
        "their image or have no size as read, and all 3 fit when read that way. First: box 0 "
        "[100, 20, 30, 40] of image 'img.png' in 'ann.csv' (200x100), which is [100, 20, 130, 60] as "
        "x1,y1,x2,y2 when read that way. Expected CSV xmin,ymin,xmax,ymax (absolute pixels). Convert each "
        "box to corners: x2 = x + w, y2 = y + h (or read the file as COCO)."
    )


def test_trap_xyxy_where_coco_xywh_is_expected() -> None:
    corners = torch.tensor([[100.0, 20, 130, 60], [150, 50, 190, 80], [10, 10, 20, 20]])
    read_as_coco = B.coco_to_xyxy(corners)  # what read_coco makes of corners in the bbox field
    rec = ImageBoxes(Path("a.jpg"), 200, 100, read_as_coco, ("tree",) * 3, Path("instances.json"), "coco")
    with pytest.raises(DataError) as exc:
        check_records([rec])
    assert str(exc.value) == (
        "The boxes look like x1,y1,x2,y2 where COCO's x,y,w,h is expected: 2 of 3 boxes are outside their "
        "image or have no size as read, and all 3 fit when read that way. First: box 0 [100, 20, 230, 80] of "
        "image 'a.jpg' in 'instances.json' (200x100), which is [100, 20, 130, 60] as x1,y1,x2,y2 when read "
        "that way. Expected COCO x,y,w,h (absolute pixels, top-left corner). Write COCO bbox as [x, y, "
        "width, height]: w = x2 - x1, h = y2 - y1."
    )


def test_crop_boxes_keeps_boxes_mostly_inside_the_window() -> None:
    boxes = torch.tensor([[90.0, 0, 110, 10], [60.0, 0, 110, 10], [120.0, 5, 140, 25], [300.0, 0, 310, 10]])
    cropped, keep = crop_boxes(boxes, (100, 0, 200, 50))
    assert keep.tolist() == [True, False, True, False]  # half inside counts; a fifth, or none, does not
    assert cropped[keep].tolist() == [[0.0, 0.0, 10.0, 10.0], [20.0, 5.0, 40.0, 25.0]]
