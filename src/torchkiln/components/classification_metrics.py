"""Classification metrics, computed with torchmetrics from softmax probabilities.

Everything here works on ``probs: (N, K)`` (rows sum to 1) and ``targets: (N,)`` class indices.
Binary problems are ``K == 2``; they get sensitivity, specificity, PPV and NPV with Wilson intervals
and the Brier score, at the model's operating point (a threshold on p(positive), or argmax). A class
with no samples in ``targets`` has an undefined ROC AUC: it is ``nan`` here, ``null`` in JSON, and left
out of ``macro_auc``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_precision_recall_curve,
    multiclass_recall,
    multiclass_roc,
)

from torchkiln.components.classification_threshold import Decision
from torchkiln.core.errors import DataError

ECE_BINS = 15
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 % intervals
Curve = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ClassMetrics:
    """One-vs-rest metrics of one class. ``auc`` is ``nan`` when the class has no samples (or only them)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int
    auc: float


@dataclass(frozen=True)
class Rate:
    """A proportion ``hits / total`` with its 95 % Wilson score interval; all ``nan`` when ``total`` is 0."""

    value: float
    low: float
    high: float
    hits: int
    total: int

    @classmethod
    def of(cls, hits: int, total: int) -> Rate:
        low, high = wilson_interval(hits, total)
        return cls(hits / total if total else math.nan, low, high, hits, total)


@dataclass(frozen=True)
class BinaryMetrics:
    """Two classes, at the operating point: the positive class's metrics (by default the second class, e.g.
    'positive' or 'PNEUMONIA'), the confusion counts, and four rates with 95 % Wilson intervals.

    ``threshold`` is ``None`` for argmax answers. sensitivity = recall = TP / (TP + FN), specificity =
    TN / (TN + FP), PPV = precision = TP / (TP + FP), NPV = TN / (TN + FN). ``brier`` is the mean squared
    error of p(positive) against 0/1 truth.
    """

    positive: str
    precision: float
    recall: float
    f1: float
    auc: float
    threshold: float | None
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Rate
    specificity: Rate
    ppv: Rate
    npv: Rate
    brier: float
    interval: str = "95% Wilson score interval"


@dataclass(frozen=True)
class ClassificationMetrics:
    """The numbers of one evaluation; build it with :func:`classification_metrics`.

    ``confusion_matrix[i][j]`` counts samples of true class ``i`` predicted as class ``j``.
    Macro precision/recall/F1 follow torchmetrics: a class absent from both targets and predictions
    is left out of the average. ``macro_auc`` averages the classes whose AUC is defined.
    """

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]
    macro_auc: float
    ece: float
    num_samples: int
    binary: BinaryMetrics | None = None  # set when there are exactly two classes

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; undefined values (``nan``) become ``None``.

        Returns:
            Plain dicts, lists, floats, ints and strings; ``json.dumps(..., allow_nan=False)`` accepts it.

        Example:
            >>> json.dumps(metrics.to_dict(), allow_nan=False)
        """
        return _nan_to_none(asdict(self))


def classification_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str],
    *,
    decision: Decision | None = None,
    positive: int = 1,
) -> ClassificationMetrics:
    """Compute accuracy, per-class and macro P/R/F1, confusion matrix, one-vs-rest AUC and ECE.

    Args:
        probs: ``(N, K)`` probabilities (softmax already applied), on any device.
        targets: ``(N,)`` integer class indices in ``[0, K)``.
        class_names: ``K`` names, in class-index order.
        decision: a two-class model's operating point; the predictions (accuracy, P/R/F1, the confusion
            matrix, the binary rates) are taken at it. ``None``: argmax.
        positive: the positive class of a two-class task without a ``decision`` (it names its own).

    Returns:
        A :class:`ClassificationMetrics`. The ECE uses 15 equal-width confidence bins (L1 norm); AUC and
        ECE read the probabilities, whatever the operating point.

    Raises:
        DataError: if the shapes disagree, a target is out of range, ``probs`` are not probabilities
            (for example logits), or a ``decision`` is given for more than two classes.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
        >>> classification_metrics(probs, torch.tensor([0, 1]), ["cat", "dog"]).accuracy
        1.0
    """
    probs, targets = check_inputs(probs, targets, num_classes=len(class_names))
    k = len(class_names)
    preds = predictions(probs, decision)
    support = torch.bincount(targets, minlength=k)  # (K,)
    precision = multiclass_precision(preds, targets, num_classes=k, average="none")
    recall = multiclass_recall(preds, targets, num_classes=k, average="none")
    f1 = multiclass_f1_score(preds, targets, num_classes=k, average="none")
    auc = _per_class_auc(probs, targets, support)
    per_class = [
        ClassMetrics(
            name=name,
            precision=float(precision[c]),
            recall=float(recall[c]),
            f1=float(f1[c]),
            support=int(support[c]),
            auc=float(auc[c]),
        )
        for c, name in enumerate(class_names)
    ]
    defined_auc = auc[~auc.isnan()]
    binary = None
    if k == 2:
        pos = decision.positive if decision is not None else positive
        threshold = decision.threshold if decision is not None else None
        binary = _binary(per_class[pos], probs[:, pos], targets == pos, preds == pos, threshold)
    return ClassificationMetrics(
        accuracy=float(multiclass_accuracy(preds, targets, num_classes=k, average="micro")),
        macro_precision=float(multiclass_precision(preds, targets, num_classes=k, average="macro")),
        macro_recall=float(multiclass_recall(preds, targets, num_classes=k, average="macro")),
        macro_f1=float(multiclass_f1_score(preds, targets, num_classes=k, average="macro")),
        per_class=per_class,
        confusion_matrix=multiclass_confusion_matrix(preds, targets, num_classes=k).tolist(),
        macro_auc=float(defined_auc.mean()) if len(defined_auc) else math.nan,
        ece=float(multiclass_calibration_error(probs, targets, num_classes=k, n_bins=ECE_BINS, norm="l1")),
        num_samples=len(targets),
        binary=binary,
    )


def predictions(probs: torch.Tensor, decision: Decision | None = None) -> torch.Tensor:
    """``(N, K)`` probabilities -> ``(N,)`` int64 predicted classes: the argmax, or at ``decision``.

    Raises:
        DataError: a ``decision`` (an operating point) for more than two classes.
    """
    if decision is None:
        return probs.argmax(dim=1)
    if probs.shape[1] != 2:
        raise DataError(
            f"An operating point (a threshold on p(positive)) needs two classes; probs has "
            f"{probs.shape[1]}. Leave the decision out: a task of more classes answers its argmax."
        )
    return decision.predict(probs)


def wilson_interval(hits: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``hits / total`` (95 % with the default ``z``).

    Unlike the normal approximation p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-wide
    at 0 or n hits (Wilson, 1927; Brown, Cai & DasGupta, 2001 recommend it for small n).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``total`` is 0.

    Example:
        >>> wilson_interval(8, 10)  # (0.4902, 0.9433)
    """
    if total == 0:
        return math.nan, math.nan
    p, z2 = hits / total, z * z
    center = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    # Exactly 0 at no hits and 1 at all hits (rounding would leave 1e-16 off).
    return (0.0 if hits == 0 else center - half), (1.0 if hits == total else center + half)


def _binary(
    pos: ClassMetrics, score: torch.Tensor, truth: torch.Tensor, said: torch.Tensor, threshold: float | None
) -> BinaryMetrics:
    """``score``: (N,) p(positive); ``truth``, ``said``: (N,) bool, the true and the predicted positives."""
    tp, fp = int((said & truth).sum()), int((said & ~truth).sum())
    tn, fn = int((~said & ~truth).sum()), int((~said & truth).sum())
    return BinaryMetrics(
        positive=pos.name,
        precision=pos.precision,
        recall=pos.recall,
        f1=pos.f1,
        auc=pos.auc,
        threshold=threshold,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=Rate.of(tp, tp + fn),
        specificity=Rate.of(tn, tn + fp),
        ppv=Rate.of(tp, tp + fp),
        npv=Rate.of(tn, tn + fn),
        brier=float(((score.double() - truth.double()) ** 2).mean()),
    )


def roc_curves(probs: torch.Tensor, targets: torch.Tensor) -> list[Curve]:
    """One-vs-rest ROC curve of every class, for plotting.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N,)`` class indices.

    Returns:
        ``K`` pairs ``(fpr, tpr)`` of 1-D CPU tensors. The curve of a class without samples
        is meaningless (its ``tpr`` is all zero); check the support before drawing it.

    Raises:
        DataError: on the same bad inputs as :func:`classification_metrics`.

    Example:
        >>> fpr, tpr = roc_curves(probs, targets)[0]
    """
    probs, targets = check_inputs(probs, targets)
    with _quiet_empty_class():
        fpr, tpr, _ = multiclass_roc(probs, targets, num_classes=probs.shape[1])
    return list(zip(fpr, tpr, strict=True))


def pr_curves(probs: torch.Tensor, targets: torch.Tensor) -> list[Curve]:
    """One-vs-rest precision-recall curve of every class, for plotting.

    Args:
        probs: ``(N, K)`` probabilities.
        targets: ``(N,)`` class indices.

    Returns:
        ``K`` pairs ``(precision, recall)`` of 1-D CPU tensors, recall decreasing to 0.

    Raises:
        DataError: on the same bad inputs as :func:`classification_metrics`.

    Example:
        >>> precision, recall = pr_curves(probs, targets)[0]
    """
    probs, targets = check_inputs(probs, targets)
    with _quiet_empty_class():
        precision, recall, _ = multiclass_precision_recall_curve(probs, targets, num_classes=probs.shape[1])
    return list(zip(precision, recall, strict=True))


def check_inputs(
    probs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``probs``/``targets`` and return them as float32 / int64 CPU tensors.

    Args:
        probs: ``(N, K)`` probabilities; each row must sum to 1.
        targets: ``(N,)`` integer class indices.
        num_classes: the expected ``K`` (the number of class names), or ``None`` to take it from ``probs``.

    Returns:
        ``(probs, targets)`` detached, on the CPU.

    Raises:
        DataError: if anything above does not hold; the message says what was found.

    Example:
        >>> probs, targets = check_inputs(logits.softmax(-1), labels, num_classes=10)
    """
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise DataError(
            f"probs must have shape (N, K) with N >= 1 samples and K >= 2 classes. Got shape "
            f"{tuple(probs.shape)} instead. Stack the per-batch outputs with torch.cat first."
        )
    n, k = probs.shape
    if num_classes is not None and k != num_classes:
        raise DataError(
            f"probs has {k} columns but there are {num_classes} class names. The model output and the "
            f"label list must match; check that the bundle's labels belong to this model."
        )
    if targets.shape != (n,) or targets.is_floating_point() or targets.is_complex():
        raise DataError(
            f"targets must be integer class indices of shape ({n},). Got {targets.dtype} of shape "
            f"{tuple(targets.shape)} instead. Pass indices, not one-hot vectors (use argmax(-1))."
        )
    probs = probs.detach().float().cpu()
    targets = targets.detach().long().cpu()
    if targets.min() < 0 or targets.max() >= k:
        raise DataError(
            f"targets must lie in [0, {k - 1}]. Got values from {int(targets.min())} to "
            f"{int(targets.max())}. Check the label mapping of the dataset."
        )
    _check_probabilities(probs)
    return probs, targets


def _check_probabilities(probs: torch.Tensor) -> None:
    # Row sums drift a little when softmax ran in half precision; logits are far off.
    sums = probs.sum(dim=1)
    bad = ~torch.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1
    if bad or not torch.allclose(sums, torch.ones_like(sums), atol=1e-2):
        raise DataError(
            "probs must be probabilities: finite, in [0, 1], each row summing to 1. Got values from "
            f"{float(probs.min()):.3g} to {float(probs.max()):.3g} and row sums from "
            f"{float(sums.min()):.3g} to {float(sums.max()):.3g}. If these are logits, pass "
            "logits.softmax(dim=-1)."
        )


def _per_class_auc(probs: torch.Tensor, targets: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``(K,)`` one-vs-rest ROC AUC; ``nan`` where a class has no positives or no negatives."""
    with _quiet_empty_class():
        auc = multiclass_auroc(probs, targets, num_classes=probs.shape[1], average="none")
    undefined = (support == 0) | (support == len(targets))
    return torch.where(undefined, torch.full_like(auc, math.nan), auc.float())


@contextmanager
def _quiet_empty_class() -> Iterator[None]:
    # torchmetrics warns about a class without positives; we report that case ourselves (AUC nan).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(positive|negative) samples in targets.*")
        yield


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value
