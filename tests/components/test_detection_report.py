"""The detection report: one self-contained page with the numbers, per-class rows, the curve and examples."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from torchkiln.components.box_drawing import LEGEND
from torchkiln.components.detection_report import write_detection_report
from torchkiln.core.errors import DataError

CLASSES = ["cat", "<dog>", "bird"]
URI = re.compile(r'<img src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"')


def results() -> dict:
    """A small ``evaluate_detections`` output, written by hand: 'bird' has no ground truth."""
    return {
        "coco": {
            "map": 0.41234, "map_50": 0.7, "map_75": 0.38, "map_small": -1.0, "map_medium": 0.3,
            "map_large": 0.5, "mar_1": 0.3, "mar_10": 0.5, "mar_100": 0.55,
            "ap/cat": 0.5123, "ap50/cat": 0.8, "ap/<dog>": 0.3111, "ap50/<dog>": 0.6,
        },
        "at_threshold": {
            "precision": 0.75, "recall": 0.6, "f1": 2 / 3, "tp": 6, "fp": 2, "fn": 4,
            "score_threshold": 0.5, "iou_threshold": 0.5,
        },
        "pr_curve": {
            "recall": [0.1, 0.3, 0.6, 0.7], "precision": [1.0, 0.9, 0.75, 0.5],
            "thresholds": [0.95, 0.8, 0.5, 0.2], "ap": 0.61, "iou_threshold": 0.5,
        },
        "counts": {
            "images": 4, "truth_boxes": 10, "predicted_boxes_above_threshold": 8,
            "per_class": {
                "cat": {"truth_boxes": 6, "predicted_boxes_above_threshold": 5},
                "<dog>": {"truth_boxes": 4, "predicted_boxes_above_threshold": 2},
                "bird": {"truth_boxes": 0, "predicted_boxes_above_threshold": 1},
            },
        },
    }  # fmt: skip


def test_writes_one_self_contained_page(tmp_path: Path) -> None:
    examples = [(f"img_{i}.jpg", Image.new("RGB", (120 + 10 * i, 90), (i * 40, 90, 200))) for i in range(3)]
    big = Image.new("RGB", (3000, 1500), (0, 0, 0))

    path = write_detection_report(
        tmp_path / "eval",
        title="Detector <v2>",
        results=results(),
        classes=CLASSES,
        examples=[*examples, ("big.png", big)],
        settings={"model": "fasterrcnn & co", "score_threshold": 0.5},
        notes=["12 images had no box."],
    )

    assert path == tmp_path / "eval" / "report.html"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left
    page = path.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    for card in ("mAP@[.5:.95]</span><b>0.412", "mAP@.5</span><b>0.700", "AR@100</span><b>0.550"):
        assert card in page
    assert "F1 (score ≥ 0.5)</span><b>0.667" in page
    assert "6 true positives, 2 false positives, 4 missed" in page
    # One row per class, escaped; 'bird' has no ground truth: no AP, greyed out.
    assert '<td>cat</td><td class="num">0.512</td>\n<td class="num">0.800</td>' in page
    assert '<td>&lt;dog&gt;</td><td class="num">0.311</td>' in page and "<dog>" not in page
    assert '<tr class="empty"><td>bird</td><td class="num">—</td>' in page
    assert "Detector &lt;v2&gt;" in page and "fasterrcnn &amp; co" in page
    assert '<p class="note">12 images had no box.</p>' in page
    assert all(name in page for name in LEGEND)

    images = URI.findall(page)
    assert [kind for kind, _ in images] == ["png"] + ["jpeg"] * 4  # the P-R curve, then one per example
    assert page.count("<figure") == 4
    shown = [Image.open(io.BytesIO(base64.b64decode(data))) for _, data in images]
    assert shown[1].size == (120, 90)
    assert max(shown[4].size) == 1024 and big.size == (3000, 1500)  # shrunk for the page, not in place


def test_no_predictions_and_no_examples(tmp_path: Path) -> None:
    empty = results()
    empty["pr_curve"] = {"recall": [], "precision": [], "thresholds": [], "ap": 0.0, "iou_threshold": 0.5}
    empty["coco"] = dict.fromkeys(empty["coco"], -1.0)

    page = write_detection_report(
        tmp_path, title="t", results=empty, classes=CLASSES, examples=[], settings={}
    ).read_text()

    assert "mAP@[.5:.95]</span><b>—" in page
    assert "No examples." in page and "<figure" not in page
    assert len(URI.findall(page)) == 1  # the (empty) curve is still drawn


def test_results_that_are_not_evaluate_detections_output(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lack 'pr_curve', 'counts'.*evaluate_detections"):
        write_detection_report(
            tmp_path,
            title="t",
            results={"coco": {}, "at_threshold": {}},
            classes=CLASSES,
            examples=[],
            settings={},
        )
    assert not (tmp_path / "report.html").exists()
