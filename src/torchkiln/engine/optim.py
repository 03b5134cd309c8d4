"""Optimizers and learning-rate schedules from the config."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler

from torchkiln.core.config import OptimizerConfig, RunConfig, SchedulerConfig
from torchkiln.core.errors import ConfigError
from torchkiln.engine.step import OptimSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamGroup:
    """Parameters that share a learning-rate multiplier (discriminative learning rates)."""

    name: str
    params: list[nn.Parameter]
    lr_mult: float = 1.0


def split_decay(groups: list[ParamGroup]) -> list[dict]:
    """Torch param groups; weight decay is kept off biases and norm weights (all 1-D tensors)."""
    out = []
    for g in groups:
        decay = [p for p in g.params if p.ndim > 1]
        no_decay = [p for p in g.params if p.ndim <= 1]
        for params, wd in ((decay, True), (no_decay, False)):
            if params:
                out.append(
                    {
                        "params": params,
                        "lr_mult": g.lr_mult,
                        "decay": wd,
                        "name": f"{g.name}/{'decay' if wd else 'no_decay'}",
                    }
                )
    if not out:
        raise ConfigError(
            "The model has no trainable parameters: every parameter is frozen. Expected at least the head "
            "to train. Set model.unfreeze_last >= 1 or model.freeze_backbone: false."
        )
    return out


def build_optimizer(groups: list[ParamGroup], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or RMSprop over the task's parameter groups.

    ``foreach=True``: one multi-tensor kernel per update instead of a Python loop over parameters
    (PyTorch only picks it by default on CUDA; on CPU it saves ~4 % of a small model's step).
    """
    torch_groups = [
        {
            "params": g["params"],
            "lr": cfg.lr * g["lr_mult"],
            "weight_decay": cfg.weight_decay if g["decay"] else 0.0,
        }
        for g in split_decay(groups)
    ]
    match cfg.name:
        case "sgd":
            return torch.optim.SGD(
                torch_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
            )
        case "adam":
            return torch.optim.Adam(torch_groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
        case "adamw":
            return torch.optim.AdamW(torch_groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
        case "rmsprop":
            return torch.optim.RMSprop(torch_groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    raise ConfigError(f"Unknown optimizer '{cfg.name}'. Expected one of sgd, adam, adamw, rmsprop.")


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: SchedulerConfig, *, epochs: int, steps_per_epoch: int, mode: str = "max"
) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None:
    """Schedulers step once per optimizer step, except ``plateau``, which steps per epoch."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    match cfg.name:
        case "none":
            return None
        case "step":
            return lr_scheduler.StepLR(opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
        case "multistep":
            return lr_scheduler.MultiStepLR(
                opt, [m * steps_per_epoch for m in cfg.milestones], gamma=cfg.gamma
            )
        case "onecycle":
            if total < 3:  # too short for a cycle: OneCycleLR divides by the length of each phase
                log.warning(
                    "scheduler onecycle needs at least 3 optimizer steps; this run has %d, so the "
                    "learning rate stays constant at %g. Train longer or use a smaller batch for a cycle.",
                    total,
                    opt.param_groups[0]["lr"],
                )
                return None
            # Each phase needs at least two steps, or OneCycleLR divides by zero (a tiny data set).
            pct = min(max(cfg.pct_start, 2 / total), 1 - 1 / total)
            max_lr = [g["lr"] for g in opt.param_groups]
            return lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct)
        case "plateau":
            return lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.gamma, patience=cfg.patience)
        case "cosine":
            # One factor per group: each group decays from its own lr to min_lr.
            floors = [cfg.min_lr / g["lr"] if g["lr"] else 0.0 for g in opt.param_groups]
            return lr_scheduler.LambdaLR(opt, [_cosine(warmup, total, f) for f in floors])
    raise ConfigError(
        f"Unknown scheduler '{cfg.name}'. Expected one of none, step, multistep, onecycle, plateau, cosine."
    )


def _cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def optim_spec(name: str, groups: list[ParamGroup], cfg: RunConfig, *, steps_per_epoch: int) -> OptimSpec:
    """The optimizer of ``groups`` and its schedule as ``cfg.train`` sets them, named ``name``
    (``ctx.step(name)``): what a train module's ``configure_optimizers`` returns one of per optimizer.

    Example:
        >>> optim_spec("model", task.param_groups(cfg, model), cfg, steps_per_epoch=len(loader))
    """
    t = cfg.train
    optimizer = build_optimizer(groups, t.optimizer)
    scheduler = build_scheduler(
        optimizer, t.scheduler, epochs=t.epochs, steps_per_epoch=steps_per_epoch, mode=t.monitor_mode
    )
    return OptimSpec(name, optimizer, scheduler)
