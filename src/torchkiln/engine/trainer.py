"""The training loop: plain functions over a task, read top to bottom.

``fit`` sets up, then alternates ``train_one_epoch`` and ``evaluate_split``. Losses and metrics stay
on the device and are read every ``train.log_every`` optimizer steps, so there is no host sync per
step. Checkpoints are written at optimizer-step boundaries with every RNG state and the position
in the epoch, which is what makes ``--resume`` bitwise exact on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader

from torchkiln.config.schema import DataConfig, RunConfig
from torchkiln.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from torchkiln.engine.optim import build_optimizer, build_scheduler
from torchkiln.engine.precision import Precision, resolve_precision
from torchkiln.engine.progress import Progress
from torchkiln.engine.tracking import Tracker
from torchkiln.errors import ConfigError, did_you_mean
from torchkiln.io import atomic_write_text
from torchkiln.tasks.base import Task
from torchkiln.tasks.bundle import save_bundle


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint (plain types only, for ``weights_only`` loads)."""

    epoch: int = 0  # epoch in progress
    batch: int = 0  # next batch index within ``epoch``
    step: int = 0  # optimizer steps taken in the whole run
    best_value: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed: float = 0.0  # training seconds, summed across resumes
    stopped: str = ""  # why training stopped early, if it did
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str = ""


@dataclass
class Loop:
    """The objects one run trains with (built once by :func:`setup`)."""

    cfg: RunConfig
    task: Task
    model: nn.Module
    forward: nn.Module  # ``model`` or its torch.compile wrapper
    precision: Precision
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(cfg: RunConfig, task: Task, data: Any, model: nn.Module | None = None) -> Loop:
    """Build everything a run trains with; ``model`` replaces ``task.build_model(cfg)`` (e.g. a
    pruned model to fine-tune)."""
    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    precision = resolve_precision(cfg.train, image_input=isinstance(cfg.data, DataConfig))
    model = (model if model is not None else task.build_model(cfg)).to(precision.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = task.loader(cfg, data, "train", train=True)
    val_loader = task.loader(cfg, data, "val", train=False) if len(data.splits["val"]) else None
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.accumulate)
    optimizer = build_optimizer(task.param_groups(cfg, model), model, cfg.train.optimizer)
    scheduler = build_scheduler(
        optimizer,
        cfg.train.scheduler,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps_per_epoch,
        mode=cfg.train.monitor_mode,
    )
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_scaler)
    forward = torch.compile(model) if cfg.train.compile else model
    return Loop(
        cfg,
        task,
        model,
        forward,
        precision,
        optimizer,
        scheduler,
        scaler,
        task.loss(cfg),
        train_loader,
        val_loader,
        steps_per_epoch,
    )


def check_monitor(loop: Loop) -> None:
    """``train.monitor`` must name a metric this run reports, or best/early stopping would be blind."""
    names = [*loop.task.metrics(loop.cfg).compute(), "loss"]
    splits = ("train", "val") if loop.val_loader is not None else ("train",)
    valid = [f"{s}/{n}" for s in splits for n in names]
    if loop.cfg.train.monitor not in valid:
        hint = did_you_mean(loop.cfg.train.monitor, valid)
        raise ConfigError(
            f"train.monitor is '{loop.cfg.train.monitor}', which this run does not report.{hint} "
            f"Valid: {', '.join(valid)}. (Without a validation split only train/ metrics exist.)"
        )


def checkpoint_state(loop: Loop, state: TrainState) -> dict[str, Any]:
    return {
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else {},
        "scaler": loop.scaler.state_dict(),
        "rng": rng_state(),
        "state": asdict(state),
        "data_order": {"seed": loop.cfg.seed, "epoch": state.epoch, "next_batch": state.batch},
    }


def restore(loop: Loop, ckpt: dict[str, Any]) -> TrainState:
    loop.model.load_state_dict(ckpt["model"])
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    if loop.scheduler is not None:
        loop.scheduler.load_state_dict(ckpt["scheduler"])
    loop.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return TrainState(**ckpt["state"])


def train_one_epoch(
    loop: Loop,
    state: TrainState,
    ckpt_dir: Path,
    tracker: Tracker,
    progress: Progress,
    budget_from: float = 0.0,
) -> dict[str, float]:
    """One epoch from ``state.batch`` on; ``budget_from`` is ``state.elapsed`` when this process
    started, so ``train.max_minutes`` is a budget per invocation (a resumed run gets a fresh one)."""
    cfg, t = loop.cfg, loop.cfg.train
    loop.model.train()
    sampler = loop.train_loader.sampler
    sampler.set_epoch(state.epoch, start_batch=state.batch)  # type: ignore[attr-defined]
    n_batches = len(sampler)  # type: ignore[arg-type]
    metrics = loop.task.metrics(cfg)
    running = torch.zeros((), device=loop.precision.device)  # loss sum since the last log, on device
    epoch_loss = torch.zeros((), device=loop.precision.device)
    epoch_batches = 0
    since_log, seen, t0, started = 0, 0, time.perf_counter(), time.perf_counter()
    progress.start_epoch(state.epoch, n_batches, done=state.batch)
    for batch in loop.train_loader:
        b = state.batch
        x, y = loop.task.to_device(batch, loop.precision.device, channels_last=loop.precision.channels_last)
        with loop.precision.autocast():
            out = loop.forward(x)
            loss = loop.loss_fn(out, y)
        loop.scaler.scale(loss / t.accumulate).backward()
        metrics.update(out, y)
        running += loss.detach()
        since_log += 1
        epoch_batches += 1
        seen += len(y)
        state.batch = b + 1
        if state.batch % t.accumulate and state.batch != n_batches:
            continue
        if state.batch == n_batches:  # gradients exist only until the step clears them
            tracker.model_histograms(loop.model, state.step + 1)
        optimizer_step(loop)
        state.step += 1
        if state.step % t.log_every == 0 or state.batch == n_batches:
            now = time.perf_counter()
            avg = running.item() / since_log  # the one host sync
            lr = loop.optimizer.param_groups[-1]["lr"]
            tracker.scalars(
                {"step/loss": avg, "step/lr": lr, "step/samples_per_s": seen / (now - t0)}, state.step
            )
            progress.update(state.batch, loss=avg, metrics=metrics.compute(), throughput=seen / (now - t0))
            epoch_loss += running
            running.zero_()
            since_log, seen, t0 = 0, 0, now
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.batch < n_batches:
            state.elapsed += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(loop, state))
        if t.max_minutes and state.elapsed - budget_from + time.perf_counter() - started > t.max_minutes * 60:
            state.stopped = f"time budget of {t.max_minutes} min reached"
            break
    state.elapsed += time.perf_counter() - started
    epoch_loss += running
    results = {f"train/{k}": v for k, v in metrics.compute().items()}
    return results | {"train/loss": epoch_loss.item() / max(1, epoch_batches)}


def optimizer_step(loop: Loop) -> None:
    clip = loop.cfg.train.grad_clip
    if clip is not None:
        loop.scaler.unscale_(loop.optimizer)
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scheduler is not None and not isinstance(loop.scheduler, lr_scheduler.ReduceLROnPlateau):
        loop.scheduler.step()


@torch.inference_mode()
def evaluate_split(loop: Loop, loader: DataLoader, prefix: str) -> dict[str, float]:
    loop.model.eval()
    metrics = loop.task.metrics(loop.cfg)
    loss_sum, n = torch.zeros((), device=loop.precision.device), 0
    for batch in loader:
        x, y = loop.task.to_device(batch, loop.precision.device, channels_last=loop.precision.channels_last)
        with loop.precision.autocast():
            out = loop.forward(x)
        metrics.update(out, y)
        loss_sum += loop.loss_fn(out.float(), y) * len(y)
        n += len(y)
    results = {f"{prefix}/{k}": v for k, v in metrics.compute().items()}
    return results | {f"{prefix}/loss": loss_sum.item() / max(1, n)}


def end_of_epoch(loop: Loop, state: TrainState, results: dict[str, float], ckpt_dir: Path) -> None:
    """Best checkpoint, plateau scheduler, early stopping, then the ``last`` checkpoint."""
    t = loop.cfg.train
    monitor = t.monitor if t.monitor in results else None
    value = results.get(monitor) if monitor else None
    if isinstance(loop.scheduler, lr_scheduler.ReduceLROnPlateau) and value is not None:
        loop.scheduler.step(value)
    sign = 1 if t.monitor_mode == "max" else -1
    improved = (
        value is None
        or state.best_value is None
        or sign * (value - state.best_value) > t.early_stopping.min_delta
    )
    state.epoch += 1
    state.batch = 0
    if improved:
        state.best_value, state.best_epoch, state.bad_epochs = value, state.epoch - 1, 0
    else:
        state.bad_epochs += 1
        if t.early_stopping.patience and state.bad_epochs >= t.early_stopping.patience:
            state.stopped = f"early stopping: {monitor} did not improve for {state.bad_epochs} epochs"
    ckpt = checkpoint_state(loop, state)
    if improved:
        save_checkpoint(ckpt_dir / "best.pt", ckpt)
    save_checkpoint(ckpt_dir / "last.pt", ckpt)


def fit(
    cfg: RunConfig,
    task: Task,
    data: Any,
    run_dir: Path,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
) -> TrainState:
    """Train ``cfg`` on ``data`` into ``run_dir``; write checkpoints, history and the bundle.

    Args:
        cfg: the resolved run config.
        task: the task that owns model, loss, metrics and loaders.
        data: what ``task.prepare`` returned.
        run_dir: the run directory (``config.yaml`` already written).
        resume: continue from ``run_dir/checkpoints/last.pt``.
        model: train this model instead of a new one from ``cfg`` (it is trained in place and ends
            with the best epoch's weights).

    Returns:
        The final :class:`TrainState` (epochs, best metric, history).
    """
    loop = setup(cfg, task, data, model)
    check_monitor(loop)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = restore(loop, load_checkpoint(ckpt_dir / "last.pt")) if resume else TrainState()
    if state.stopped.startswith("time budget"):
        state.stopped = ""  # resuming a run that ran out of time continues it
    budget_from = state.elapsed
    tracker = Tracker(cfg, run_dir, resume_run_id=state.mlflow_run_id or None)
    state.mlflow_run_id = tracker.mlflow_run_id or ""
    progress = Progress(epochs=cfg.train.epochs, describe=loop.precision.describe())
    status = "FAILED"
    try:
        if not resume:
            first = next(iter(loop.train_loader))[0]  # images: uint8 (B, C, H, W); texts: ids (B, L)
            if first.dtype == torch.uint8 and first.ndim == 4:
                tracker.sample_grid(first)
            tracker.graph(loop.model, first[:2].to(loop.precision.device))
            seed_everything(cfg.seed)  # logging must not shift the RNG stream of training
        with progress:
            while state.epoch < cfg.train.epochs and not state.stopped:
                results = train_one_epoch(loop, state, ckpt_dir, tracker, progress, budget_from)
                if state.stopped and state.batch < len(loop.train_loader):
                    save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(loop, state))
                    break
                if loop.val_loader is not None:
                    results |= evaluate_split(loop, loop.val_loader, "val")
                results["epoch"] = state.epoch
                state.history.append(results)
                tracker.scalars({k: v for k, v in results.items() if k != "epoch"}, state.step)
                end_of_epoch(loop, state, results, ckpt_dir)
                progress.end_epoch(results)
                atomic_write_text(run_dir / "history.json", json.dumps(state.history, indent=2))
        _write_bundle(loop, state, run_dir, tracker, task.state_files(data))
        status = "FINISHED"
    finally:
        tracker.close(status)
    return state


def _write_bundle(
    loop: Loop, state: TrainState, run_dir: Path, tracker: Tracker, state_files: dict[str, bytes]
) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        loop.model.load_state_dict(load_checkpoint(best)["model"])
    calibration = loop.task.calibrate(loop.cfg, loop.model, loop.val_loader, loop.precision.device)
    summary = state.history[state.best_epoch] if 0 <= state.best_epoch < len(state.history) else {}
    save_bundle(
        run_dir / "bundle",
        model=loop.model,
        cfg=loop.cfg,
        task=loop.task,
        state_files=state_files,
        extra={
            "trained": {
                "epochs": state.epoch,
                "best_epoch": state.best_epoch,
                "steps": state.step,
                "seconds": round(state.elapsed, 1),
                "stopped": state.stopped,
                "metrics": summary,
            },
            **({"calibration": calibration} if calibration else {}),
        },
    )
    tracker.artifacts(run_dir / "bundle", "bundle")
