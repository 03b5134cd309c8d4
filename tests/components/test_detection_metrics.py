"""Detection metrics: hand-worked matches, the P-R curve, and COCO mAP checked against pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import sys
from typing import Any

import pytest
import torch

from torchkiln.components.detection_metrics import (
    coco_map,
    evaluate_detections,
    match_detections,
    pr_curve,
    threshold_scores,
    to_coco,
)
from torchkiln.core.errors import ConfigError, DataError

CAT, DOG = 0, 1


def pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def truth(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


# One image: a cat found, found twice (the duplicate is a false positive), a cat box on the dog (wrong class:
# false positive), the dog and a second cat missed, and a low-scoring box dropped by the threshold.
TRUTH = truth([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [CAT, DOG, CAT])
PRED = pred(
    [[20, 20, 30, 30], [0, 0, 10, 10], [60, 60, 70, 70], [1, 0, 10, 10]],
    [0.7, 0.9, 0.3, 0.8],
    [CAT, CAT, CAT, CAT],
)


def test_match_tp_duplicate_wrong_class_and_misses() -> None:
    m = match_detections(PRED, TRUTH)

    assert m.kept.tolist() == [1, 3, 0]  # score >= 0.5, highest first
    assert m.true_positive.tolist() == [True, False, False]  # the duplicate (0.8) and the wrong class lose
    assert m.matched_truth.tolist() == [0, -1, -1]
    assert m.missed.tolist() == [False, True, True]


def test_threshold_scores_hand_worked() -> None:
    scores = threshold_scores([PRED], [TRUTH])
    expected = {"precision": 1 / 3, "recall": 1 / 3, "f1": pytest.approx(1 / 3), "tp": 1, "fp": 2, "fn": 2}
    assert scores == expected

    # At 0.25 the stray box (IoU 0 with everything) is one more false positive.
    low = threshold_scores([PRED], [TRUTH], score_threshold=0.25)
    assert (low["tp"], low["fp"], low["fn"]) == (1, 3, 2)
    # Two copies of the image: the counts add up, the ratios stay.
    twice = threshold_scores([PRED, PRED], [TRUTH, TRUTH])
    assert (twice["tp"], twice["fp"], twice["fn"], twice["precision"]) == (2, 4, 4, 1 / 3)


def test_the_highest_iou_wins_not_the_first_box() -> None:
    gt = truth([[0, 0, 10, 10], [2, 0, 12, 10]], [CAT, CAT])
    p = pred([[2, 0, 12, 10], [0, 0, 10, 10]], [0.9, 0.8], [CAT, CAT])

    m = match_detections(p, gt)

    # The first prediction overlaps box 0 too (IoU 8/12), but box 1 exactly: it takes box 1, leaving box 0.
    assert m.matched_truth.tolist() == [1, 0]
    assert m.missed.tolist() == [False, False]


def test_iou_threshold_is_inclusive() -> None:
    gt = truth([[0, 0, 10, 20]], [CAT])
    p = pred([[0, 0, 10, 10]], [0.9], [CAT])  # IoU exactly 0.5

    assert match_detections(p, gt, iou_threshold=0.5).true_positive.tolist() == [True]
    assert match_detections(p, gt, iou_threshold=0.51).true_positive.tolist() == [False]


def test_empty_predictions_and_empty_truth() -> None:
    no_pred, no_truth = pred([], [], []), truth([], [])

    m = match_detections(no_pred, TRUTH)
    assert (m.kept.tolist(), m.missed.tolist()) == ([], [True, True, True])
    assert threshold_scores([no_pred], [TRUTH]) == {
        "precision": 0.0,  # nothing predicted: precision is defined as 0
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 3,
    }
    m = match_detections(PRED, no_truth)
    assert (m.true_positive.tolist(), m.matched_truth.tolist(), m.missed.tolist()) == (
        [False, False, False],
        [-1, -1, -1],
        [],
    )
    assert threshold_scores([PRED], [no_truth]) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 3,
        "fn": 0,
    }
    both = match_detections(no_pred, no_truth)
    assert (len(both.kept), len(both.missed)) == (0, 0)


def test_pr_curve_hand_worked_ap() -> None:
    gt = truth([[0, 0, 10, 10], [20, 20, 30, 30]], [CAT, CAT])
    p = pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [CAT, CAT, CAT])

    curve = pr_curve([p], [gt])

    assert curve["recall"] == [0.5, 0.5, 1.0]
    assert curve["precision"] == pytest.approx([1.0, 0.5, 2 / 3])
    assert curve["thresholds"] == pytest.approx([0.9, 0.8, 0.7])
    # All-point interpolation: 0.5 recall at precision 1, then 0.5 more at the envelope's 2/3.
    assert curve["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_pr_curve_ties_make_one_point() -> None:
    gt = truth([[0, 0, 10, 10]], [CAT])
    p = pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.6], [CAT, CAT])

    curve = pr_curve([p], [gt])

    assert (curve["recall"], curve["precision"], curve["thresholds"]) == ([1.0], [0.5], [pytest.approx(0.6)])


# ---- random detections: the curve against threshold_scores, COCO mAP against pycocotools ----------------
CLASSES = ["cat", "dog", "bird"]


def random_detections(n_images: int = 20, seed: int = 0) -> tuple[list, list, list]:
    """Ground truth of many sizes (COCO's small, medium and large) and a noisy detector over it."""
    rng = random.Random(seed)
    preds, truths, sizes = [], [], []
    for i in range(n_images):
        w, h = rng.randint(200, 640), rng.randint(150, 480)
        gt_boxes, gt_labels, boxes, scores, labels = [], [], [], [], []
        for _ in range(0 if i == 0 else rng.randint(1, 6)):  # image 0 has no object
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            gt_boxes.append([x, y, x + bw, y + bh])
            gt_labels.append(rng.randrange(len(CLASSES)))
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, found twice
                j = [rng.gauss(0, 0.08) * s for s in (bw, bh, bw, bh)]
                boxes.append([x + j[0], y + j[1], x + bw + j[2], y + bh + j[3]])
                scores.append(rng.uniform(0.2, 1.0))
                wrong = rng.random() < 0.1
                labels.append(rng.randrange(len(CLASSES)) if wrong else gt_labels[-1])
        for _ in range(rng.randint(0, 3) if i != 1 else 0):  # false positives; image 1 predicts nothing
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            boxes.append([x, y, x + rng.uniform(10, 80), y + rng.uniform(10, 80)])
            scores.append(rng.uniform(0.0, 0.7))
            labels.append(rng.randrange(len(CLASSES)))
        if i == 1:
            boxes, scores, labels = [], [], []
        preds.append(pred(boxes, scores, labels))
        truths.append(truth(gt_boxes, gt_labels))
        sizes.append((w, h))
    return preds, truths, sizes


def _cocoeval(gt: dict, results: list[dict], cat_ids: list[int] | None = None) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_coco_map_agrees_with_pycocotools() -> None:
    preds, truths, sizes = random_detections()
    ours = coco_map(preds, truths, CLASSES)
    gt, results = to_coco(preds, truths, CLASSES, sizes)

    stats = _cocoeval(gt, results).stats

    assert 0.2 < ours["map"] < 0.9  # a detector that is neither perfect nor useless: a meaningful check
    for key, index in [("map", 0), ("map_50", 1), ("map_75", 2), ("map_small", 3), ("mar_100", 8)]:
        assert ours[key] == pytest.approx(stats[index], abs=1e-6), key
    for k, name in enumerate(CLASSES):
        per_class = _cocoeval(gt, results, cat_ids=[k + 1]).stats
        assert ours[f"ap/{name}"] == pytest.approx(per_class[0], abs=1e-6), name
        assert ours[f"ap50/{name}"] == pytest.approx(per_class[1], abs=1e-6), name


def test_matching_agrees_with_pycocotools() -> None:
    preds, truths, sizes = random_detections(seed=3)
    ev = _cocoeval(*to_coco(preds, truths, CLASSES, sizes))
    every = [e for e in ev.evalImgs if e is not None and e["aRng"] == ev.params.areaRng[0]]  # area "all"
    coco_tp = sum(int((e["dtMatches"][0] > 0).sum()) for e in every)  # row 0: IoU 0.5
    coco_missed = sum(int((e["gtMatches"][0] == 0).sum()) for e in every)

    ours = threshold_scores(preds, truths, score_threshold=0.0)

    assert ours["tp"] == coco_tp > 10
    assert ours["fn"] == coco_missed > 0


def test_to_coco_layout() -> None:
    gt, results = to_coco([PRED], [TRUTH], ["cat", "dog"], [(80, 60)])

    assert gt["images"] == [{"id": 1, "width": 80, "height": 60}]
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert gt["annotations"][1] == {
        "id": 2,
        "image_id": 1,
        "category_id": 2,
        "bbox": [20.0, 20.0, 10.0, 10.0],
        "area": 100.0,
        "iscrowd": 0,
    }
    assert [r["bbox"] for r in results][3] == [1.0, 0.0, 9.0, 10.0]
    assert [r["category_id"] for r in results] == [1, 1, 1, 1]
    assert results[0]["score"] == pytest.approx(0.7)
    with pytest.raises(DataError, match="one \\(width, height\\) per image"):
        to_coco([PRED], [TRUTH], ["cat", "dog"], [])


def test_classes_without_ground_truth_have_no_ap() -> None:
    # 'bird' (2) is only predicted, 'dog' (1) appears nowhere: neither gets an AP entry (COCO says -1).
    gt = truth([[0, 0, 40, 40]], [CAT])
    p = pred([[0, 0, 40, 40], [50, 50, 90, 90]], [0.9, 0.8], [CAT, 2])

    out = coco_map([p], [gt], CLASSES)

    assert out["ap/cat"] == pytest.approx(1.0) and out["ap50/cat"] == pytest.approx(1.0)
    assert not {"ap/dog", "ap/bird", "ap50/dog", "ap50/bird"} & out.keys()


def test_pr_curve_matches_threshold_scores_at_its_points() -> None:
    preds, truths, _ = random_detections(seed=1)
    curve = pr_curve(preds, truths)

    recall, precision, thresholds = curve["recall"], curve["precision"], curve["thresholds"]
    assert len(recall) == len(precision) == len(thresholds) > 20
    assert all(a <= b for a, b in itertools.pairwise(recall))
    assert all(a > b for a, b in itertools.pairwise(thresholds))
    assert 0.0 < curve["ap"] <= 1.0
    for i in [0, len(thresholds) // 3, len(thresholds) // 2, len(thresholds) - 1]:
        at = threshold_scores(preds, truths, score_threshold=thresholds[i])
        assert (at["recall"], at["precision"]) == pytest.approx((recall[i], precision[i]), abs=1e-12)


def test_evaluate_detections_is_json_ready_and_consistent() -> None:
    preds, truths, _ = random_detections(n_images=6, seed=2)

    results = evaluate_detections(preds, truths, CLASSES, score_threshold=0.4)

    json.dumps(results, allow_nan=False)
    counts, at = results["counts"], results["at_threshold"]
    assert counts["images"] == 6
    assert counts["truth_boxes"] == sum(len(t["labels"]) for t in truths) == at["tp"] + at["fn"]
    assert counts["predicted_boxes_above_threshold"] == at["tp"] + at["fp"]
    assert sum(c["truth_boxes"] for c in counts["per_class"].values()) == counts["truth_boxes"]
    assert (at["score_threshold"], at["iou_threshold"]) == (0.4, 0.5)
    assert results["coco"]["map"] == pytest.approx(coco_map(preds, truths, CLASSES)["map"])


def test_bad_inputs_say_what_to_fix() -> None:
    with pytest.raises(DataError, match="predictions for 1 images and ground truth for 2"):
        threshold_scores([PRED], [TRUTH, TRUTH])
    with pytest.raises(DataError, match="has the label 1; expected 0-based indices into the 1 classes"):
        coco_map([PRED], [TRUTH], ["cat"])
    with pytest.raises(DataError, match="has no 'scores'"):
        match_detections(truth([[0, 0, 1, 1]], [0]), TRUTH)
    with pytest.raises(DataError, match=r"boxes \(3,\)"):
        match_detections(PRED, {"boxes": torch.zeros(3), "labels": torch.zeros(3, dtype=torch.long)})


def test_coco_map_without_pycocotools_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import pycocotools now raises ImportError

    with pytest.raises(ConfigError, match=r"pip install 'torchkiln\[detect\]'"):
        coco_map([PRED], [TRUTH], ["cat", "dog"])


def test_a_dense_image_counts_up_to_its_own_cap_of_boxes() -> None:
    # 150 true boxes, each found: COCO's cap of 100 detections would stop the recall at 100/150.
    boxes = torch.tensor([[i * 10.0, 0.0, i * 10.0 + 8, 8.0] for i in range(150)])
    truth = {"boxes": boxes, "labels": torch.zeros(150, dtype=torch.long)}
    pred = {
        "boxes": boxes,
        "scores": torch.linspace(0.99, 0.5, 150),
        "labels": torch.zeros(150, dtype=torch.long),
    }
    capped = coco_map([pred], [truth], ["tree"])
    assert capped["mar_100"] == pytest.approx(100 / 150) and capped["max_detections"] == 100
    full = coco_map([pred], [truth], ["tree"], max_detections=300)
    assert full["mar_300"] == pytest.approx(1.0) and full["map_50"] == pytest.approx(1.0)
    # pycocotools' own summary reads mAP@[.5:.95] at 100 detections only (-1 at another cap): ours is read
    # from its precision table at the cap.
    assert full["map"] == pytest.approx(1.0) and full["ap/tree"] == pytest.approx(1.0)
