"""Metrics on tiny examples whose numbers are worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from torchkiln.components.classification_metrics import classification_metrics, pr_curves, roc_curves
from torchkiln.core.errors import DataError

NAMES = ["cat", "dog", "bird"]


def one_hot_probs(preds: list[int], k: int, confidence: float = 0.8) -> torch.Tensor:
    """Rows that put ``confidence`` on the predicted class and share the rest evenly."""
    probs = torch.full((len(preds), k), (1 - confidence) / (k - 1))
    probs[torch.arange(len(preds)), torch.tensor(preds)] = confidence
    return probs


def test_hand_computed_example() -> None:
    # true:  cat cat cat dog dog  bird
    # pred:  cat cat dog dog bird bird
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    probs = one_hot_probs([0, 0, 1, 1, 2, 2], k=3)
    m = classification_metrics(probs, targets, NAMES)

    assert m.confusion_matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m.num_samples == 6
    assert m.accuracy == pytest.approx(4 / 6)
    # precision = TP / predicted: cat 2/2, dog 1/2, bird 1/2; recall = TP / support: 2/3, 1/2, 1/1
    assert [c.precision for c in m.per_class] == pytest.approx([1.0, 0.5, 0.5])
    assert [c.recall for c in m.per_class] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [c.f1 for c in m.per_class] == pytest.approx([0.8, 0.5, 2 / 3])
    assert [c.support for c in m.per_class] == [3, 2, 1]
    assert [c.name for c in m.per_class] == NAMES
    assert m.macro_precision == pytest.approx(2 / 3)
    assert m.macro_recall == pytest.approx(13 / 18)
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_binary_auc_by_hand() -> None:
    # The textbook example: scores 0.1 0.4 | 0.35 0.8 for labels 0 0 | 1 1. Of the four
    # (positive, negative) pairs, three are ranked right, so AUC = 3/4 for both classes.
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8])
    probs = torch.stack([1 - p1, p1], dim=1)
    m = classification_metrics(probs, torch.tensor([0, 0, 1, 1]), ["neg", "pos"])
    assert [c.auc for c in m.per_class] == pytest.approx([0.75, 0.75])
    assert m.macro_auc == pytest.approx(0.75)
    assert m.accuracy == pytest.approx(0.75)
    assert m.confusion_matrix == [[2, 0], [1, 1]]


def test_perfect_predictions() -> None:
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    probs = torch.nn.functional.one_hot(targets, 3).float()
    m = classification_metrics(probs, targets, NAMES)
    assert m.accuracy == 1.0
    assert m.macro_f1 == 1.0
    assert m.macro_auc == 1.0
    assert all(c.auc == 1.0 for c in m.per_class)
    assert m.ece == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("rows", "targets", "expected"),
    [
        # confidence 0.75 and 3 of 4 right: calibrated
        ([[0.75, 0.25]] * 4, [0, 0, 0, 1], 0.0),
        # confidence 0.9 and 2 of 4 right: |0.9 - 0.5| = 0.4
        ([[0.9, 0.1]] * 4, [0, 1, 0, 1], 0.4),
        # two bins, both all right: half at 0.9 (gap 0.1), half at 0.6 (gap 0.4) -> 0.25
        ([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]], [0, 0, 0, 0], 0.25),
    ],
)
def test_ece_by_hand(rows: list[list[float]], targets: list[int], expected: float) -> None:
    m = classification_metrics(torch.tensor(rows), torch.tensor(targets), ["a", "b"])
    assert m.ece == pytest.approx(expected, abs=1e-6)


def test_class_without_samples() -> None:
    targets = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the empty class is handled, not warned about
        m = classification_metrics(probs, targets, NAMES)
        roc_curves(probs, targets)

    bird = m.per_class[2]
    assert bird.support == 0
    assert math.isnan(bird.auc)
    assert not math.isnan(m.per_class[0].auc)
    assert m.macro_auc == pytest.approx((m.per_class[0].auc + m.per_class[1].auc) / 2)
    as_json = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert as_json["per_class"][2]["auc"] is None
    assert as_json["per_class"][0]["auc"] == pytest.approx(m.per_class[0].auc)


def test_single_class_present_gives_undefined_auc() -> None:
    m = classification_metrics(torch.tensor([[0.8, 0.2], [0.6, 0.4]]), torch.tensor([0, 0]), ["a", "b"])
    assert math.isnan(m.macro_auc)
    assert m.to_dict()["macro_auc"] is None
    assert m.accuracy == 1.0


def test_to_dict_is_json_ready() -> None:
    m = classification_metrics(one_hot_probs([0, 1, 2], 3), torch.tensor([0, 1, 1]), NAMES)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert set(d) >= {
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "macro_auc",
        "ece",
        "num_samples",
    }
    assert d["per_class"][1] == {
        "name": "dog",
        "precision": pytest.approx(1.0),
        "recall": pytest.approx(0.5),
        "f1": pytest.approx(2 / 3),
        "support": 2,
        "auc": pytest.approx(m.per_class[1].auc),
    }


def test_curves_have_one_entry_per_class() -> None:
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    probs = torch.nn.functional.one_hot(targets, 3).float()
    rocs, prs = roc_curves(probs, targets), pr_curves(probs, targets)
    assert len(rocs) == len(prs) == 3
    for (fpr, tpr), (precision, recall) in zip(rocs, prs, strict=True):
        assert fpr.shape == tpr.shape and precision.shape == recall.shape
        assert float(fpr[0]) == 0.0 and float(tpr[-1]) == 1.0
        # perfect separation: the curve reaches TPR 1 while FPR is still 0
        assert bool(((fpr == 0) & (tpr == 1)).any())


@pytest.mark.parametrize(
    ("probs", "targets", "names", "match"),
    [
        (torch.randn(4, 3) * 5, torch.tensor([0, 1, 2, 0]), NAMES, "logits.softmax"),
        (one_hot_probs([0, 1], 3), torch.tensor([0, 1]), ["a", "b"], "3 columns but there are 2"),
        (one_hot_probs([0, 1], 3), torch.tensor([0, 3]), NAMES, r"targets must lie in \[0, 2\]"),
        (one_hot_probs([0, 1], 3), torch.eye(3)[:2], NAMES, "not one-hot"),
        (torch.rand(5), torch.tensor([0]), NAMES, "shape"),
    ],
)
def test_bad_inputs_raise_data_error(
    probs: torch.Tensor, targets: torch.Tensor, names: list[str], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        classification_metrics(probs, targets, names)


def test_the_wilson_interval_matches_the_hand_computed_value() -> None:
    from torchkiln.components.classification_metrics import wilson_interval

    # 8 of 10, z = 1.96: centre (0.8 + z²/20) / (1 + z²/10) = 0.71674, half-width
    # z / (1 + z²/10) * sqrt(0.8 * 0.2 / 10 + z²/400) = 0.22658, so [0.4902, 0.9433].
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0  # never outside [0, 1]
    assert wilson_interval(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)  # and not zero-wide at 0 hits
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_two_classes_at_an_operating_point() -> None:
    from torchkiln.components.classification_threshold import Decision

    p1 = torch.tensor([0.1, 0.35, 0.45, 0.2, 0.4, 0.8])  # p('pos'); truth: neg neg neg pos pos pos
    probs, targets = torch.stack([1 - p1, p1], dim=1), torch.tensor([0, 0, 0, 1, 1, 1])
    argmax = classification_metrics(probs, targets, ["neg", "pos"])
    b = argmax.binary
    assert b.threshold is None and (b.tp, b.fp, b.tn, b.fn) == (1, 0, 3, 2)
    assert argmax.confusion_matrix == [[3, 0], [2, 1]]
    low = classification_metrics(probs, targets, ["neg", "pos"], decision=Decision(positive=1, threshold=0.2))
    b = low.binary
    # At p >= 0.2: TP 0.2 0.4 0.8, FP 0.35 0.45, TN 0.1.
    assert b.threshold == 0.2 and (b.tp, b.fp, b.tn, b.fn) == (3, 2, 1, 0)
    assert low.confusion_matrix == [[1, 2], [0, 3]] and low.accuracy == pytest.approx(4 / 6)
    assert (b.sensitivity.value, b.specificity.value, b.ppv.value) == pytest.approx((1.0, 1 / 3, 0.6))
    assert (b.sensitivity.hits, b.sensitivity.total, b.npv.hits, b.npv.total) == (3, 3, 1, 1)
    assert (b.recall, b.precision) == pytest.approx((b.sensitivity.value, b.ppv.value))
    assert b.brier == pytest.approx(((p1 - targets.float()) ** 2).mean().item())
    assert low.macro_auc == argmax.macro_auc and low.ece == argmax.ece  # they read the probabilities
    # 'neg' as the positive class: its rates, from the same probabilities.
    flipped = classification_metrics(probs, targets, ["neg", "pos"], positive=0).binary
    assert flipped.positive == "neg" and (flipped.tp, flipped.fn) == (3, 0)
    d = low.to_dict()["binary"]
    assert d["sensitivity"] == {
        "value": 1.0,
        "low": pytest.approx(0.43850, abs=1e-5),
        "high": 1.0,
        "hits": 3,
        "total": 3,
    }
    assert d["interval"] == "95% Wilson score interval"


def test_an_operating_point_needs_two_classes() -> None:
    from torchkiln.components.classification_threshold import Decision

    with pytest.raises(
        DataError, match=r"An operating point \(a threshold on p\(positive\)\) needs two classes"
    ):
        classification_metrics(
            one_hot_probs([0, 1, 2], 3), torch.tensor([0, 1, 2]), NAMES, decision=Decision(1, 0.3)
        )
