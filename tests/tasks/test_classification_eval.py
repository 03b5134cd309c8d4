"""The summary line of ``kiln evaluate`` for a classifier (tasks/classification_eval.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from torchkiln.components.classification_metrics import classification_metrics
from torchkiln.tasks.classification_eval import EvalResult


def summary(probs: list[list[float]], targets: list[int], classes: list[str]) -> list[str]:
    m = classification_metrics(torch.tensor(probs), torch.tensor(targets), classes)
    return EvalResult(m, Path("report.html"), Path("metrics.json"), "test").summary()


def test_an_auc_that_is_undefined_says_why_instead_of_nan() -> None:
    probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
    lines = summary(probs, [0, 1, 0, 1], ["cat", "dog", "fox"])  # no fox in the split
    assert "macro-AUC 1.0000" in lines[0]
    assert lines[1] == (
        "ROC AUC is undefined (null in metrics.json) for 'fox': 'fox' is absent from the test split. "
        "Macro-AUC averages the other classes."
    )
    lines = summary([[0.9, 0.1], [0.6, 0.4]], [0, 0], ["cat", "dog"])  # one class only
    assert "macro-AUC n/a " in lines[0] and "nan" not in lines[0]
    assert lines[1] == (
        "ROC AUC is undefined (null in metrics.json) for every class: 'dog' is absent from the test split."
    )
    assert summary([[0.9, 0.1], [0.2, 0.8]], [0, 1], ["cat", "dog"])[1:] == []
