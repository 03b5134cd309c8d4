"""``kiln evaluate`` for a detector: COCO mAP, the operating point, the P-R curve and drawn test images."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from rich.table import Table

from torchkiln.components.box_drawing import draw_detections
from torchkiln.components.detection_metrics import evaluate_detections
from torchkiln.components.detection_report import write_detection_report
from torchkiln.components.images import open_image
from torchkiln.core.errors import DataError
from torchkiln.core.io import atomic_write_text
from torchkiln.tasks.base import validate
from torchkiln.tasks.object_detection.config import DetectionRunConfig
from torchkiln.tasks.object_detection.data import pad_batch
from torchkiln.tasks.object_detection.metrics import rows_to_predictions

EXAMPLES = 8  # images drawn in the report


@dataclass(frozen=True)
class DetectionEvaluation:
    """What ``kiln evaluate`` measured on a detector; ``metrics_file`` holds all of it.

    Attributes:
        results: :func:`~torchkiln.components.detection_metrics.evaluate_detections`' dict: ``coco`` (mAP
            and AR, per class AP), ``at_threshold`` (precision, recall, F1, TP/FP/FN), ``pr_curve``, counts.
        seconds: the time the model took over the split (tiling and merging included).
    """

    results: dict[str, Any]
    split: str
    images: int
    seconds: float
    report: Path
    metrics_file: Path
    notes: tuple[str, ...] = ()

    def summary(self) -> list[Any]:
        coco, at = self.results["coco"], self.results["at_threshold"]
        table = Table(title=f"{self.split} split: {self.images} image(s), {self.seconds:.1f} s")
        cap = int(coco["max_detections"])
        for name in ("mAP@[.5:.95]", "mAP@.5", "mAP@.75", f"AR@{cap}", "precision", "recall", "F1"):
            table.add_column(name, justify="right")
        table.add_row(
            *(f"{coco[k]:.3f}" for k in ("map", "map_50", "map_75", f"mar_{cap}")),
            *(f"{at[k]:.3f}" for k in ("precision", "recall", "f1")),
        )
        return [
            table,
            f"precision, recall and F1 at score >= {at['score_threshold']:g} and IoU >= "
            f"{at['iou_threshold']:g}: {at['tp']} true positives, {at['fp']} false positives, "
            f"{at['fn']} missed",
        ]


def evaluate_detector(bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> DetectionEvaluation:
    """Predict every image of ``split`` as the server would (whole images, tiled inside the model) and score
    the boxes; write ``metrics.json`` and ``report.html`` into ``out_dir``.

    Raises:
        DataError: the split has no image.
    """
    cfg = cast(DetectionRunConfig, bundle.config)
    _, data = bundle.task.prepare(validate(cfg.model_dump(mode="json")), splits={split})
    records = data.splits.get(split) or []
    if not records:
        raise DataError(
            f"The {split} split of '{cfg.data.path}' has no image, so there is nothing to evaluate. Pick "
            f"another split with --split, or give the data a {split} split."
        )
    model = bundle.model.to(device).eval()
    preds, truths = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for record in records:
            rows = model(pad_batch([data.image(record)]).to(device)).cpu()
            preds.append(rows_to_predictions(rows)[0])
            truths.append(data.targets(record))
    seconds = time.perf_counter() - start
    t = cfg.task
    results = evaluate_detections(
        preds,
        truths,
        data.classes,
        score_threshold=t.score_threshold,
        iou_threshold=t.iou_threshold,
        max_detections=t.max_detections,  # COCO's 100 would cap the recall of a dense image
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / "metrics.json"
    payload = {
        "split": split,
        "images": len(records),
        "seconds": round(seconds, 3),
        **results,
        "per_image": [
            {
                "image": str(r.path),
                "truth_boxes": len(tr["labels"]),
                "predicted_boxes": int((p["scores"] >= t.score_threshold).sum()),
            }
            for r, p, tr in zip(records, preds, truths, strict=True)
        ],
    }
    atomic_write_text(metrics_file, json.dumps(payload, indent=2) + "\n")
    thresholds = {"score_threshold": t.score_threshold, "iou_threshold": t.iou_threshold}
    examples = [
        (r.path.name, draw_detections(open_image(r.path), p, tr, data.classes, **thresholds))
        for r, p, tr in list(zip(records, preds, truths, strict=True))[:EXAMPLES]
    ]
    settings = {
        "model": cfg.model.name,
        "bundle": str(bundle.path),
        "split": split,
        "score threshold": t.score_threshold,
        "IoU threshold": t.iou_threshold,
        "tile size": cfg.data.tile_size,
        "anchor sizes": cfg.data.anchor_sizes,
        "seconds": f"{seconds:.1f}",
    }
    report = write_detection_report(
        out_dir,
        title=f"{cfg.model.name} on the {split} split",
        results=results,
        classes=data.classes,
        examples=examples,
        settings=settings,
    )
    return DetectionEvaluation(results, split, len(records), seconds, report, metrics_file)
