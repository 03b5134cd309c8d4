"""The boundary between the engine and a task: the ``StepContext`` a training step runs in.

A task owns its training step; the engine owns the loop around it. The step gets a
:class:`StepContext`, which owns autocast, the GradScaler, gradient accumulation (with ``no_sync``
for DDP), clipping and the optimizer steps, the split of Lightning Fabric without its Trainer::

    def training_step(self, ctx, modules, batch):
        x, y = self.to_device(batch, ctx.device, channels_last=ctx.channels_last)
        with ctx.autocast():
            loss = self.loss_fn(modules["model"](x), y)
        ctx.backward(loss)  # scaled, and divided by the size of this accumulation group
        ctx.step()  # at the end of a group only: unscale, clip, step, zero the grads, schedule
        return {"loss": loss.detach()}

:class:`~torchkiln.engine.supervised.Supervised` is that step for every model that maps inputs to
outputs. A GAN's step calls ``ctx.backward(d_loss, optimizer="discriminator")`` and
``ctx.step("discriminator")``, then the same for the generator: with several optimizers, a backward
fills only the gradients of the optimizer it names, so the generator's loss never leaks into the
discriminator's gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.optim import lr_scheduler

from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import did_you_mean
from torchkiln.engine import distributed
from torchkiln.engine.precision import Precision

Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


@dataclass(frozen=True)
class OptimSpec:
    """One optimizer and the schedule that drives it, by name (``ctx.step(name)``).

    ``scheduler`` steps once per optimizer step, except ``ReduceLROnPlateau``, which the engine steps
    once per epoch with the monitored value.
    """

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None = None


@runtime_checkable
class TrainModule(Protocol):
    """How a task trains: its modules, optimizers, metrics and steps. The engine calls nothing else."""

    serves: str  # the module that answers predictions (a GAN serves its generator)
    losses: tuple[str, ...]  # the keys ``training_step`` returns; the first is the progress bar's
    image_input: bool  # inputs are image batches: ``channels_last: auto`` turns NHWC on

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        """Every module the run trains, by name (a *resolved* config; bundles rebuild them this way)."""
        ...

    def configure_optimizers(
        self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int
    ) -> list[OptimSpec]: ...

    def metrics(self, cfg: RunConfig) -> Metric:
        """A fresh :class:`~torchkiln.components.metric.Metric` whose ``compute`` gives ``{name: float}``."""
        ...

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        """One batch: forward, ``ctx.backward``, ``ctx.step``, ``ctx.metrics.update``; detached losses."""
        ...

    def validation_step(
        self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
    ) -> dict[str, torch.Tensor]:
        """One held-out batch under ``inference_mode``: update ``ctx.metrics``, return the losses."""
        ...

    def batch_size(self, batch: Any) -> int:
        """Items in ``batch``: weights the validation losses and counts samples per second."""
        ...

    def example_input(self, batch: Any) -> torch.Tensor | None:
        """A model input from a training batch for TensorBoard's graph and image grid (None: neither)."""
        ...

    # Optional: ``epoch_images(modules, device) -> {tag: uint8 (B, C, H, W)}``, drawn at the end of every
    # epoch in eval mode and shown in TensorBoard as image grids (a GAN's samples from fixed noise). It
    # must not draw from the global RNG, which a resumed run restores.


class StepContext:
    """What a training step may do to the run's gradients and optimizers.

    The engine calls :meth:`begin_batch` before each batch and :meth:`end_batch` after it; a task's
    step only calls :meth:`autocast`, :meth:`backward` and :meth:`step`, and reads ``device``,
    ``channels_last`` and ``metrics``.
    """

    def __init__(
        self,
        *,
        precision: Precision,
        optimizers: Sequence[OptimSpec],
        modules: nn.ModuleDict,
        grad_clip: float | None = None,
        average_grads: bool = False,
    ) -> None:
        if not optimizers:
            raise ValueError("configure_optimizers returned no optimizer; return at least one OptimSpec")
        self.precision = precision
        self.optimizers = {o.name: o for o in optimizers}
        self.modules = modules  # as the step sees them (compiled or DDP-wrapped): for no_sync
        self.grad_clip = grad_clip
        self.average_grads = average_grads  # a process group without DDP modules: average at each step
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_scaler)
        self.metrics: Any = None  # the engine sets the Metric of the phase that runs
        self.before_step: Callable[[OptimSpec], None] | None = None  # the engine's: sees unscaled grads
        # With one optimizer every trainable parameter is its own; with several, a backward fills
        # only the named optimizer's parameters (``inputs=``).
        self._params = {
            o.name: [p for g in o.optimizer.param_groups for p in g["params"]] for o in optimizers
        }
        self._divisor, self._boundary, self._stepped, self._share = 1, True, False, 1.0

    @property
    def device(self) -> torch.device:
        return self.precision.device

    @property
    def channels_last(self) -> bool:
        return self.precision.channels_last

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision as the run resolved it (a no-op in fp32)."""
        return self.precision.autocast()

    # -- the engine's side ----------------------------------------------------------------------------
    def begin_batch(self, *, group_size: int, last_in_group: bool, share: float = 1.0) -> None:
        """``group_size``: batches in this accumulation group (the last group of an epoch may be short).

        ``share``: this process's items x processes / the items of the whole batch. Ranks average their
        gradients, so a rank with a larger shard weighs its loss up: the average is then the gradient
        of the whole batch's mean loss. 1 in one process, and whenever the shards are equal.
        """
        self._divisor, self._boundary, self._stepped = group_size, last_in_group, False
        self._share = share

    def end_batch(self) -> bool:
        """Update the loss scale after this batch's steps; True if any optimizer stepped."""
        if self._stepped:
            self.scaler.update()
        return self._stepped

    # -- the step's side ------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, *, optimizer: str | None = None) -> None:
        """Backpropagate ``loss`` for ``optimizer``'s parameters (the only optimizer, if None).

        The loss is divided by the number of batches in this accumulation group, so a group of k batches
        gives the gradient of one k-times larger batch, a short last group included.
        """
        name = self._name(optimizer, "backward")
        if self._share != 1.0:
            loss = loss * self._share
        scaled = self.scaler.scale(loss / self._divisor)
        with self._no_sync():
            if len(self._params) > 1:
                scaled.backward(inputs=self._params[name])
            else:
                scaled.backward()

    def step(self, optimizer: str | None = None) -> bool:
        """At the end of an accumulation group: unscale, clip, step, zero the grads, step the schedule.

        Returns:
            True if the optimizer stepped (False inside a group, where gradients keep accumulating).
        """
        name = self._name(optimizer, "step")
        if not self._boundary:
            return False
        spec = self.optimizers[name]
        if self.average_grads:
            distributed.average_grads(self._params[name])
        if self.grad_clip is not None or self.before_step is not None:
            self.scaler.unscale_(spec.optimizer)
        if self.before_step is not None:
            self.before_step(spec)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params[name], self.grad_clip)
        self.scaler.step(spec.optimizer)
        spec.optimizer.zero_grad(set_to_none=True)
        if spec.scheduler is not None and not isinstance(spec.scheduler, lr_scheduler.ReduceLROnPlateau):
            spec.scheduler.step()
        self._stepped = True
        return True

    def _name(self, optimizer: str | None, call: str) -> str:
        if optimizer is None:
            if len(self.optimizers) == 1:
                return next(iter(self.optimizers))
            raise ValueError(
                f"ctx.{call}() needs optimizer=: this run has {len(self.optimizers)} optimizers "
                f"({', '.join(self.optimizers)}). Name the one, e.g. ctx.{call}(..., "
                f"optimizer={next(iter(self.optimizers))!r})."
            )
        if optimizer not in self.optimizers:
            hint = did_you_mean(optimizer, list(self.optimizers))
            raise ValueError(
                f"ctx.{call}(optimizer={optimizer!r}): no optimizer has that name.{hint} Expected one of "
                f"{', '.join(self.optimizers)}, the names configure_optimizers gave."
            )
        return optimizer

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """Inside an accumulation group, DDP modules skip their gradient all-reduce."""
        if self._boundary:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in self.modules.values():
            no_sync = getattr(module, "no_sync", None)
            if no_sync is not None:
                stack.enter_context(no_sync())
        return stack
