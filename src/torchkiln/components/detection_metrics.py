"""Object-detection metrics: greedy matching, precision/recall at a threshold, the P-R curve and COCO mAP.

Boxes are absolute pixel ``xyxy`` (:mod:`torchkiln.components.boxes`). A prediction is
``{"boxes": (N, 4) float, "scores": (N,) float, "labels": (N,) long}`` and a ground truth
``{"boxes": (M, 4) float, "labels": (M,) long}``, torchvision's convention; labels index ``classes``.

Two kinds of numbers come out, for two jobs:

- **At one operating point** (:func:`match_detections`, :func:`threshold_scores`): the predictions with
  ``score >= score_threshold`` are matched to the ground truth the way COCO matches them (highest score
  first, each to the unmatched box of its class with the highest IoU ``>= iou_threshold``). This is what a
  user sees when the model runs with that threshold, and what the drawn examples show.
- **Over all thresholds**: :func:`coco_map` is the COCO mAP from pycocotools, through torchmetrics (the
  numbers papers quote), and :func:`pr_curve` the precision-recall curve with every class pooled, for the
  report's plot.

:func:`to_coco` writes the same inputs as COCO dicts, so the numbers can be checked against pycocotools
(``tests/components/test_detection_metrics.py`` does) or another COCO tool.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from torchkiln.components.boxes import xyxy_to_coco
from torchkiln.core.errors import ConfigError, DataError

Target = Mapping[str, Tensor]  # a prediction or a ground truth of one image (see the module doc)
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # and mar_<N> per cap


@dataclass(frozen=True)
class Matches:
    """How the predictions of one image match its ground truth (:func:`match_detections`).

    Attributes:
        kept: ``(K,)`` long, the indices of the predictions with ``score >= score_threshold``, highest
            score first (the order they were matched in; ties keep their input order).
        true_positive: ``(K,)`` bool, per kept prediction: it matched a ground-truth box.
        matched_truth: ``(K,)`` long, per kept prediction: the index of its ground-truth box, or -1.
        missed: ``(M,)`` bool, per ground-truth box: no kept prediction matched it (a false negative).
    """

    kept: Tensor
    true_positive: Tensor
    matched_truth: Tensor
    missed: Tensor


def _check_target(target: Target, where: str, *, scores: bool) -> None:
    keys = ("boxes", "scores", "labels") if scores else ("boxes", "labels")
    missing = [k for k in keys if k not in target]
    if missing:
        raise DataError(
            f"The {where} has no {', '.join(repr(k) for k in missing)}; expected a dict with the keys "
            f"{', '.join(repr(k) for k in keys)} (torchvision's detection convention). Fix: pass the model's "
            "output (preds) or the dataset's target (truths) as such a dict."
        )
    boxes, n = target["boxes"], len(target["labels"])
    if (
        boxes.ndim != 2
        or boxes.shape[1] != 4
        or len(boxes) != n
        or (scores and target["scores"].shape != (n,))
    ):
        shapes = ", ".join(f"{k} {tuple(target[k].shape)}" for k in keys)
        raise DataError(
            f"The {where} has {shapes}; expected boxes (N, 4), labels (N,)"
            f"{' and scores (N,)' if scores else ''} with one N. Fix: give one row per box, in xyxy pixels."
        )


def _check_lists(preds: Sequence[Target], truths: Sequence[Target], classes: Sequence[str] | None) -> None:
    if len(preds) != len(truths):
        raise DataError(
            f"Got predictions for {len(preds)} images and ground truth for {len(truths)}; expected one of "
            "each per image, in the same order. Fix: pass the lists of one evaluation run."
        )
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        _check_target(pred, f"prediction of image {i}", scores=True)
        _check_target(truth, f"ground truth of image {i}", scores=False)
        if classes is None:
            continue
        for where, labels in (("prediction", pred["labels"]), ("ground truth", truth["labels"])):
            bad = labels[(labels < 0) | (labels >= len(classes))]
            if len(bad):
                raise DataError(
                    f"The {where} of image {i} has the label {int(bad[0])}; expected 0-based indices into "
                    f"the {len(classes)} classes. Fix: map the labels to 0..{len(classes) - 1}, in the "
                    "order of the class names."
                )


def _greedy(pred: Target, truth: Target, order: Tensor, iou_threshold: float) -> Tensor:
    """Match the predictions ``order`` (highest score first) one by one; returns their gt index or -1."""
    truth_boxes, truth_labels = truth["boxes"].float(), truth["labels"]
    matched = torch.full((len(order),), -1, dtype=torch.long)
    if len(order) == 0 or len(truth_boxes) == 0:
        return matched
    iou = box_iou(pred["boxes"][order].float(), truth_boxes)  # (K, M)
    iou[pred["labels"][order][:, None] != truth_labels[None, :]] = -1.0  # only the same class matches
    taken: set[int] = set()  # each ground-truth box matches once
    for i, row in enumerate(iou.tolist()):  # plain floats: a per-row tensor loop is ~10x slower
        # The best free box; on a tie the later one, as pycocotools picks.
        best, j = max(((v, j) for j, v in enumerate(row) if j not in taken), default=(-1.0, -1))
        if best >= iou_threshold:
            matched[i] = j
            taken.add(j)
    return matched


def match_detections(
    pred: Target, truth: Target, *, iou_threshold: float = 0.5, score_threshold: float = 0.5
) -> Matches:
    """Match the predictions of one image with ``score >= score_threshold`` to its ground truth, as COCO does.

    Highest score first, each prediction takes the unmatched ground-truth box of its class with the highest
    IoU, if that IoU is ``>= iou_threshold``; otherwise it is a false positive. A second detection of a box
    already taken is a false positive too. Crowd regions and COCO's 100-detection cap do not apply here.

    Args:
        pred: ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``, ``xyxy`` pixels; ``N`` may be 0.
        truth: ``{"boxes": (M, 4), "labels": (M,)}``; ``M`` may be 0.
        iou_threshold: the IoU a match needs.
        score_threshold: predictions scoring below it are dropped before matching.

    Returns:
        The :class:`Matches`.

    Raises:
        DataError: if a dict lacks a key or the shapes disagree.

    Example:
        >>> pred = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
        ...         "labels": torch.tensor([0])}
        >>> truth = {"boxes": torch.tensor([[1.0, 0, 10, 10]]), "labels": torch.tensor([0])}
        >>> match_detections(pred, truth).true_positive.tolist()
        [True]
    """
    _check_target(pred, "prediction", scores=True)
    _check_target(truth, "ground truth", scores=False)
    scores = pred["scores"].detach().cpu()
    kept = (scores >= score_threshold).nonzero().squeeze(1)
    kept = kept[scores[kept].argsort(descending=True, stable=True)]
    cpu = {k: pred[k].detach().cpu() for k in ("boxes", "labels")}
    gt = {k: truth[k].detach().cpu() for k in ("boxes", "labels")}
    matched = _greedy(cpu, gt, kept, iou_threshold)
    missed = torch.ones(len(gt["labels"]), dtype=torch.bool)
    missed[matched[matched >= 0]] = False
    return Matches(kept=kept, true_positive=matched >= 0, matched_truth=matched, missed=missed)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def threshold_scores(
    preds: Sequence[Target],
    truths: Sequence[Target],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> dict[str, float | int]:
    """Precision, recall and F1 at one score threshold, summed over the images (micro, every class pooled).

    Each image is matched with :func:`match_detections`. ``precision`` is 0 when nothing scores
    ``>= score_threshold`` (no prediction, none right), ``recall`` is 0 when there is no ground-truth box,
    and ``f1`` is 0 when both are 0.

    Args:
        preds: one prediction dict per image.
        truths: one ground-truth dict per image, in the same order.
        iou_threshold: the IoU a match needs.
        score_threshold: the lowest score that counts as a detection.

    Returns:
        ``{"precision", "recall", "f1"}`` (floats) and ``{"tp", "fp", "fn"}`` (box counts).

    Raises:
        DataError: if the lists differ in length or a dict is malformed.

    Example:
        >>> threshold_scores([pred], [truth], score_threshold=0.3)
        {'precision': 1.0, 'recall': 0.5, 'f1': 0.666..., 'tp': 1, 'fp': 0, 'fn': 1}
    """
    _check_lists(preds, truths, None)
    tp = fp = fn = 0
    for pred, truth in zip(preds, truths, strict=True):
        m = match_detections(pred, truth, iou_threshold=iou_threshold, score_threshold=score_threshold)
        hits = int(m.true_positive.sum())
        tp, fp, fn = tp + hits, fp + len(m.kept) - hits, fn + int(m.missed.sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def pr_curve(
    preds: Sequence[Target], truths: Sequence[Target], *, iou_threshold: float = 0.5
) -> dict[str, Any]:
    """The precision-recall curve over every score threshold, all classes pooled, in one pass.

    Every prediction is matched once (:func:`match_detections` at the lowest threshold). Greedy matching
    goes by score, so the matches at a higher threshold are a prefix of these: sorting all predictions by
    score and counting true and false positives cumulatively gives :func:`threshold_scores` at each
    threshold exactly. There is one point per distinct score (``thresholds``, descending).

    ``ap`` is the area under the interpolated curve (all-point interpolation: precision made
    non-increasing from the right, summed over the recall steps). It pools the classes and uses one IoU,
    so it is a summary of this plot, not COCO's mAP; the COCO numbers come from :func:`coco_map`.
    With no ground-truth box, recall and ``ap`` are 0.

    Args:
        preds: one prediction dict per image.
        truths: one ground-truth dict per image, in the same order.
        iou_threshold: the IoU a match needs.

    Returns:
        ``{"recall": [...], "precision": [...], "thresholds": [...], "ap": float}``; the lists are empty
        when there is no prediction.

    Raises:
        DataError: if the lists differ in length or a dict is malformed.

    Example:
        >>> curve = pr_curve(preds, truths)
        >>> curve["recall"][-1], curve["ap"]
        (0.83, 0.71)
    """
    _check_lists(preds, truths, None)
    scores, hits, n_truth = [], [], 0
    for pred, truth in zip(preds, truths, strict=True):
        m = match_detections(pred, truth, iou_threshold=iou_threshold, score_threshold=-float("inf"))
        scores.append(pred["scores"].detach().cpu().double()[m.kept])
        hits.append(m.true_positive)
        n_truth += len(m.missed)
    score = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    hit = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    order = score.argsort(descending=True, stable=True)
    score, hit = score[order], hit[order]
    tp = hit.cumsum(0).double()  # (P,) true positives among the P highest scores
    last = torch.ones(len(score), dtype=torch.bool)  # the last prediction of each run of equal scores
    last[:-1] = score[1:] != score[:-1]
    tp, seen, thresholds = tp[last], (torch.arange(len(score)) + 1.0)[last], score[last]
    recall = tp / n_truth if n_truth else torch.zeros_like(tp)
    precision = tp / seen
    return {
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "thresholds": thresholds.tolist(),
        "ap": _all_point_ap(recall, precision),
    }


def _all_point_ap(recall: Tensor, precision: Tensor) -> float:
    """Area under the precision-recall points with precision made non-increasing (VOC 2010+, COCO style)."""
    if len(recall) == 0:
        return 0.0
    envelope = precision.flip(0).cummax(0).values.flip(0)  # (P,) best precision at this recall or beyond
    steps = torch.diff(recall, prepend=recall.new_zeros(1))  # (P,) recall gained at each point
    return float((steps * envelope).sum())


def coco_map(
    preds: Sequence[Target], truths: Sequence[Target], classes: Sequence[str], *, max_detections: int = 100
) -> dict[str, float]:
    """COCO box mAP and mAR from pycocotools, through ``torchmetrics.detection.MeanAveragePrecision``.

    ``map`` averages AP over IoU 0.50:0.05:0.95 and the classes; ``map_50``/``map_75`` at one IoU;
    ``map_small/medium/large`` by box area (< 32², < 96², above); ``mar_1``, ``mar_10`` and
    ``mar_<max_detections>`` are the recall with at most that many detections per image. Every AP counts the
    best ``max_detections`` boxes of an image: COCO's 100 would cap the recall of an image with 279 trees at
    36 %, so dense scenes pass their own cap (``max_detections`` is in the result too). A value is -1
    where COCO has nothing to average (no ground-truth box in that group). Per class: ``ap/<name>``
    (AP@[.5:.95]) and ``ap50/<name>`` (AP@.5, read from the same evaluation's precision table, so it costs
    no second run). A class without ground-truth boxes has no AP and is left out.

    Args:
        preds: one prediction dict per image (all of them: do not filter by score, AP sweeps the scores).
        truths: one ground-truth dict per image, in the same order.
        classes: the class names; labels index them.
        max_detections: the boxes per image that count (COCO's default is 100).

    Returns:
        The numbers above, as floats.

    Raises:
        ConfigError: if pycocotools is not installed.
        DataError: if the lists differ in length, a dict is malformed or a label is out of range.

    Example:
        >>> coco_map(preds, truths, ["cat", "dog"])["map_50"]
        0.734
    """
    _check_lists(preds, truths, classes)
    try:
        import pycocotools  # noqa: F401  (torchmetrics' error would not name our extra)
    except ImportError:
        raise ConfigError(
            "COCO mAP needs pycocotools, which is not installed. Fix: pip install 'torchkiln[detect]'."
        ) from None
    from torchmetrics.detection import MeanAveragePrecision  # here: importing it takes seconds

    caps = sorted({1, 10, max_detections})
    metric = MeanAveragePrecision(
        max_detection_thresholds=caps,
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=True,
        backend="pycocotools",
        average="macro",  # per-class evaluation: the precision table then has one column per class
        extended_summary=True,  # that table, for AP@.5 per class
    )
    metric.warn_on_many_detections = False  # more boxes than the cap: the cap is the caller's choice
    metric.update(
        [{k: _cpu(p[k]) for k in ("boxes", "scores", "labels")} for p in preds],
        [{k: _cpu(t[k]) for k in ("boxes", "labels")} for t in truths],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        out = metric.compute()
    result = {key: float(out[key]) for key in COCO_KEYS} | {f"mar_{n}": float(out[f"mar_{n}"]) for n in caps}
    if "precision" in out:
        # pycocotools' summarize() reads mAP@[.5:.95] (overall, by area, per class) at 100 detections
        # whatever maxDets holds, so with another cap it says -1: read them from its precision table at the
        # last cap instead, averaged as summarize() does (entries > -1). With the cap at 100 they are equal.
        table = out["precision"][..., -1]  # (IoU 10, recall 101, class K, area 4)
        for key, area in (("map", 0), ("map_small", 1), ("map_medium", 2), ("map_large", 3)):
            result[key] = _mean_valid(table[:, :, :, area])
        result["map_50"], result["map_75"] = _mean_valid(table[0, :, :, 0]), _mean_valid(table[5, :, :, 0])
    return result | {"max_detections": float(max_detections)} | _per_class(out, classes)


def _mean_valid(values: Tensor) -> float:
    """The mean of the entries > -1 (COCO marks an empty cell -1), or -1 when none is."""
    kept = values[values > -1]
    return float(kept.double().mean()) if len(kept) else -1.0


def _cpu(x: Tensor) -> Tensor:
    """On the CPU; boxes and scores as float32, labels as long (what torchmetrics stores)."""
    x = x.detach().cpu()
    return x.float() if x.is_floating_point() else x.long()


def _per_class(out: Mapping[str, Any], classes: Sequence[str]) -> dict[str, float]:
    """``ap/<name>`` and ``ap50/<name>`` from torchmetrics' output, classes without ground truth left out."""
    if "precision" not in out:  # no image at all: torchmetrics skips pycocotools
        return {}
    labels = out["classes"].reshape(-1).tolist()  # sorted: the order of the precision table's K axis
    table = out["precision"][:, :, :, 0, -1]  # (IoU, R, K): area "all", the last detection cap
    result: dict[str, float] = {}
    for k, label in enumerate(labels):
        value = _mean_valid(table[:, :, k])
        if value > -1:
            result[f"ap/{classes[label]}"] = value
            result[f"ap50/{classes[label]}"] = _mean_valid(table[0, :, k])
    return result


def to_coco(
    preds: Sequence[Target],
    truths: Sequence[Target],
    classes: Sequence[str],
    sizes: Sequence[tuple[int, int]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth as a COCO dataset dict and the predictions as a COCO results list.

    Image ``i`` gets id ``i + 1`` and class ``k`` the category id ``k + 1``; ``bbox`` is ``[x, y, w, h]``
    from the top-left corner (computed in float32, as torchmetrics does, so IoUs agree to the bit),
    ``area`` is ``w * h`` and ``iscrowd`` 0. Feed them to pycocotools: ``coco.dataset = gt;
    coco.createIndex(); coco.loadRes(results)`` (``loadRes`` refuses an empty list).

    Args:
        preds: one prediction dict per image.
        truths: one ground-truth dict per image, in the same order.
        classes: the class names; labels index them.
        sizes: ``(width, height)`` of each image, in pixels.

    Returns:
        ``(dataset, results)``: ``dataset`` has ``images``, ``categories`` and ``annotations``; each result
        is ``{"image_id", "category_id", "bbox", "score"}``.

    Raises:
        DataError: if the lists differ in length, a dict is malformed or a label is out of range.

    Example:
        >>> gt, dt = to_coco(preds, truths, ["cat", "dog"], [(640, 480)] * len(truths))
        >>> json.dump(gt, open("instances_val.json", "w"))
    """
    _check_lists(preds, truths, classes)
    if len(sizes) != len(truths):
        raise DataError(
            f"Got {len(sizes)} image sizes for {len(truths)} images; expected one (width, height) per image. "
            "Fix: pass the size of every evaluated image, in order."
        )
    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(sizes)]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    annotations, results = [], []
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        boxes = xyxy_to_coco(truth["boxes"].detach().cpu().float()).tolist()
        for box, label in zip(boxes, truth["labels"].tolist(), strict=True):
            area = box[2] * box[3]
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1, "bbox": box}
            annotations.append(ann | {"area": area, "iscrowd": 0})
        boxes = xyxy_to_coco(pred["boxes"].detach().cpu().float()).tolist()
        for box, label, score in zip(boxes, pred["labels"].tolist(), pred["scores"].tolist(), strict=True):
            results.append({"image_id": i + 1, "category_id": label + 1, "bbox": box, "score": score})
    return {"images": images, "categories": categories, "annotations": annotations}, results


def evaluate_detections(
    preds: Sequence[Target],
    truths: Sequence[Target],
    classes: Sequence[str],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict[str, Any]:
    """Every detection metric in one JSON-ready dict (what the report and ``metrics.json`` show).

    Args:
        preds: one prediction dict per image, unfiltered (every score).
        truths: one ground-truth dict per image, in the same order.
        classes: the class names; labels index them.
        score_threshold: the operating point of ``at_threshold`` and the counts.
        iou_threshold: the IoU a match needs in ``at_threshold`` and ``pr_curve`` (COCO uses its own).
        max_detections: the boxes per image COCO's figures count (see :func:`coco_map`).

    Returns:
        ``{"coco": coco_map(...), "at_threshold": threshold_scores(...) | the two thresholds,
        "pr_curve": pr_curve(...) | {"iou_threshold"}, "counts": {...}}``; ``counts`` holds ``images``,
        ``truth_boxes``, ``predicted_boxes_above_threshold`` and ``per_class``: for each class name, its
        ``truth_boxes`` and ``predicted_boxes_above_threshold``.

    Raises:
        ConfigError: if pycocotools is not installed.
        DataError: if the lists differ in length, a dict is malformed or a label is out of range.

    Example:
        >>> results = evaluate_detections(preds, truths, ["cat", "dog"], score_threshold=0.4)
        >>> results["coco"]["map"], results["at_threshold"]["f1"]
        (0.41, 0.66)
    """
    _check_lists(preds, truths, classes)
    thresholds = {"score_threshold": score_threshold, "iou_threshold": iou_threshold}
    return {
        "coco": coco_map(preds, truths, classes, max_detections=max_detections),
        "at_threshold": threshold_scores(preds, truths, **thresholds) | thresholds,
        "pr_curve": pr_curve(preds, truths, iou_threshold=iou_threshold) | {"iou_threshold": iou_threshold},
        "counts": _counts(preds, truths, classes, score_threshold),
    }


def _counts(
    preds: Sequence[Target], truths: Sequence[Target], classes: Sequence[str], score_threshold: float
) -> dict[str, Any]:
    """How many images, ground-truth boxes and predictions at or above the threshold; in all and per class."""
    empty = torch.zeros(0, dtype=torch.long)
    truth = torch.cat([t["labels"].detach().cpu().long() for t in truths] or [empty])
    kept = torch.cat(
        [p["labels"].detach().cpu().long()[p["scores"].detach().cpu() >= score_threshold] for p in preds]
        or [empty]
    )
    n_truth, n_kept = (torch.bincount(x, minlength=len(classes)).tolist() for x in (truth, kept))
    per_class = {
        name: {"truth_boxes": n_truth[c], "predicted_boxes_above_threshold": n_kept[c]}
        for c, name in enumerate(classes)
    }
    return {
        "images": len(truths),
        "truth_boxes": len(truth),
        "predicted_boxes_above_threshold": len(kept),
        "per_class": per_class,
    }
