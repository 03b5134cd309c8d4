"""A self-contained HTML evaluation report of a detector: COCO numbers, per-class AP, the P-R curve, examples.

Like the classification report (:mod:`torchkiln.components.classification_report`, whose figure helpers
it uses), the page embeds every image as a base64 ``data:`` URI and loads no external CSS, JS or fonts, so
it can be mailed, archived with a run or opened offline. The numbers come from
:func:`torchkiln.components.detection_metrics.evaluate_detections`; the examples are images the caller
drew (:func:`torchkiln.components.box_drawing.draw_detections`), shown with the colours of
:data:`~torchkiln.components.box_drawing.LEGEND`. The HTML is the Jinja2 template
``detection_report.html.j2``: this module formats the values and the template lays them out and escapes
them. matplotlib is imported only when a report is written.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from torchkiln.components.box_drawing import LEGEND
from torchkiln.components.html import render
from torchkiln.core.errors import DataError
from torchkiln.core.io import atomic_write_text

EXAMPLE_MAX_SIDE = 1024  # examples are shrunk to this many pixels on the long side (the page stays light)
JPEG_QUALITY = 90
SECTIONS = ("coco", "at_threshold", "pr_curve", "counts")  # what evaluate_detections returns


def write_detection_report(
    out_dir: Path,
    *,
    title: str,
    results: Mapping[str, Any],
    classes: Sequence[str],
    examples: Sequence[tuple[str, Image.Image]],
    settings: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> Path:
    """Write a self-contained ``out_dir/report.html`` for a detector's evaluation.

    The page shows the headline numbers (COCO mAP@[.5:.95], mAP@.5, mAP@.75, AR@100, and precision,
    recall and F1 at the score threshold), a per-class AP table with the box counts, the pooled
    precision-recall curve with the operating point marked, the example images under a colour legend,
    and the settings. A COCO value of -1 (nothing to average) shows as "—". The file is written
    atomically (temporary file in ``out_dir``, then ``os.replace``).

    Args:
        out_dir: folder to write into; created if missing.
        title: page title.
        results: the output of :func:`~torchkiln.components.detection_metrics.evaluate_detections`.
        classes: the class names, in label order (the per-class table lists them all).
        examples: ``(name, image)`` pairs, images already drawn on; embedded as JPEG, shrunk to
            ``EXAMPLE_MAX_SIDE`` pixels.
        settings: key/value pairs shown at the end (model, bundle, split, thresholds, ...).
        notes: sentences shown under the title, highlighted (a warning about the data, say).

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: if ``results`` lacks a section of ``evaluate_detections``' output.

    Example:
        >>> results = evaluate_detections(preds, truths, classes)
        >>> shown = [(name, draw_detections(img, p, t, classes)) for name, img, p, t in samples[:8]]
        >>> write_detection_report(Path("runs/det1/eval"), title="Detector on val", results=results,
        ...                        classes=classes, examples=shown, settings={"split": "val"})
    """
    missing = [key for key in SECTIONS if key not in results]
    if missing:
        raise DataError(
            f"The results lack {', '.join(repr(k) for k in missing)}; expected the dict that "
            f"evaluate_detections() returns, with {', '.join(repr(k) for k in SECTIONS)}. Fix: pass "
            "evaluate_detections(preds, truths, classes) unchanged."
        )
    page = render(
        "detection_report.html.j2",
        title=title,
        notes=[str(note) for note in notes],
        cards=_headline(results),
        operating_point=_operating_point(results["at_threshold"]),
        at_label=_at(results["at_threshold"]),
        classes=_class_rows(results, classes),
        pr_plot=_pr_png(results["pr_curve"], results["at_threshold"]),
        legend=[(name, "#{:02x}{:02x}{:02x}".format(*rgb)) for name, rgb in LEGEND.items()],
        examples=[{"name": str(name), "uri": _jpeg(image)} for name, image in examples],
        settings={str(key): str(value) for key, value in settings.items()},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


# ---- values for the template: numbers formatted, names as plain text -------------------------------


def _fmt(value: Any) -> str:
    """A COCO number with 3 decimals; "—" where it is missing, -1 (undefined) or nan."""
    if value is None or math.isnan(value) or value < 0:
        return "—"
    return f"{value:.3f}"


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _at(at: Mapping[str, Any]) -> str:
    """The operating point as a short label: ``score ≥ 0.5``."""
    return f"score ≥ {at['score_threshold']:g}" if "score_threshold" in at else "at the threshold"


def _headline(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    coco, at, counts = results["coco"], results["at_threshold"], results["counts"]
    cap = int(coco.get("max_detections", 100))
    return [
        ("mAP@[.5:.95]", _fmt(coco.get("map"))),
        ("mAP@.5", _fmt(coco.get("map_50"))),
        ("mAP@.75", _fmt(coco.get("map_75"))),
        (f"AR@{cap}", _fmt(coco.get(f"mar_{cap}"))),
        (f"Precision ({_at(at)})", _fmt(at["precision"])),
        (f"Recall ({_at(at)})", _fmt(at["recall"])),
        (f"F1 ({_at(at)})", _fmt(at["f1"])),
        ("Images", f"{counts['images']:,}"),
        ("Ground-truth boxes", f"{counts['truth_boxes']:,}"),
    ]


def _operating_point(at: Mapping[str, Any]) -> str:
    iou = f" and IoU ≥ {at['iou_threshold']:g}" if "iou_threshold" in at else ""
    return (
        f"At {_at(at)}{iou}: {at['tp']:,} true positives, {at['fp']:,} false positives, "
        f"{at['fn']:,} missed ground-truth boxes."
    )


def _class_rows(results: Mapping[str, Any], classes: Sequence[str]) -> list[dict[str, Any]]:
    coco, per_class = results["coco"], results["counts"].get("per_class", {})
    rows = []
    for name in classes:
        n = per_class.get(name, {})
        rows.append(
            {
                "name": name,
                "ap": _fmt(coco.get(f"ap/{name}")),
                "ap50": _fmt(coco.get(f"ap50/{name}")),
                "truth": _count(n.get("truth_boxes")),
                "predicted": _count(n.get("predicted_boxes_above_threshold")),
                "empty": f"ap/{name}" not in coco,  # no ground truth: no AP, the row is greyed out
            }
        )
    return rows


# ---- images and the plot -----------------------------------------------------------------------------


def _jpeg(image: Image.Image) -> str:
    img = image.convert("RGB")  # a copy: the caller's image is not shrunk
    img.thumbnail((EXAMPLE_MAX_SIDE, EXAMPLE_MAX_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pr_png(curve: Mapping[str, Any], at: Mapping[str, Any]) -> str:
    """The pooled P-R curve as a PNG ``data:`` URI, the operating point marked."""
    from matplotlib.figure import Figure  # here: matplotlib costs ~0.3 s to import

    from torchkiln.components.classification_report import figure_png  # Agg canvas, never pyplot

    recall, precision, thresholds = curve["recall"], curve["precision"], curve["thresholds"]
    fig = Figure(figsize=(6.4, 5.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    if recall:
        # Steps from (0, first precision): the raw curve, whose envelope the all-point AP integrates.
        label = f"all classes (AP {curve['ap']:.3f})"
        ax.step([0.0, *recall], [precision[0], *precision], where="pre", color="#0969da", lw=1.5, label=label)
        shown = [i for i, t in enumerate(thresholds) if t >= at.get("score_threshold", math.inf)]
        if shown:  # the lowest threshold still at or above the operating point
            i = shown[-1]
            ax.plot(recall[i], precision[i], "o", color="#cf222e", ms=7, label=_at(at))
        ax.legend(loc="lower left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", color="0.4", transform=ax.transAxes)
    iou = f", IoU ≥ {curve['iou_threshold']:g}" if "iou_threshold" in curve else ""
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision")
    ax.set_title(f"Precision-recall (all classes pooled{iou})")
    ax.grid(alpha=0.3)
    return figure_png(fig)
