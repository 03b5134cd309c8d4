"""Draw detections on an image: what the report's examples and ``kiln predict --out`` show.

:func:`draw_detections` compares the predictions with the ground truth (:func:`match_detections`, the same
matching as the metrics) and colours each box by what it is, with the colours of :data:`LEGEND`.
:func:`draw_predictions` draws predictions alone, one colour per class. Boxes are absolute ``xyxy``
pixels; a box that sticks out of the image is clipped to it, and so is its label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from torchkiln.components.detection_metrics import match_detections

RGB = tuple[int, int, int]
Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 pixels, inclusive (PIL's rectangle)
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
# What each colour of draw_detections means, in the order a legend lists them.
LEGEND: dict[str, RGB] = {
    "true positive": (0, 200, 83),
    "false positive": (229, 57, 53),
    "missed (false negative)": (255, 145, 0),
    "matched ground truth": (224, 224, 224),
}
TRUE_POSITIVE, FALSE_POSITIVE, MISSED, MATCHED = LEGEND.values()
# One colour per class for draw_predictions (class k gets PALETTE[k % 12]): distinct on photos.
PALETTE: tuple[RGB, ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
    (240, 228, 66), (148, 103, 189), (127, 127, 127), (188, 189, 34), (23, 190, 207), (140, 86, 75),
)  # fmt: skip


def default_line_width(image: Image.Image) -> int:
    """The box outline width for ``image``: a pixel per 320 pixels of its long side (rounded), at least 1.

    Example:
        >>> default_line_width(Image.new("RGB", (1280, 720)))
        4
    """
    return max(1, (max(image.size) + 160) // 320)


def _font(line_width: int) -> Font:
    try:  # Pillow >= 10.1 with FreeType scales its default font
        return ImageFont.load_default(size=10 + 2 * line_width)
    except TypeError:
        return ImageFont.load_default()


def _rect(box: Sequence[float], size: tuple[int, int]) -> Rect | None:
    """The pixels a box covers, clipped to the image, inclusive: PIL's rectangle; None if none are inside."""
    w, h = size
    if not all(math.isfinite(v) for v in box):
        return None
    x1, y1 = max(round(box[0]), 0), max(round(box[1]), 0)
    x2, y2 = min(round(box[2]) - 1, w - 1), min(round(box[3]) - 1, h - 1)  # x2 = 10 covers pixel 9 last
    return (x1, y1, max(x2, x1), max(y2, y1)) if x1 < w and y1 < h and x2 >= 0 and y2 >= 0 else None


def _dashed(draw: ImageDraw.ImageDraw, rect: Rect, color: RGB, width: int) -> None:
    """A dashed outline drawn inward like PIL's rectangle: dashes of 4 widths, gaps of 2."""
    x1, y1, x2, y2 = rect
    dash, gap = 4 * width, 2 * width
    inner_x, inner_y = max(x2 - width + 1, x1), max(y2 - width + 1, y1)
    for start in range(x1, x2 + 1, dash + gap):  # top and bottom edges
        end = min(start + dash - 1, x2)
        draw.rectangle((start, y1, end, min(y1 + width - 1, y2)), fill=color)
        draw.rectangle((start, inner_y, end, y2), fill=color)
    for start in range(y1, y2 + 1, dash + gap):  # left and right edges
        end = min(start + dash - 1, y2)
        draw.rectangle((x1, start, min(x1 + width - 1, x2), end), fill=color)
        draw.rectangle((inner_x, start, x2, end), fill=color)


def _tag(draw: ImageDraw.ImageDraw, rect: Rect, text: str, color: RGB, font: Font) -> None:
    """``text`` in a filled tag on the box's top-left corner: above the box, or inside it at the top edge
    of the image; kept inside the image on every side."""
    w, h = draw.im.size  # the image being drawn on
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4  # 2 pixels of padding each side
    x = min(rect[0], max(w - tw, 0))
    y = rect[1] - th if rect[1] - th >= 0 else min(rect[1], max(h - th, 0))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color)
    dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 140  # white text on dark tags
    draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)


def _label(classes: Sequence[str], label: int, score: float) -> str:
    name = classes[label] if 0 <= label < len(classes) else f"class {label}"
    return f"{name} {score:.2f}"


def draw_detections(
    image: Image.Image,
    pred: Mapping[str, Tensor],
    truth: Mapping[str, Tensor],
    classes: Sequence[str],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    line_width: int | None = None,
) -> Image.Image:
    """Draw the predictions with ``score >= score_threshold`` and the ground truth, coloured by the match.

    True positives are green, false positives red (each with a ``"<class> 0.87"`` tag), missed ground-truth
    boxes orange and dashed, matched ground-truth boxes thin and light grey (under the green prediction).
    The colours are :data:`LEGEND`.

    Args:
        image: the image; any mode (it is converted to RGB), not changed.
        pred: ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``, ``xyxy`` pixels of this image.
        truth: ``{"boxes": (M, 4), "labels": (M,)}``.
        classes: the class names; labels index them.
        score_threshold: predictions below it are not drawn (nor matched).
        iou_threshold: the IoU a match needs.
        line_width: outline width in pixels; ``None`` scales it with the image (:func:`default_line_width`).

    Returns:
        A new RGB image.

    Raises:
        DataError: if ``pred`` or ``truth`` is malformed.

    Example:
        >>> draw_detections(Image.open("street.jpg"), pred, truth, ["car", "person"]).save("street_eval.png")
    """
    out = image.convert("RGB")
    width = line_width or default_line_width(out)
    draw, font = ImageDraw.Draw(out), _font(width)
    m = match_detections(pred, truth, iou_threshold=iou_threshold, score_threshold=score_threshold)
    for box, missed in zip(truth["boxes"].detach().cpu().tolist(), m.missed.tolist(), strict=True):
        rect = _rect(box, out.size)
        if rect is not None and missed:
            _dashed(draw, rect, MISSED, width)
        elif rect is not None:
            draw.rectangle(rect, outline=MATCHED, width=max(1, width // 2))
    boxes, labels, scores = (pred[k].detach().cpu()[m.kept].tolist() for k in ("boxes", "labels", "scores"))
    tags = []
    shown = zip(boxes, labels, scores, m.true_positive.tolist(), strict=True)
    for box, label, score, hit in reversed(list(shown)):
        rect, color = _rect(box, out.size), TRUE_POSITIVE if hit else FALSE_POSITIVE
        if rect is not None:  # lowest score first: the most confident box ends on top
            draw.rectangle(rect, outline=color, width=width)
            tags.append((rect, _label(classes, label, score), color))
    for rect, text, color in tags:  # tags after every box, so no outline crosses a tag
        _tag(draw, rect, text, color, font)
    return out


def draw_predictions(
    image: Image.Image,
    pred: Mapping[str, Tensor],
    classes: Sequence[str],
    *,
    score_threshold: float = 0.5,
    line_width: int | None = None,
) -> Image.Image:
    """Draw the predictions with ``score >= score_threshold``, one colour per class, each with a tag.

    For images without ground truth (``kiln predict --out``); class ``k`` is ``PALETTE[k % len(PALETTE)]``.

    Args:
        image: the image; any mode (it is converted to RGB), not changed.
        pred: ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``, ``xyxy`` pixels of this image.
        classes: the class names; labels index them.
        score_threshold: predictions below it are not drawn.
        line_width: outline width in pixels; ``None`` scales it with the image (:func:`default_line_width`).

    Returns:
        A new RGB image.

    Example:
        >>> draw_predictions(Image.open("street.jpg"), pred, ["car", "person"], score_threshold=0.3)
    """
    out = image.convert("RGB")
    width = line_width or default_line_width(out)
    draw, font = ImageDraw.Draw(out), _font(width)
    scores, labels, boxes = (pred[k].detach().cpu() for k in ("scores", "labels", "boxes"))
    order = scores.argsort(stable=True).tolist()  # lowest score first: the most confident box ends on top
    shown = [i for i in order if scores[i] >= score_threshold]
    tags = []
    for i in shown:
        label = int(labels[i])
        rect, color = _rect(boxes[i].tolist(), out.size), PALETTE[label % len(PALETTE)]
        if rect is not None:
            draw.rectangle(rect, outline=color, width=width)
            tags.append((rect, _label(classes, label, float(scores[i])), color))
    for rect, text, color in tags:
        _tag(draw, rect, text, color, font)
    return out
