"""Drawing detections: exact colours on the box edges, dashes, tags, clipping; no boxes, nothing drawn."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from torchkiln.components.box_drawing import (
    FALSE_POSITIVE,
    LEGEND,
    MATCHED,
    MISSED,
    PALETTE,
    TRUE_POSITIVE,
    default_line_width,
    draw_detections,
    draw_predictions,
)

BACKGROUND = (10, 20, 30)
CLASSES = ["cat", "dog"]


def boxes(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def pred(rows: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": boxes(rows), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def truth(rows: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": boxes(rows), "labels": torch.tensor(labels)}


# A cat found (the prediction 2 pixels right of its ground truth), a cat box on empty ground (false
# positive), a dog missed, and a low-scoring box that is not drawn.
PRED = pred([[22, 40, 80, 100], [100, 40, 150, 90], [150, 5, 190, 25]], [0.9, 0.8, 0.3], [0, 0, 1])
TRUTH = truth([[20, 40, 80, 100], [120, 110, 190, 150]], [0, 1])


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (200, 160), BACKGROUND)


def test_edges_have_the_legend_colours(image: Image.Image) -> None:
    out = draw_detections(image, PRED, TRUTH, CLASSES, line_width=2)

    px = out.load()
    assert px[22, 70] == px[23, 70] == TRUE_POSITIVE  # left edge of the true positive, 2 pixels wide
    assert px[24, 70] == BACKGROUND  # the inside stays clear
    assert px[20, 70] == MATCHED  # its ground truth, 1 pixel (half the width)
    assert px[21, 70] == BACKGROUND
    assert px[79, 70] == TRUE_POSITIVE  # x2 = 80 covers pixel 79 last
    assert px[100, 65] == FALSE_POSITIVE
    assert px[160, 15] == BACKGROUND  # score 0.3 < 0.5: not drawn
    assert image.getpixel((22, 70)) == BACKGROUND  # the input is untouched


def test_missed_ground_truth_is_dashed(image: Image.Image) -> None:
    out = draw_detections(image, PRED, TRUTH, CLASSES, line_width=2)

    px = out.load()
    # Dashes of 4 widths (8 pixels) and gaps of 2 widths (4) along the top edge from x = 120.
    assert [px[x, 110] for x in (120, 127, 128, 131, 132)] == [MISSED, MISSED, BACKGROUND, BACKGROUND, MISSED]
    assert px[124, 111] == MISSED and px[124, 112] == BACKGROUND  # 2 pixels thick
    assert px[189, 111] == MISSED  # the right edge, drawn inward from x2 - 1


def test_each_prediction_gets_a_filled_tag_above_it(image: Image.Image) -> None:
    out = draw_detections(image, PRED, TRUTH, CLASSES, line_width=2)

    # The tag sits on the box's top-left corner, just above it, padded by 2 pixels.
    assert out.getpixel((23, 39)) == TRUE_POSITIVE
    assert out.getpixel((101, 39)) == FALSE_POSITIVE
    tag_row = [out.getpixel((x, 39)) for x in range(22, 60)]
    assert tag_row == [TRUE_POSITIVE] * len(tag_row)  # "cat 0.90" is wider than 38 pixels


def test_boxes_outside_the_image_are_clipped_with_their_tags(image: Image.Image) -> None:
    p = pred(
        [[-30, -30, 40, 40], [150, 120, 260, 200], [300, 300, 400, 400], [float("nan"), 0, 5, 5]],
        [0.9, 0.9, 0.9, 0.9],
        [0, 1, 0, 1],
    )
    gt = truth([[-10, 150, 500, 170]], [1])

    out = draw_detections(image, p, gt, ["a very long class name that does not fit", "dog"], line_width=3)

    assert out.size == image.size
    assert out.getpixel((1, 1)) == FALSE_POSITIVE  # the corner box's tag moved inside the image
    assert out.getpixel((199, 150)) == FALSE_POSITIVE  # right edge of the box clipped at x = 199
    assert out.getpixel((0, 158)) == MISSED  # the missed box, clipped to the bottom-left corner


def test_no_boxes_leaves_the_content_unchanged() -> None:
    image = Image.new("L", (64, 48), 77)

    drawn = draw_detections(image, pred([], [], []), truth([], []), CLASSES)
    predicted = draw_predictions(image, pred([[0, 0, 10, 10]], [0.1], [0]), CLASSES)  # all below 0.5

    expected = image.convert("RGB").tobytes()
    for out in (drawn, predicted):
        assert out.mode == "RGB" and out is not image
        assert out.tobytes() == expected


def test_predictions_are_coloured_by_class(image: Image.Image) -> None:
    p = pred([[10, 10, 60, 60], [100, 50, 150, 120], [160, 10, 190, 40]], [0.9, 0.6, 0.2], [0, 13, 1])

    out = draw_predictions(image, p, CLASSES, score_threshold=0.5, line_width=1)

    assert out.getpixel((10, 40)) == PALETTE[0]
    assert out.getpixel((100, 90)) == PALETTE[13 % len(PALETTE)]  # a label past the palette wraps around
    assert out.getpixel((160, 30)) == BACKGROUND  # below the threshold


def test_line_width_scales_and_legend_colours_differ() -> None:
    assert default_line_width(Image.new("RGB", (320, 240))) == 1
    assert default_line_width(Image.new("RGB", (1280, 960))) == 4
    assert len(set(LEGEND.values())) == len(LEGEND) == 4
