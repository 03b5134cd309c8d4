"""Bounding boxes: one internal format, the converters to and from the annotation formats, and the checks.

The internal format is absolute pixel ``xyxy``: a float ``(N, 4)`` tensor of ``x1, y1, x2, y2`` in the
continuous pixel plane, where the image covers ``[0, width] x [0, height]`` and pixel ``(i, j)`` covers
``[i, i + 1] x [j, j + 1]``. It is what ``torchvision.models.detection`` takes and what
``tv_tensors.BoundingBoxes(format="XYXY", canvas_size=(h, w))`` holds (:func:`to_tv_boxes`).

The formats (:mod:`torchkiln.components.box_formats` reads their files):

======  ==============================  ==================================================================
format  a box in the file               to internal ``xyxy``
======  ==============================  ==================================================================
coco    ``x, y, w, h`` absolute pixels  ``x, y, x + w, y + h`` (top-left corner, width, height)
voc     ``xmin, ymin, xmax, ymax``      ``xmin - 1, ymin - 1, xmax, ymax`` (1-based inclusive pixel indices)
yolo    ``cx, cy, w, h`` in ``[0, 1]``  ``(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, ...``
csv     ``xmin, ymin, xmax, ymax``      unchanged (absolute ``xyxy``)
======  ==============================  ==================================================================

Pascal VOC numbers pixels from 1 and its ``xmax`` is the last pixel inside the box, so a box over the whole
image is ``(1, 1, W, H)``; in the continuous plane that is ``(0, 0, W, H)``: subtract 1 from the minimum
corner only (as Detectron2 does). Tools that write 0-based VOC (``xmin = 0``) then give ``x1 = -1``, which the
check's 1-pixel tolerance accepts and clips to 0.

:func:`check_records` runs before training and makes the classic format mistakes loud (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torchvision import tv_tensors

from torchkiln.core.errors import DataError, did_you_mean

BoxFormat = Literal["coco", "voc", "yolo", "csv"]
FORMAT_LAYOUTS: dict[str, str] = {
    "coco": "COCO x,y,w,h (absolute pixels, top-left corner)",
    "voc": "Pascal VOC xmin,ymin,xmax,ymax (absolute 1-based pixels)",
    "yolo": "YOLO cx,cy,w,h (normalized to [0, 1])",
    "csv": "CSV xmin,ymin,xmax,ymax (absolute pixels)",
}
TOLERANCE = 1.0  # pixels a box may stick out of the image (rounding, 0-based VOC) before it is an error
# A format trap is reported when at least this many boxes, and this share of all boxes, break as read.
MIN_TRAP_BOXES = 2
MIN_TRAP_SHARE = 0.1


# --- converters: (N, 4) -> (N, 4), any float dtype --------------------------------------------------
def coco_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO ``x, y, w, h`` (top-left corner, absolute) -> ``x1, y1, x2, y2``.

    Example:
        >>> coco_to_xyxy(torch.tensor([[10.0, 20.0, 30.0, 40.0]])).tolist()
        [[10.0, 20.0, 40.0, 60.0]]
    """
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_coco(boxes: torch.Tensor) -> torch.Tensor:
    """``x1, y1, x2, y2`` -> COCO ``x, y, w, h``; the inverse of :func:`coco_to_xyxy`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def voc_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Pascal VOC ``xmin, ymin, xmax, ymax`` (1-based, inclusive) -> ``x1, y1, x2, y2`` (see the module doc).

    Example:
        >>> voc_to_xyxy(torch.tensor([[1.0, 1.0, 640.0, 480.0]])).tolist()  # the whole 640x480 image
        [[0.0, 0.0, 640.0, 480.0]]
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 - 1, y1 - 1, x2, y2], dim=-1)


def xyxy_to_voc(boxes: torch.Tensor) -> torch.Tensor:
    """``x1, y1, x2, y2`` -> Pascal VOC ``xmin, ymin, xmax, ymax``; the inverse of :func:`voc_to_xyxy`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 + 1, y1 + 1, x2, y2], dim=-1)


def yolo_to_xyxy(boxes: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
    """YOLO ``cx, cy, w, h`` normalized by the image size -> absolute ``x1, y1, x2, y2``.

    Example:
        >>> yolo_to_xyxy(torch.tensor([[0.5, 0.5, 0.5, 1.0]]), width=200, height=100).tolist()
        [[50.0, 0.0, 150.0, 100.0]]
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], dim=-1
    )


def xyxy_to_yolo(boxes: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
    """Absolute ``x1, y1, x2, y2`` -> YOLO ``cx, cy, w, h``; the inverse of :func:`yolo_to_xyxy`."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], dim=-1
    )


# --- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBoxes:
    """The boxes of one image, in the internal format, and where they came from.

    Attributes:
        path: the image file.
        width, height: the image size in pixels (from the annotation, or the image header).
        boxes: ``(N, 4)`` float32 absolute ``x1, y1, x2, y2``; ``N`` may be 0 (an image with no object).
        labels: ``N`` class names, one per box.
        source: the annotation file the boxes were read from (named in every message).
        format: the format of ``source``.
    """

    path: Path
    width: int
    height: int
    boxes: torch.Tensor
    labels: tuple[str, ...]
    source: Path
    format: BoxFormat

    def describe(self) -> str:
        where = f"image '{self.path}'"
        return where if self.source == self.path else f"{where} in '{self.source}'"


def to_tv_boxes(record: ImageBoxes) -> tv_tensors.BoundingBoxes:
    """The boxes of ``record`` as a ``tv_tensors.BoundingBoxes``, which ``torchvision.transforms.v2`` moves
    together with the image (flip, resize, crop).

    Example:
        >>> tv = to_tv_boxes(record)  # format XYXY, canvas_size (record.height, record.width)
    """
    return tv_tensors.BoundingBoxes(record.boxes, format="XYXY", canvas_size=(record.height, record.width))


def crop_boxes(
    boxes: torch.Tensor, window: tuple[int, int, int, int], *, min_kept: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (absolute ``xyxy``) as seen in the crop ``window`` (x0, y0, x1, y1): clipped to it and shifted
    to its corner, and which to keep: those with at least ``min_kept`` of their area inside (a tree cut in
    half by a tile edge is still a tree; a sliver of one is not).

    Example:
        >>> two = torch.tensor([[90.0, 0, 110, 10], [60.0, 0, 110, 10]])
        >>> boxes, keep = crop_boxes(two, (100, 0, 200, 50))
        >>> boxes[keep].tolist()
        [[0.0, 0.0, 10.0, 10.0]]
    """
    x0, y0, x1, y1 = window
    lo = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = torch.minimum(torch.maximum(boxes, lo), torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped - lo, kept >= min_kept * area.clamp(min=1e-6)


def _fmt(box: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box.tolist()) + "]"


def _valid(boxes: torch.Tensor, width: int, height: int, tolerance: float) -> torch.Tensor:
    """(N,) bool: the box has a positive size and lies inside the image (within ``tolerance`` px)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    inside = (x1 >= -tolerance) & (y1 >= -tolerance) & (x2 <= width + tolerance) & (y2 <= height + tolerance)
    return inside & (x2 > x1) & (y2 > y1)


# --- format traps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Misreading:
    """A mistake that gives boxes in another layout than the format's: what it is and how to undo it."""

    name: str
    formats: tuple[str, ...]
    undo: Callable[[torch.Tensor], torch.Tensor]  # (N, 4) xyxy as read -> xyxy as meant
    fix: str


_MISREADINGS = (
    _Misreading(
        "y,x order (y1,x1,y2,x2)",
        ("coco", "voc", "yolo", "csv"),
        lambda b: b[:, [1, 0, 3, 2]],
        "Write x before y in every box (swap the first two values and the last two).",
    ),
    _Misreading(
        "x,y,w,h (COCO layout) where x1,y1,x2,y2 is expected",
        ("voc", "csv"),
        lambda b: torch.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], dim=-1),
        "Convert each box to corners: x2 = x + w, y2 = y + h (or read the file as COCO).",
    ),
    _Misreading(
        "x1,y1,x2,y2 where COCO's x,y,w,h is expected",
        ("coco",),
        lambda b: torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=-1),
        "Write COCO bbox as [x, y, width, height]: w = x2 - x1, h = y2 - y1.",
    ),
)


def _check_misreadings(records: Sequence[ImageBoxes], tolerance: float) -> None:
    """Raise when many boxes break as read and *every* box is valid under one misreading's undo."""
    for mis in _MISREADINGS:
        mine = [r for r in records if r.format in mis.formats and len(r.boxes)]
        total = sum(len(r.boxes) for r in mine)
        broken = [(r, ~_valid(r.boxes, r.width, r.height, tolerance)) for r in mine]
        n_broken = sum(int(b.sum()) for _, b in broken)
        if n_broken < max(MIN_TRAP_BOXES, MIN_TRAP_SHARE * total):
            continue
        if not all(bool(_valid(mis.undo(r.boxes), r.width, r.height, tolerance).all()) for r in mine):
            continue
        record, bad = next((r, b) for r, b in broken if b.any())
        i = int(bad.nonzero()[0, 0])
        raise DataError(
            f"The boxes look like {mis.name}: {n_broken} of {total} boxes are outside their image or have "
            f"no size as read, and all {total} fit when read that way. First: box {i} "
            f"{_fmt(record.boxes[i])} of {record.describe()} ({record.width}x{record.height}), which is "
            f"{_fmt(mis.undo(record.boxes[i : i + 1])[0])} as x1,y1,x2,y2 when read that way. Expected "
            f"{FORMAT_LAYOUTS[record.format]}. {mis.fix}"
        )


_TO_FILE_LAYOUT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "coco": xyxy_to_coco,
    "voc": xyxy_to_voc,
    "csv": lambda b: b,
}


def _check_normalized(record: ImageBoxes) -> None:
    """Raise when a pixel format's boxes all lie in [0, 1]: a box there is at most the top-left pixel."""
    if record.format == "yolo" or not len(record.boxes) or max(record.width, record.height) <= 2:
        return
    raw = _TO_FILE_LAYOUT[record.format](record.boxes)  # the values as written in the file
    if bool(((raw >= 0) & (raw <= 1)).all()):
        raise DataError(
            f"All {len(record.boxes)} boxes of {record.describe()} lie in [0, 1] (box 0 is "
            f"{_fmt(raw[0])} in the file), but the image is {record.width}x{record.height} pixels and "
            f"{FORMAT_LAYOUTS[record.format]} expects absolute pixels. These look like normalized "
            f"coordinates: multiply x by the width and y by the height, or give the file as YOLO "
            f"(normalized cx,cy,w,h)."
        )


def _check_box(record: ImageBoxes, i: int, classes: Sequence[str] | None, tolerance: float) -> None:
    box = record.boxes[i]
    x1, y1, x2, y2 = box.tolist()
    what = f"Box {i} {_fmt(box)} (x1,y1,x2,y2) of {record.describe()}"
    if not bool(torch.isfinite(box).all()):
        raise DataError(f"{what} has a missing or infinite value. Fix or remove the box.")
    if x2 <= x1 or y2 <= y1:
        raise DataError(
            f"{what} has no size (width {x2 - x1:g}, height {y2 - y1:g}); expected x2 > x1 and y2 > y1 in "
            f"{FORMAT_LAYOUTS[record.format]}. Fix the box or remove it."
        )
    if not bool(_valid(box[None], record.width, record.height, tolerance)[0]):
        hint = ""
        if bool(_valid(box[None, [1, 0, 3, 2]], record.width, record.height, tolerance)[0]):
            hint = " It would fit with x and y swapped: check that the box is not y1,x1,y2,x2."
        raise DataError(
            f"{what} lies outside the {record.width}x{record.height} image; expected 0 <= x1 < x2 <= "
            f"{record.width} and 0 <= y1 < y2 <= {record.height} (within {tolerance:g} px). Fix the box, or "
            f"the image size in the annotation.{hint}"
        )
    if classes is not None and record.labels[i] not in classes:
        raise DataError(
            f"{what} has the unknown label '{record.labels[i]}'; expected one of {list(classes)}."
            f"{did_you_mean(record.labels[i], classes)} Fix the label, or add it to the classes."
        )


def check_records(
    records: Sequence[ImageBoxes], *, classes: Sequence[str] | None = None, tolerance: float = TOLERANCE
) -> list[ImageBoxes]:
    """Check every box before training, and return the records with boxes clipped to their image.

    The format traps come first, because one of them explains many single-box errors at once:

    - **Another layout than the format's** (y,x order; x,y,w,h given as corners; corners given to COCO):
      reported when at least ``MIN_TRAP_BOXES`` boxes and ``MIN_TRAP_SHARE`` of all the boxes of that format
      are invalid as read (outside the image or without size), and *every* box is valid when read the other
      way. Correct data with a few bad boxes rarely passes the second test: a box wider than the image's
      height cannot fit swapped, a box drawn far from the top-left cannot fit as x,y,w,h. Square images
      cannot show a y,x swap; those boxes get the single-box message below, which hints at the swap.
    - **Normalized coordinates in a pixel format**: all boxes of an image lie in ``[0, 1]`` while the image
      is larger than 2x2 pixels (a real box there would cover at most the top-left pixel).

    Then each box: finite values, positive width and height, inside the image within ``tolerance`` pixels,
    and (when ``classes`` is given) a known label.

    Args:
        records: the images with their boxes, from the readers in :mod:`box_formats`.
        classes: the known labels, or None to accept any.
        tolerance: how many pixels a box may stick out of its image (it is clipped).

    Returns:
        The records, boxes clipped to ``[0, width] x [0, height]``.

    Raises:
        DataError: naming the file, the box (index and values), what was expected and the fix.

    Example:
        >>> records = check_records(read_coco(Path("instances.json")), classes=["tree"])
    """
    _check_misreadings(records, tolerance)
    for record in records:
        _check_normalized(record)
        for i in range(len(record.boxes)):
            _check_box(record, i, classes, tolerance)
    return [_clip(r) for r in records]


def _clip(record: ImageBoxes) -> ImageBoxes:
    limits = torch.tensor(
        [record.width, record.height, record.width, record.height], dtype=record.boxes.dtype
    )
    return replace(record, boxes=torch.minimum(record.boxes.clamp(min=0), limits))
