"""``Supervised``: the training step of every task whose one model maps inputs to outputs.

Forward, loss, backward, step, metrics: a classifier and a forecaster differ only in the parts a task
already has (its model, loss, metrics, parameter groups and how a batch reaches the device), so they
share this step instead of writing it twice.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.engine.optim import ParamGroup, optim_spec
from torchkiln.engine.step import OptimSpec, StepContext


class SupervisedParts(Protocol):
    """What a task gives :class:`Supervised`."""

    image_input: bool

    def build_model(self, cfg: RunConfig) -> nn.Module: ...
    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        """Move a batch to ``device`` and return ``(inputs, targets)``."""
        ...

    def loss(self, cfg: RunConfig) -> nn.Module: ...
    def metrics(self, cfg: RunConfig) -> Metric: ...
    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]: ...


class Supervised:
    """One module named ``model``, one optimizer named ``model``, the loss ``loss``.

    Example:
        >>> train = Supervised(task, cfg)  # what ``task.train_module(cfg)`` returns
        >>> modules = train.build_modules(cfg)  # nn.ModuleDict({"model": ...})
    """

    serves = "model"
    losses = ("loss",)

    def __init__(self, parts: SupervisedParts, cfg: RunConfig) -> None:
        self.parts = parts
        self.image_input = parts.image_input
        self.loss_fn = parts.loss(cfg)
        self._loss_device: torch.device | None = None

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        return nn.ModuleDict({"model": self.parts.build_model(cfg)})

    def configure_optimizers(
        self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int
    ) -> list[OptimSpec]:
        groups = self.parts.param_groups(cfg, modules["model"])
        return [optim_spec("model", groups, cfg, steps_per_epoch=steps_per_epoch)]

    def metrics(self, cfg: RunConfig) -> Metric:
        return self.parts.metrics(cfg)

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        x, y = self.parts.to_device(batch, ctx.device, channels_last=ctx.channels_last)
        with ctx.autocast():
            out = modules["model"](x)
            loss = self._loss(ctx.device)(out, y)
        ctx.backward(loss)
        ctx.step()
        ctx.metrics.update(out.detach(), y)
        return {"loss": loss.detach()}

    def validation_step(
        self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
    ) -> dict[str, torch.Tensor]:
        x, y = self.parts.to_device(batch, ctx.device, channels_last=ctx.channels_last)
        with ctx.autocast():
            out = modules["model"](x)
        ctx.metrics.update(out, y)
        return {"loss": self._loss(ctx.device)(out.float(), y)}

    def batch_size(self, batch: Any) -> int:
        return len(batch[1])

    def example_input(self, batch: Any) -> torch.Tensor | None:
        return batch[0]  # images: uint8 (B, C, H, W); texts: ids (B, L); series: (B, L + H, C + K)

    def _loss(self, device: torch.device) -> nn.Module:
        if self._loss_device != device:  # a loss may hold buffers (the pinball loss's quantiles)
            self.loss_fn.to(device)
            self._loss_device = device
        return self.loss_fn
