"""The training loop: plain functions over a task, read top to bottom.

``fit`` sets up, then alternates ``train_one_epoch`` and ``evaluate_split``. The task's
:class:`~torchkiln.engine.step.TrainModule` owns the steps; this module owns the loop around them.
Losses and metrics stay on the device and are read every ``train.log_every`` optimizer steps, so
there is no host sync per step. Checkpoints are written at optimizer-step boundaries with every RNG
state, the position in the epoch and the epoch's running train figures, which is what makes
``--resume`` bitwise exact on CPU.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, did_you_mean
from torchkiln.core.io import atomic_write_text
from torchkiln.engine import distributed
from torchkiln.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from torchkiln.engine.precision import Precision, resolve_precision
from torchkiln.engine.progress import Progress
from torchkiln.engine.step import OptimSpec, StepContext, TrainModule
from torchkiln.engine.tally import EpochTally, computed
from torchkiln.engine.tracking import Tracker

log = logging.getLogger("torchkiln.train")


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
    samples: int = 0  # training items seen in the whole run, by all processes together
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str = ""
    epochs: int = 0  # the train.epochs the schedules were planned for (0: a checkpoint from before this)


class Loaders(NamedTuple):
    """The batches a run trains on, and the held-out ones it validates on (None: no val split)."""

    train: DataLoader
    val: DataLoader | None


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` leaves: where the run got to, and its modules with the best epoch's weights."""

    state: TrainState
    modules: nn.ModuleDict
    device: torch.device


@dataclass
class Loop:
    """The objects one run trains with (built once by :func:`setup`)."""

    cfg: RunConfig
    train: TrainModule
    modules: nn.ModuleDict  # the weights: checkpointed and bundled
    forward: nn.ModuleDict  # what the steps call: ``modules``, or their torch.compile wrappers
    precision: Precision
    optimizers: list[OptimSpec]
    ctx: StepContext
    loaders: Loaders
    steps_per_epoch: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(cfg: RunConfig, train: TrainModule, loaders: Loaders, modules: nn.ModuleDict | None = None) -> Loop:
    """Build everything a run trains with; ``modules`` replaces ``train.build_modules(cfg)`` (e.g. a
    pruned model to fine-tune).

    In a process group each rank gets its shard of every batch, and a run with one optimizer trains
    through ``DistributedDataParallel``. A run with several (a GAN) averages its gradients at each
    ``ctx.step`` instead: DDP expects every parameter that took part in a forward to get a gradient in
    the next backward, and a GAN's discriminator runs in the generator's step without one.
    """
    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    precision = resolve_precision(cfg.train, image_input=train.image_input)
    modules = (modules if modules is not None else train.build_modules(cfg)).to(precision.device)
    if precision.channels_last:
        modules = modules.to(memory_format=torch.channels_last)
    if distributed.active():
        val = distributed.shard_loader(loaders.val, train=False) if loaders.val is not None else None
        loaders = Loaders(distributed.shard_loader(loaders.train, train=True), val)
    steps_per_epoch = math.ceil(len(loaders.train) / cfg.train.accumulate)
    optimizers = train.configure_optimizers(cfg, modules, steps_per_epoch=steps_per_epoch)
    wrapped = _data_parallel(modules, precision.device) if len(optimizers) == 1 else modules
    if len(optimizers) > 1:
        distributed.broadcast_parameters(modules)  # equal on every rank before the first step
    mode = cfg.train.compile if isinstance(cfg.train.compile, str) else None
    forward = (
        nn.ModuleDict({k: torch.compile(m, mode=mode) for k, m in wrapped.items()})
        if cfg.train.compile
        else wrapped
    )
    ctx = StepContext(
        precision=precision,
        optimizers=optimizers,
        modules=forward,
        grad_clip=cfg.train.grad_clip,
        average_grads=distributed.active() and len(optimizers) > 1,
    )
    return Loop(cfg, train, modules, forward, precision, optimizers, ctx, loaders, steps_per_epoch)


def _data_parallel(modules: nn.ModuleDict, device: torch.device) -> nn.ModuleDict:
    """``DistributedDataParallel`` around each module with trainable parameters (in a process group).

    Buffers are not broadcast at every forward: BatchNorm statistics are averaged over ranks at the end
    of each epoch instead (:func:`~torchkiln.engine.distributed.average_buffers`), as timm does.
    """
    if not distributed.active():
        return modules
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renamed broadcast_buffers (still accepted, with a warning) to forward_sync_buffers
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return nn.ModuleDict(
        {
            k: DistributedDataParallel(m, device_ids=ids, **no_sync)
            if any(p.requires_grad for p in m.parameters())
            else m
            for k, m in modules.items()
        }
    )


def check_monitor(loop: Loop) -> None:
    """``train.monitor`` must name a metric this run reports, or best/early stopping would be blind."""
    names = [*computed(loop.train.metrics(loop.cfg)), *loop.train.losses]
    splits = ("train", "val") if loop.loaders.val is not None else ("train",)
    valid = [f"{s}/{n}" for s in splits for n in names]
    if loop.cfg.train.monitor not in valid:
        hint = did_you_mean(loop.cfg.train.monitor, valid)
        raise ConfigError(
            f"train.monitor is '{loop.cfg.train.monitor}', which this run does not report.{hint} "
            f"Valid: {', '.join(valid)}. (Without a validation split only train/ metrics exist.)"
        )


def checkpoint_state(loop: Loop, state: TrainState, tally: EpochTally | None = None) -> dict[str, Any]:
    """Everything a resume needs; ``tally``: the epoch in progress's running figures (mid-epoch only).

    In a process group every rank calls this (it gathers what differs between ranks: their RNG
    streams, running figures and BatchNorm statistics, under ``ranks``); rank 0 writes it.
    """
    ranks = (
        distributed.gather(
            {
                "rng": rng_state(),
                "tally": tally.state_dict() if tally is not None else {},
                "buffers": {k: b for k, b in loop.modules.named_buffers() if b.is_floating_point()},
            }
        )
        if distributed.active()
        else None
    )
    return ({"ranks": ranks} if ranks else {}) | {
        "modules": loop.modules.state_dict(),
        "optimizers": {o.name: o.optimizer.state_dict() for o in loop.optimizers},
        "schedulers": {o.name: o.scheduler.state_dict() for o in loop.optimizers if o.scheduler is not None},
        "scaler": loop.ctx.scaler.state_dict(),
        "rng": rng_state(),
        "state": asdict(state),
        "tally": tally.state_dict() if tally is not None else {},
        "data_order": {"seed": loop.cfg.seed, "epoch": state.epoch, "next_batch": state.batch},
    }


def restore(loop: Loop, ckpt: dict[str, Any], tally: EpochTally) -> TrainState:
    ckpt = upgrade_checkpoint(ckpt, loop.train.serves)
    loop.modules.load_state_dict(ckpt["modules"])
    replan = ckpt["state"].get("epochs", 0) not in (0, loop.cfg.train.epochs)
    for o in loop.optimizers:
        o.optimizer.load_state_dict(ckpt["optimizers"][o.name])
        if o.scheduler is not None and not (replan and isinstance(o.scheduler, PLANNED)):
            o.scheduler.load_state_dict(ckpt["schedulers"][o.name])
    loop.ctx.scaler.load_state_dict(ckpt["scaler"])
    own = _own_part(ckpt)
    set_rng_state(own["rng"])
    if own.get("tally"):
        tally.load_state_dict(own["tally"])
    if own.get("buffers"):
        loop.modules.load_state_dict(own["buffers"], strict=False)
    state = TrainState(**ckpt["state"])
    if state.epochs not in (0, loop.cfg.train.epochs):  # a run extended with more epochs: replan
        for o in loop.optimizers:
            if isinstance(o.scheduler, PLANNED):
                _advance(o.scheduler, state.step)
    return state


def _own_part(ckpt: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG, running figures and buffers from a checkpoint.

    A checkpoint of N processes resumed by N is exact. With another number of processes the run goes on,
    but not bit for bit: rank r takes the RNG of saved rank r mod N, and the epoch in progress's ``train/``
    figures restart at the resume point.
    """
    saved = ckpt.get("ranks") or [{"rng": ckpt["rng"], "tally": ckpt.get("tally", {})}]
    r, world = distributed.rank(), distributed.world_size()
    if len(saved) == world:
        return saved[r]
    if r == 0:
        log.warning(
            "This checkpoint was written by %d process(es) and is resumed by %d: training goes on, but not "
            "bit for bit as an uninterrupted run (random streams differ). Resume with --nproc %d for an "
            "exact resume.",
            len(saved),
            world,
            len(saved),
        )
    return {"rng": saved[r % len(saved)]["rng"]}


# Schedules planned over the run's length (one-cycle; cosine, a LambdaLR of the step): an extended run
# replans them. The others (step, multistep, plateau) do not depend on it and keep their saved state.
PLANNED = (lr_scheduler.OneCycleLR, lr_scheduler.LambdaLR)


def _advance(scheduler: lr_scheduler.LRScheduler, steps: int) -> None:
    """Bring a schedule built for the run's new length to the step the run has reached.

    The schedule stretches over the new length, so the learning rate goes on from where the longer schedule
    would be at this step: a one-cycle or cosine schedule continues its decay over the added epochs
    instead of stopping at its end.
    """
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()


def train_one_epoch(
    loop: Loop,
    state: TrainState,
    tally: EpochTally,
    ckpt_dir: Path,
    tracker: Tracker,
    progress: Progress,
    budget_from: float = 0.0,
) -> dict[str, float]:
    """One epoch from ``state.batch`` on; ``budget_from`` is ``state.elapsed`` when this process
    started, so ``train.max_minutes`` is a budget per invocation (a resumed run gets a fresh one)."""
    t, ctx, train = loop.cfg.train, loop.ctx, loop.train
    loop.modules.train()
    sampler = loop.loaders.train.sampler
    sampler.set_epoch(state.epoch, start_batch=state.batch)  # type: ignore[attr-defined]
    n_batches = len(sampler)  # type: ignore[arg-type]
    world = distributed.world_size()
    global_items = getattr(sampler, "batch_items", None)  # a shard's whole batch, in a process group
    full = n_batches - n_batches % t.accumulate  # batches before this index are in full groups
    ctx.metrics = tally.metrics
    seen, t0, started = 0, time.perf_counter(), time.perf_counter()
    progress.start_epoch(state.epoch, n_batches, done=state.batch)
    for batch in loop.loaders.train:
        b = state.batch
        last_in_group = (b + 1) % t.accumulate == 0 or b + 1 == n_batches
        items = train.batch_size(batch)
        whole = global_items(b) if global_items is not None else items
        share = items * world / whole  # 1, unless this batch's shards differ in size
        ctx.begin_batch(
            group_size=t.accumulate if b < full else n_batches - full,
            last_in_group=last_in_group,
            share=share,
        )
        # Gradients exist only until the step clears them: histograms of the epoch's last step.
        ctx.before_step = _histograms(loop, tracker, state.step + 1) if b + 1 == n_batches else None
        tally.add(train.training_step(ctx, loop.forward, batch), weight=share)  # the batch's mean loss
        ctx.end_batch()
        seen += items
        state.samples += whole
        state.batch = b + 1
        if not last_in_group:
            continue
        state.step += 1
        logged = state.step % t.log_every == 0 or state.batch == n_batches
        if logged:
            now = time.perf_counter()
            losses = tally.flush()  # the one host sync
            tracker.scalars(
                {f"step/{k}": v for k, v in losses.items()}
                | _learning_rates(loop)
                | {"step/samples_per_s": seen / (now - t0)},
                state.step,
            )
            first = losses.get(train.losses[0], float("nan"))
            progress.update(state.batch, loss=first, metrics=tally.figures(), throughput=seen / (now - t0))
            seen, t0 = 0, now
        if t.checkpoint_every and state.step % t.checkpoint_every == 0 and state.batch < n_batches:
            state.elapsed += time.perf_counter() - started
            started = time.perf_counter()
            _save(ckpt_dir / "last.pt", checkpoint_state(loop, state, tally))
        if t.max_minutes and _over_budget(loop, state, budget_from, started, logged):
            state.stopped = f"time budget of {t.max_minutes} min reached"
            break
    state.elapsed += time.perf_counter() - started
    return tally.results("train")


def _over_budget(loop: Loop, state: TrainState, budget_from: float, started: float, logged: bool) -> bool:
    """``train.max_minutes`` spent? One process checks every step; a process group agrees at log steps,
    so that every rank stops after the same batch."""
    spent = state.elapsed - budget_from + time.perf_counter() - started
    over = spent > (loop.cfg.train.max_minutes or math.inf) * 60
    if not distributed.active():
        return over
    return logged and distributed.any_rank(over, loop.precision.device)


def _save(path: Path, ckpt: dict[str, Any]) -> None:
    """Write a checkpoint from rank 0 (the only process, outside a process group)."""
    if distributed.is_main():
        save_checkpoint(path, ckpt)


def _learning_rates(loop: Loop) -> dict[str, float]:
    if len(loop.optimizers) == 1:
        return {"step/lr": loop.optimizers[0].optimizer.param_groups[-1]["lr"]}
    return {f"step/lr/{o.name}": o.optimizer.param_groups[-1]["lr"] for o in loop.optimizers}


def _histograms(loop: Loop, tracker: Tracker, step: int) -> Callable[[OptimSpec], None] | None:
    """A ``before_step`` hook: each optimizer's parameters, with their gradients unscaled."""
    if not tracker.wants_histograms:
        return None
    names = {id(p): n for n, p in loop.modules.named_parameters()}

    def log(spec: OptimSpec) -> None:
        params = [p for g in spec.optimizer.param_groups for p in g["params"] if id(p) in names]
        tracker.param_histograms(((names[id(p)], p) for p in params), step)

    return log


@torch.inference_mode()
def evaluate_split(loop: Loop, loader: DataLoader, prefix: str) -> dict[str, float]:
    """Held-out figures: the task's metrics, and each loss its ``validation_step`` returns, per item."""
    loop.modules.eval()
    tally = EpochTally(loop.train.metrics(loop.cfg).to(loop.precision.device), loop.precision.device)
    loop.ctx.metrics = tally.metrics
    for batch in loader:
        tally.add(
            loop.train.validation_step(loop.ctx, loop.forward, batch), weight=loop.train.batch_size(batch)
        )
    return tally.results(prefix)


def end_of_epoch(loop: Loop, state: TrainState, results: dict[str, float], ckpt_dir: Path) -> None:
    """Best checkpoint, plateau schedulers, early stopping, then the ``last`` checkpoint."""
    t = loop.cfg.train
    monitor = t.monitor if t.monitor in results else None
    value = results.get(monitor) if monitor else None
    for o in loop.optimizers:
        if isinstance(o.scheduler, lr_scheduler.ReduceLROnPlateau) and value is not None:
            o.scheduler.step(value)
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
        _save(ckpt_dir / "best.pt", ckpt)
    _save(ckpt_dir / "last.pt", ckpt)


def fit(
    cfg: RunConfig,
    train: TrainModule,
    loaders: Loaders,
    run_dir: Path,
    *,
    resume: bool = False,
    modules: nn.ModuleDict | None = None,
    finish: Callable[[FitResult], Path] | None = None,
    on_epoch: Callable[[TrainState, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``cfg`` with ``train``'s steps on ``loaders`` into ``run_dir``; write checkpoints and history.

    Args:
        cfg: the resolved run config.
        train: the task's train module (modules, optimizers, metrics, steps).
        loaders: the train batches and the val batches (None without a val split).
        run_dir: the run directory (``config.yaml`` already written).
        resume: continue from ``run_dir/checkpoints/last.pt``.
        modules: train these modules instead of new ones from ``cfg`` (trained in place; they end with
            the best epoch's weights).
        finish: called with the best weights loaded, before the run is closed; writes the run's
            artifact (the bundle) and returns its path, which is logged to the tracker.
        on_epoch: called after every epoch (its checkpoints written) with the state and the epoch's
            figures (``train/*``, ``val/*``); a tuner reports them here, and may raise to stop the run
            (a pruned trial), which ends it as FAILED with its checkpoints kept.

    Returns:
        The final :class:`TrainState` (epochs, best metric, history) and the trained modules.

    Example:
        >>> result = fit(cfg, task.train_module(cfg), Loaders(train_dl, val_dl), run_dir)
    """
    loop = setup(cfg, train, loaders, modules)
    check_monitor(loop)
    ckpt_dir = run_dir / "checkpoints"
    if distributed.is_main():  # only rank 0 writes: a slower rank must not bring back a run rank 0 removed
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    tally = EpochTally(train.metrics(cfg).to(loop.precision.device), loop.precision.device)
    state = restore(loop, load_checkpoint(ckpt_dir / "last.pt"), tally) if resume else TrainState()
    state.epochs = cfg.train.epochs
    if state.stopped.startswith("time budget"):
        state.stopped = ""  # resuming a run that ran out of time continues it
    budget_from = state.elapsed
    main = distributed.is_main()  # rank 0 tracks, prints and writes; the other ranks only train
    tracker = Tracker(cfg if main else _untracked(cfg), run_dir, resume_run_id=state.mlflow_run_id or None)
    state.mlflow_run_id = tracker.mlflow_run_id or ""
    world = distributed.world_size()
    where = loop.precision.describe() + (f", {world} processes" if world > 1 else "")
    progress = Progress(
        epochs=cfg.train.epochs, describe=where, every=cfg.train.log_epochs, console=None if main else QUIET
    )
    status = "FAILED"
    try:
        if not resume:
            if main:
                _log_first_batch(loop, tracker)
            if distributed.active():  # each rank its own dropout masks; rank 0's stream as in one process
                seed_everything(cfg.seed + distributed.rank())
        with progress:
            while state.epoch < cfg.train.epochs and not state.stopped:
                results = train_one_epoch(loop, state, tally, ckpt_dir, tracker, progress, budget_from)
                if state.stopped and state.batch < len(loop.loaders.train):
                    _save(ckpt_dir / "last.pt", checkpoint_state(loop, state, tally))
                    break
                for module in loop.modules.values():
                    distributed.average_buffers(module)
                tally = EpochTally(train.metrics(cfg).to(loop.precision.device), loop.precision.device)
                if loop.loaders.val is not None:
                    results |= evaluate_split(loop, loop.loaders.val, "val")
                results["epoch"] = state.epoch
                state.history.append(results)
                tracker.scalars({k: v for k, v in results.items() if k != "epoch"}, state.step)
                end_of_epoch(loop, state, results, ckpt_dir)
                _log_epoch_images(loop, tracker, state.step)
                progress.end_epoch(results)
                if main:
                    atomic_write_text(run_dir / "history.json", json.dumps(state.history, indent=2))
                if on_epoch is not None:
                    on_epoch(state, results)
        best = ckpt_dir / "best.pt"
        if main and best.exists():  # the other ranks end with the last weights: only rank 0 writes
            loop.modules.load_state_dict(upgrade_checkpoint(load_checkpoint(best), train.serves)["modules"])
        result = FitResult(state, loop.modules, loop.precision.device)
        if finish is not None and main:
            tracker.artifacts(finish(result), "bundle")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return result


QUIET = Console(quiet=True)  # the progress of ranks other than 0


def _untracked(cfg: RunConfig) -> RunConfig:
    """``cfg`` with TensorBoard and MLflow off: what ranks other than 0 track (nothing)."""
    off = cfg.tracking.model_copy(update={"tensorboard": False, "mlflow": False})
    return cfg.model_copy(update={"tracking": off})


def upgrade_checkpoint(ckpt: dict[str, Any], serves: str) -> dict[str, Any]:
    """A checkpoint written before named modules (one model, optimizer and schedule) in today's layout."""
    if "modules" in ckpt:
        return ckpt
    return ckpt | {
        "modules": {f"{serves}.{k}": v for k, v in ckpt["model"].items()},
        "optimizers": {serves: ckpt["optimizer"]},
        "schedulers": {serves: ckpt["scheduler"]} if ckpt["scheduler"] else {},
    }


@torch.inference_mode()
def _log_epoch_images(loop: Loop, tracker: Tracker, step: int) -> None:
    """The train module's ``epoch_images`` (a GAN's fixed-noise samples), if it has any, to TensorBoard."""
    draw = getattr(loop.train, "epoch_images", None)
    if draw is None or not tracker.wants_images:
        return
    loop.modules.eval()
    for tag, images in draw(loop.modules, loop.precision.device).items():
        tracker.sample_grid(images, step, tag=tag)


def _log_first_batch(loop: Loop, tracker: Tracker) -> None:
    first = loop.train.example_input(next(iter(loop.loaders.train)))
    if first is not None:
        if first.dtype == torch.uint8 and first.ndim == 4:
            tracker.sample_grid(first)
        tracker.graph(loop.modules[loop.train.serves], first[:2].to(loop.precision.device))
    seed_everything(loop.cfg.seed)  # logging must not shift the RNG stream of training
