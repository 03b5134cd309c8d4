"""The figure training selects checkpoints by: AP at IoU 0.5 as running sums, so it needs no stored boxes.

Each validation batch is matched at IoU 0.5 (:func:`~torchkiln.components.detection_metrics.
match_detections`, COCO's greedy rule), and every kept prediction adds one to the true- or false-positive
count of its class in the bin of its score (1,000 bins over [0, 1]). The precision/recall curve of a class
is read from the cumulative counts from the top bin down, and AP is COCO's 101-point interpolation of it,
so ``map_50`` here equals COCO's mAP@.5 up to the binning of the scores (ties within 0.001). ``kiln
evaluate`` reports the full COCO figures with torchmetrics.
"""

from __future__ import annotations

from typing import Any

import torch

from torchkiln.components.detection_metrics import match_detections
from torchkiln.components.metric import Metric

BINS = 1000


def rows_to_predictions(rows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The model's rows ``(B, D, 6)`` -> torchvision-style dicts, padding rows (label -1) dropped."""
    out = []
    for r in rows:
        real = r[:, 5] >= 0
        out.append({"boxes": r[real, :4], "scores": r[real, 4], "labels": r[real, 5].long()})
    return out


class DetectionAP(Metric):
    """Per class, score-binned TP/FP counts and the number of true boxes; plus the counts at the task's
    score threshold for precision, recall and F1. All are buffers (summed across processes by DDP)."""

    def __init__(self, num_classes: int, *, score_threshold: float, iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.add_state("tp", torch.zeros(num_classes, BINS, dtype=torch.long))
        self.add_state("fp", torch.zeros(num_classes, BINS, dtype=torch.long))
        self.add_state("truth", torch.zeros(num_classes, dtype=torch.long))

    def update(self, outputs: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        k = self.tp.shape[0]
        for pred, truth in zip(rows_to_predictions(outputs.detach().cpu()), targets, strict=True):
            truth = {"boxes": truth["boxes"].cpu(), "labels": truth["labels"].cpu()}
            m = match_detections(pred, truth, iou_threshold=self.iou_threshold, score_threshold=0.0)
            labels = pred["labels"][m.kept]
            bins = (pred["scores"][m.kept] * BINS).long().clamp(0, BINS - 1)
            flat = labels * BINS + bins
            tp = torch.bincount(flat[m.true_positive], minlength=k * BINS).view(k, BINS)
            fp = torch.bincount(flat[~m.true_positive], minlength=k * BINS).view(k, BINS)
            self.tp += tp.to(self.tp.device)
            self.fp += fp.to(self.fp.device)
            self.truth += torch.bincount(truth["labels"], minlength=k).to(self.truth.device)

    def empty(self) -> bool:
        return not bool(self.truth.any() or self.tp.any() or self.fp.any())

    def compute(self) -> dict[str, Any]:
        tp = self.tp.flip(1).cumsum(1).double().cpu()  # (K, BINS): predictions at or above each bin
        fp = self.fp.flip(1).cumsum(1).double().cpu()
        truth = self.truth.double().cpu()
        aps = []
        for c in range(len(truth)):
            if truth[c] == 0:
                continue
            recall = tp[c] / truth[c]
            precision = tp[c] / (tp[c] + fp[c]).clamp(min=1)
            # COCO: precision made monotone from the right, sampled at 101 recall points.
            envelope = precision.flip(0).cummax(0).values.flip(0)
            points = torch.linspace(0, 1, 101, dtype=torch.float64)
            idx = torch.searchsorted(recall.contiguous(), points, side="left")
            sampled = torch.where(idx < len(recall), envelope[idx.clamp(max=len(recall) - 1)], 0.0)
            aps.append(float(sampled.mean()))
        at = BINS - int(self.score_threshold * BINS)  # bins at or above the threshold
        tp_at = float(tp[:, at - 1].sum()) if at > 0 else 0.0
        fp_at = float(fp[:, at - 1].sum()) if at > 0 else 0.0
        n = float(truth.sum())
        precision = tp_at / (tp_at + fp_at) if tp_at + fp_at else 0.0
        recall = tp_at / n if n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "map_50": sum(aps) / len(aps) if aps else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
