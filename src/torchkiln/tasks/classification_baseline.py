"""A classifier family's honest baseline, where the tasks meet it: ``kiln evaluate`` and the training summary.

The baseline itself (TF-IDF or pixels + logistic regression, its cache, the paired bootstrap) is in
:mod:`torchkiln.components.classification_baseline`; a family opts in by implementing
:class:`~torchkiln.tasks.base.Baselined`. ``evaluate.baseline: false`` turns both uses off.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from torchkiln.components.classification_baseline import (
    BELOW_BASELINE_FIXES,
    BaselineComparison,
    BaselineResult,
    compare,
    run_baseline,
)
from torchkiln.core.config import RunConfig
from torchkiln.tasks.base import Baselined, Task

log = logging.getLogger("torchkiln.train")


def wanted(cfg: RunConfig, task: Task) -> bool:
    """Whether ``cfg`` asks for a baseline and ``task`` has one."""
    return bool(getattr(cfg.evaluate, "baseline", False)) and isinstance(task, Baselined)


def baseline_on(
    cfg: RunConfig, task: Task, data: Any, split: str
) -> tuple[BaselineResult, np.ndarray] | None:
    """The baseline fit on ``data``'s train split (C chosen on val), its predictions on ``split`` and the
    labels of ``split``'s items; each split's inputs are read once.

    ``data`` must hold the train and val splits (``task.prepare`` with them) and ``split``. None when the
    config turns the baseline off or the task has none.

    Raises:
        ConfigError: scikit-learn is missing. DataError: train holds a single class.
    """
    if not wanted(cfg, task):
        return None
    assert isinstance(task, Baselined)
    train = task.baseline_inputs(cfg, data, "train")
    val = task.baseline_inputs(cfg, data, "val") if len(data.splits["val"]) else None
    target = val if split == "val" and val is not None else task.baseline_inputs(cfg, data, split)
    classes = list(cfg.data.classes or [])
    result = run_baseline(task.baseline_kind, train, val, target, num_classes=len(classes), seed=cfg.seed)
    return result, np.asarray(target.labels)


def val_accuracy(cfg: RunConfig, task: Task, data: Any) -> tuple[BaselineResult, float] | None:
    """The baseline and its accuracy on the whole val split; None without a baseline or a val split."""
    found = baseline_on(cfg, task, data, "val") if len(data.splits["val"]) else None
    if found is None:
        return None
    result, labels = found
    return result, float((result.probs.argmax(1) == labels).mean())


def compare_on_split(
    cfg: RunConfig, task: Task, data: Any, split: str, model_preds: np.ndarray, targets: np.ndarray
) -> BaselineComparison | None:
    """``kiln evaluate``'s comparison: the model's answers beside the baseline's on the same ``split``."""
    found = baseline_on(cfg, task, data, split)
    if found is None:
        return None
    return compare(model_preds, targets, found[0], num_classes=len(cfg.data.classes or []), seed=cfg.seed)


def val_summary(cfg: RunConfig, task: Task, data: Any, metrics: dict[str, float]) -> dict[str, Any] | None:
    """After training: the baseline's val accuracy beside the model's best, for ``bundle.json``.

    Logs a warning when the model is below the baseline on val. None when there is nothing to compare
    (no baseline, no val split, or no ``val/accuracy`` in ``metrics``).
    """
    model_acc = metrics.get("val/accuracy")
    found = val_accuracy(cfg, task, data) if model_acc is not None else None
    if found is None:
        return None
    result, base_acc = found
    below = float(model_acc) < base_acc
    if below:
        log.warning(
            "The model's best val accuracy, %.4f, is below the %.4f that %s reaches on the same val split: "
            "the network does not beat a linear baseline. %s",
            model_acc,
            base_acc,
            result.name,
            BELOW_BASELINE_FIXES,
        )
    return {
        "name": result.name,
        "detail": result.describe(),
        "val_accuracy": round(base_acc, 6),
        "model_val_accuracy": round(float(model_acc), 6),
        "below": below,
        "seconds": result.seconds,
    }
