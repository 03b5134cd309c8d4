"""``Metric``: figures accumulated over batches as device tensors, with no host sync until ``compute``.

A subclass declares its running sums with :meth:`Metric.add_state`. They are buffers, so ``.to(device)``
moves them, ``state_dict()`` holds them (the engine puts the epoch in progress in its mid-epoch
checkpoints), and in multi-process training the engine sums them across processes before ``compute``
(a state declared ``reduce="cat"``, a growing list of rows, is concatenated instead).

This is not torchmetrics' ``Metric``: importing torchmetrics took 6.0 s here and imports transformers,
which every training and serving process would pay. torchmetrics' functional metrics are still used where
a report is written (:mod:`torchkiln.components.classification_metrics`).

Example:
    >>> class Accuracy(Metric):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.add_state("correct", torch.zeros((), dtype=torch.long))
    ...         self.add_state("count", torch.zeros((), dtype=torch.long))
    ...
    ...     def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    ...         self.correct += (outputs.argmax(1) == targets).sum()
    ...         self.count += targets.numel()
    ...
    ...     def compute(self) -> dict[str, float]:
    ...         return {"accuracy": self.correct.item() / max(int(self.count), 1)}
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


class Metric(nn.Module):
    """Running sums as buffers; subclasses define ``update(...)`` and ``compute() -> {name: float}``."""

    def add_state(self, name: str, default: torch.Tensor, *, reduce: Literal["sum", "cat"] = "sum") -> None:
        """A running sum, starting at ``default`` (a tensor; its dtype is kept).

        ``reduce`` is how processes combine it: ``sum`` (counts, sums), or ``cat`` for rows kept along
        dim 0 (features a metric measures at the end), concatenated in rank order.
        """
        self.register_buffer(name, default.clone())
        self.state_reductions[name] = reduce

    @property
    def state_reductions(self) -> dict[str, str]:
        """``{state: "sum" | "cat"}`` for every :meth:`add_state`."""
        if "_reductions" not in self.__dict__:
            self.__dict__["_reductions"] = {}
        return self.__dict__["_reductions"]

    def update(self, *args: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define update(...)")

    def compute(self) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must define compute() -> dict[str, float]")

    def empty(self) -> bool:
        """True when nothing was observed: the phase reports no figures rather than zeros. A detector's
        training step updates no metric (its boxes exist only in eval mode), so its ``train/`` has none."""
        return False
