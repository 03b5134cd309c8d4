"""Running figures of an epoch (losses and the task's metrics), kept on the device.

A training step adds its losses as device tensors; the host reads them every ``train.log_every``
steps (:meth:`EpochTally.flush`), never per step. The tally is part of a mid-epoch checkpoint, so the
``train/*`` figures of a resumed epoch cover the whole epoch, not only the batches after the resume.
"""

from __future__ import annotations

from typing import Any

import torch

from torchkiln.components.metric import Metric
from torchkiln.engine import distributed


def computed(metrics: Metric) -> dict[str, float]:
    """``metrics.compute()`` as plain floats."""
    return {k: float(v) for k, v in metrics.compute().items()}


class EpochTally:
    """Loss sums since the last log and over the epoch, and the task's metrics, all on ``device``.

    Example:
        >>> tally = EpochTally(task_metrics, device)
        >>> tally.add({"loss": loss.detach()})  # per batch, no sync
        >>> tally.flush()  # every log_every steps: {"loss": mean since the last flush}
        >>> tally.results("train")  # {"train/loss": ..., "train/accuracy": ...}
    """

    def __init__(self, metrics: Metric, device: torch.device) -> None:
        self.metrics = metrics  # its states are buffers: state_dict() holds them
        self.device = device
        self.running: dict[str, torch.Tensor] = {}  # since the last flush
        self.total: dict[str, torch.Tensor] = {}  # since the start of the epoch
        self.since_log = 0.0
        self.weight = 0.0

    def add(self, losses: dict[str, torch.Tensor], *, weight: float = 1.0) -> None:
        """Add one batch's losses; ``weight`` is its share in the mean (batches, or items on val)."""
        for name, value in losses.items():
            value = value.detach().float() * weight if weight != 1.0 else value.detach()
            if name in self.running:
                self.running[name] += value
            else:
                self.running[name] = value.float().clone()
                self.total.setdefault(name, torch.zeros((), device=self.device))
        self.since_log += weight
        self.weight += weight

    def flush(self) -> dict[str, float]:
        """The mean of each loss since the last flush (one host sync), folded into the epoch's total."""
        means = {k: v.item() / max(self.since_log, 1.0) for k, v in self.running.items()}
        for name, value in self.running.items():
            self.total[name] += value
            value.zero_()
        self.since_log = 0.0
        return means

    def results(self, prefix: str) -> dict[str, float]:
        """``{prefix/metric: value}`` of the task's metrics and ``{prefix/loss: mean}`` for each loss.

        In multi-process training every rank calls this at the same point: the metrics' states, the loss
        sums and their weights are combined over ranks first, so every rank reports the group's figures.
        """
        self.flush()
        if distributed.active():
            distributed.sync_metric(self.metrics)
            # A rank whose shard of the split was empty has seen no loss: it adds zeros to the sums.
            names = sorted({n for keys in distributed.gather(sorted(self.total)) for n in keys})
            for name in names:
                self.total.setdefault(name, torch.zeros((), device=self.device))
                self.total[name] = distributed.all_sum(self.total[name])
            weight = torch.tensor(self.weight, dtype=torch.float64, device=self.device)
            self.weight = float(distributed.all_sum(weight).item())
        losses = {f"{prefix}/{k}": v.item() / max(self.weight, 1.0) for k, v in self.total.items()}
        return {f"{prefix}/{k}": v for k, v in self.figures().items()} | losses

    def figures(self) -> dict[str, float]:
        """The task's metrics so far; none when the metric observed nothing (:meth:`Metric.empty`)."""
        return {} if self.metrics.empty() else computed(self.metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.state_dict(),
            "running": dict(self.running),
            "total": dict(self.total),
            "since_log": self.since_log,
            "weight": self.weight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics.load_state_dict(state["metrics"])  # copied into the states, on their device
        self.running = {k: v.to(self.device) for k, v in state["running"].items()}
        self.total = {k: v.to(self.device) for k, v in state["total"].items()}
        self.since_log, self.weight = state["since_log"], state["weight"]
