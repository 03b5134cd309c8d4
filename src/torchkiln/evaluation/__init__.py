"""Evaluation of classifiers: metrics from probabilities, and a self-contained HTML report.

Example:
    >>> metrics = classification_metrics(probs, targets, class_names)
    >>> write_report(Path("runs/exp1/eval"), metrics, probs, targets, class_names)
"""

from torchkiln.evaluation.metrics import (
    ClassificationMetrics,
    ClassMetrics,
    classification_metrics,
    pr_curves,
    roc_curves,
)
from torchkiln.evaluation.report import write_report

__all__ = [
    "ClassMetrics",
    "ClassificationMetrics",
    "classification_metrics",
    "pr_curves",
    "roc_curves",
    "write_report",
]
