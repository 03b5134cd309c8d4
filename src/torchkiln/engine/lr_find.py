"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's ``lr_find``).

Train a run's :class:`~torchkiln.engine.trainer.Loop` for a few optimizer steps with the learning rate
growing exponentially, record the loss, and suggest the rate where the smoothed loss falls fastest. The
steps are the task's own ``training_step`` through the run's ``StepContext`` (autocast, scaler,
accumulation, clipping), and every optimizer's param groups are scaled together, keeping their ratios.
Afterwards the loop is as it was: weights, optimizer, schedule and scaler states and every RNG state are
restored, so training after the test is bitwise the training without it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkiln.core.errors import ConfigError
from torchkiln.engine.checkpoint import rng_state, set_rng_state
from torchkiln.engine.trainer import Loop


@dataclass(frozen=True)
class LRFindResult:
    """What the range test measured. ``lrs`` are values of ``train.optimizer.lr`` (what ``--lr`` sets);
    a group with a multiplier (a backbone's ``backbone_lr_mult``) trained at that multiple of them."""

    lrs: list[float]
    losses: list[float]  # the first of the train module's losses, per optimizer step
    smoothed: list[float]  # exponential moving average of ``losses``, bias-corrected
    suggestion: float | None  # steepest descent of ``smoothed`` (None: too few steps to tell)
    min_tenth: float | None  # the rate at the lowest smoothed loss, divided by 10
    stopped: str = ""  # why the test ended before its last step ("" if it did not)
    plot: Path | None = None  # where the figure and the data went, when they were written
    data: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the measurements and both suggestions (no paths)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("plot", "data")}


def check_range(*, steps: int, start_lr: float, end_lr: float, diverge: float) -> None:
    """Refuse settings the test cannot run with, before any data is read.

    Raises:
        ConfigError: fewer than 2 steps, a rate <= 0, ``start_lr >= end_lr`` or ``diverge <= 1``.
    """
    problems = []
    if steps < 2:
        problems.append(f"steps must be at least 2 (a slope needs two points). Got {steps} instead.")
    if not 0 < start_lr < end_lr:
        problems.append(
            f"the learning rates must satisfy 0 < start_lr < end_lr. Got start_lr={start_lr:g}, "
            f"end_lr={end_lr:g} instead; e.g. --start-lr 1e-7 --end-lr 10."
        )
    if not diverge > 1:
        problems.append(f"diverge must be > 1 (a factor over the best loss). Got {diverge:g} instead.")
    if problems:
        raise ConfigError("The learning-rate range test cannot run: " + " ".join(problems))


def lr_find(
    loop: Loop,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    diverge: float = 4.0,
    beta: float = 0.98,
) -> LRFindResult:
    """Run the range test on ``loop`` and put everything back as it was.

    Args:
        loop: what :func:`~torchkiln.engine.trainer.setup` built; its schedules are not stepped.
        steps: optimizer steps, the rate going from ``start_lr`` to ``end_lr`` exponentially.
        start_lr, end_lr: the first and last value of ``train.optimizer.lr``.
        diverge: stop once the smoothed loss is over this many times its best (and on a non-finite loss).
        beta: the smoothing of the loss (fastai's 0.98).

    Returns:
        The rates, raw and smoothed losses, and the suggestions.

    Raises:
        ConfigError: settings :func:`check_range` refuses.

    Example:
        >>> result = lr_find(setup(cfg, task.train_module(cfg), loaders), steps=100)
        >>> result.suggestion
    """
    check_range(steps=steps, start_lr=start_lr, end_lr=end_lr, diverge=diverge)
    base = loop.cfg.train.optimizer.lr
    # OneCycleLR keeps a group's configured rate as max_lr, the other schedules as initial_lr; group["lr"]
    # is already the schedule's first value. Each group trains at (its configured rate / base) x lr.
    ratios = [
        [g.get("max_lr", g.get("initial_lr", g["lr"])) / base for g in o.optimizer.param_groups]
        for o in loop.optimizers
    ]
    saved, batches = _snapshot(loop), _batches(loop)
    lrs, losses, smoothed, stopped = [], [], [], ""
    try:
        _prepare(loop)
        avg, best = 0.0, math.inf
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            for o, rs in zip(loop.optimizers, ratios, strict=True):
                for group, r in zip(o.optimizer.param_groups, rs, strict=True):
                    group["lr"] = lr * r
            loss = _one_step(loop, batches)
            if not math.isfinite(loss):
                stopped = f"the loss was {loss} at step {i + 1} (lr {lr:.3g})"
                break
            avg = beta * avg + (1 - beta) * loss
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smooth)
            if best > 0 and smooth > diverge * best:
                stopped = f"the smoothed loss passed {diverge:g}x its best at step {i + 1} (lr {lr:.3g})"
                break
            best = min(best, smooth)
    finally:
        batches.close()  # ends the loader's iterator (and its workers) before the RNG is put back
        _restore(loop, saved)
    steep, min_tenth = suggest(lrs, smoothed, planned=steps)
    return LRFindResult(lrs, losses, smoothed, steep, min_tenth, stopped)


def suggest(lrs: list[float], smoothed: list[float], *, planned: int) -> tuple[float | None, float | None]:
    """The rate of steepest descent of ``smoothed`` on a log axis, and the rate at its minimum / 10.

    As fastai does, the first tenth of the planned steps (the loss has barely moved) and the last five
    (the blow-up) are left out when enough points remain.
    """
    n = len(smoothed)
    if n < 2:
        return None, None
    lo, hi = planned // 10, n - 5
    if hi - lo < 3:
        lo, hi = 0, n
    # Per unit of log(lr): the rates are spaced evenly on a log axis, so this is the slope in the plot.
    slopes = [(smoothed[i + 1] - smoothed[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(lo, hi - 1)]
    steep = lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)]
    lowest = lrs[lo + min(range(hi - lo), key=lambda i: smoothed[lo + i])]
    return steep, lowest / 10


def _batches(loop: Loop) -> Iterator[Any]:
    """The train batches, epoch after epoch (in the order the run's epochs 0, 1, ... will see them)."""
    loader, epoch = loop.loaders.train, 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch, start_batch=0)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("The train split gave no batches; the range test needs at least one.")
        epoch += 1


def _one_step(loop: Loop, batches: Iterator[Any]) -> float:
    """One optimizer step (``train.accumulate`` batches); the mean of the first loss over them."""
    k, ctx, total = loop.cfg.train.accumulate, loop.ctx, 0.0
    for j in range(k):
        ctx.begin_batch(group_size=k, last_in_group=j == k - 1)
        losses = loop.train.training_step(ctx, loop.forward, next(batches))
        ctx.end_batch()
        total += float(losses[loop.train.losses[0]])  # a host sync per step: the test needs the value
    return total / k


def _snapshot(loop: Loop) -> dict[str, Any]:
    """Copies, not references: the optimizers update their state tensors in place."""
    ctx = loop.ctx
    sampler = loop.loaders.train.sampler
    return {
        "modules": {k: v.detach().clone() for k, v in loop.modules.state_dict().items()},
        "training": {m: m.training for m in loop.modules.modules()},
        "optimizers": [copy.deepcopy(o.optimizer.state_dict()) for o in loop.optimizers],
        "schedulers": [
            copy.deepcopy(o.scheduler.state_dict()) if o.scheduler else None for o in loop.optimizers
        ],
        "ctx": (ctx.optimizers, ctx.scaler, ctx.metrics, ctx.before_step),
        "sampler": (getattr(sampler, "epoch", None), getattr(sampler, "start_batch", 0)),
        "rng": rng_state(),
    }


def _prepare(loop: Loop) -> None:
    """Train mode; the schedules detached (the test sets the rate); a scaler and metrics of its own."""
    ctx = loop.ctx
    loop.modules.train()
    ctx.optimizers = {n: dataclasses.replace(o, scheduler=None) for n, o in ctx.optimizers.items()}
    ctx.scaler = copy.deepcopy(ctx.scaler)
    ctx.metrics = loop.train.metrics(loop.cfg).to(loop.precision.device)
    ctx.before_step = None


def _restore(loop: Loop, saved: dict[str, Any]) -> None:
    loop.modules.load_state_dict(saved["modules"])
    for p in loop.modules.parameters():
        p.grad = None
    for module, training in saved["training"].items():
        module.training = training
    for o, opt_state, sched_state in zip(
        loop.optimizers, saved["optimizers"], saved["schedulers"], strict=True
    ):
        o.optimizer.load_state_dict(opt_state)
        if o.scheduler is not None:
            o.scheduler.load_state_dict(sched_state)
    loop.ctx.optimizers, loop.ctx.scaler, loop.ctx.metrics, loop.ctx.before_step = saved["ctx"]
    epoch, start_batch = saved["sampler"]
    if epoch is not None:
        loop.loaders.train.sampler.set_epoch(epoch, start_batch=start_batch)
    set_rng_state(saved["rng"])
