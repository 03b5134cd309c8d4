"""A task's run through the engine: its loaders and train module into ``fit``, and the bundle after.

The engine knows nothing of tasks or bundles; this is where the two meet, once, for ``kiln train``,
its resume and the backtests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from torchkiln.artifacts.bundle import init_from_bundle, load_bundle, save_bundle
from torchkiln.core.config import RunConfig
from torchkiln.core.config_io import dump_config
from torchkiln.core.errors import CheckpointError, ConfigError
from torchkiln.core.io import atomic_write_text
from torchkiln.engine import distributed
from torchkiln.engine.checkpoint import load_checkpoint
from torchkiln.engine.trainer import FitResult, Loaders, TrainState, fit
from torchkiln.tasks.base import ConfigCalibrator, Task, get_task, input_profile, validate
from torchkiln.tasks.classification_baseline import val_summary
from torchkiln.tasks.reference import training_reference

log = logging.getLogger("torchkiln.train")

EpochHook = Callable[[TrainState, dict[str, float]], None]  # after each epoch: (state, figures)


def new_run_dir(cfg: RunConfig) -> Path:
    """``runs_dir/run_name/<timestamp>`` (with ``-2``, ``-3``... when that exists), created."""
    base = Path(cfg.runs_dir) / cfg.run_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def train_new_run(cfg: RunConfig, *, on_epoch: EpochHook | None = None) -> Path:
    """Check the data, then train a new run; returns its directory (the bundle is ``run_dir/bundle``).

    Raises:
        ConfigError, DataError: before any compute, if the config or data is bad (no run is left).
    """
    distributed.init_from_env(timeout_s=cfg.train.ddp_timeout)  # under torchrun: join the other processes
    task = get_task(cfg.task.kind)
    # All data checks happen in prepare, before any compute. A run that starts from a bundle's weights
    # keeps its fitted preprocessing (a tokenizer): the weights fit that one, and a refit would move ids.
    state = None
    if cfg.model.init_from:
        files = load_bundle(cfg.model.init_from).state_files
        state = task.load_state(cfg, files) if files else None
    resolved, data = task.prepare(cfg, state=state)
    main = distributed.is_main()  # in a process group rank 0 makes the run directory and writes its files
    made: Path | None = None  # what this process created, from the moment it exists
    try:  # everything after the directory exists: torchrun's SIGTERM (another rank failed) may come anywhere
        if main:
            made = new_run_dir(resolved)
        run_dir = Path(distributed.broadcast_text(str(made) if main else ""))
        if main:
            _write_run_files(run_dir, resolved, task, data)
        train_task(resolved, task, data, run_dir, on_epoch=on_epoch)
    except BaseException:
        if made is not None and not any((made / "checkpoints").glob("*.pt")):
            shutil.rmtree(made, ignore_errors=True)  # failed before any progress: leave nothing behind
            with contextlib.suppress(OSError):  # <runs_dir>/<name> too, unless other runs live there
                made.parent.rmdir()
        raise
    return run_dir


def _write_run_files(run_dir: Path, resolved: RunConfig, task: Task, data: Any) -> None:
    """The resolved config, the state fitted on train (what a resume must reuse) and the skipped items."""
    (run_dir / "config.yaml").write_text(dump_config(resolved), encoding="utf-8")
    for name, content in task.state_files(data).items():
        (run_dir / "state").mkdir(exist_ok=True)
        (run_dir / "state" / name).write_bytes(content)
    if data.problems:
        lines = [f"{item}\t{reason}" for item, reason in data.problems]
        (run_dir / "skipped.tsv").write_text("item\treason\n" + "\n".join(lines) + "\n", encoding="utf-8")


def late_epochs_note(trained: dict[str, Any], monitor: str, patience: int | None) -> str | None:
    """What the end of ``kiln train`` says when the best epoch came early and the rest trained for nothing.

    ``trained`` is ``bundle.json``'s ``trained``. None when early stopping is on (``patience``), the run
    stopped early anyway, or fewer than max(2, a quarter of the epochs) came after the best one.

    Example:
        >>> late_epochs_note({"epochs": 10, "best_epoch": 3, "seconds": 100.0}, "val/loss", None)[:46]
        'the best epoch was 4 of 10: the 6 after it (ab'
    """
    epochs, best = int(trained.get("epochs", 0)), int(trained.get("best_epoch", -1))
    after = epochs - best - 1
    if patience is not None or trained.get("stopped") or best < 0 or after < max(2, epochs // 4):
        return None
    share = after / epochs
    spent = f"about {share:.0%} of the training, about {share * float(trained.get('seconds', 0.0)):.0f} s"
    return (
        f"the best epoch was {best + 1} of {epochs}: the {after} after it ({spent}) did not improve "
        f"{monitor}. The bundle keeps the best epoch; set train.early_stopping.patience (e.g. 2) to stop "
        f"once {monitor} stops improving."
    )


@dataclass(frozen=True)
class ResumePoint:
    """Where a run's last checkpoint left it: what ``kiln train --resume`` says before it continues."""

    run_dir: Path
    epoch: int  # the epoch in progress, 0-based
    batch: int  # the next batch within it
    step: int  # optimizer steps taken
    epochs: int  # train.epochs of the saved config
    stopped: str  # why it stopped early, if it did ("" when it did not)

    @property
    def complete(self) -> bool:
        """Nothing left to train: every epoch done, or stopped early (a time budget is not an end)."""
        return self.epoch >= self.epochs or bool(self.stopped and not self.stopped.startswith("time budget"))

    def describe(self) -> str:
        within = f" (batch {self.batch})" if self.batch else ""
        return f"epoch {self.epoch + 1} of {self.epochs}{within}, step {self.step}"


def resume_point(run_dir: Path) -> ResumePoint:
    """Read where ``run_dir`` stopped, from its config and last checkpoint.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory, or has no usable checkpoint.
    """
    cfg = _saved_config(run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]
    return ResumePoint(
        run_dir, state["epoch"], state["batch"], state["step"], cfg.train.epochs, state.get("stopped", "")
    )


def resume_run(run_dir: Path, *, epochs: int | None = None) -> Path:
    """Continue ``run_dir`` from its last checkpoint, with its saved config and fitted state.

    A complete run (see :class:`ResumePoint`) is left as it is, bundle included. ``epochs`` raises
    ``train.epochs`` in the saved config first, which extends a run that finished its epochs.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory, or has no usable checkpoint.
        ConfigError: ``epochs`` is below the epochs the run has already trained.
    """
    resolved = _saved_config(run_dir)
    distributed.init_from_env(timeout_s=resolved.train.ddp_timeout)
    point = resume_point(run_dir)  # reads last.pt once
    if epochs is not None and epochs != resolved.train.epochs:
        if epochs < point.epoch:
            raise ConfigError(
                f"train.epochs={epochs} is below the {point.epoch} epoch(s) '{run_dir}' has already trained. "
                f"A resume can only extend a run: give train.epochs of at least {point.epoch}, or start a "
                f"new run."
            )
        raw = resolved.model_dump(mode="json")
        raw["train"]["epochs"] = epochs
        resolved = validate(raw)
        if distributed.is_main():
            atomic_write_text(run_dir / "config.yaml", dump_config(resolved))
        point = dataclasses.replace(point, epochs=epochs)
    if point.complete:
        return run_dir
    task = get_task(resolved.task.kind)
    files = {p.name: p.read_bytes() for p in sorted((run_dir / "state").glob("*"))}
    # The state the run started with (a tokenizer): refitting could differ, and the weights fit it.
    _, data = task.prepare(resolved, state=task.load_state(resolved, files) if files else None)
    train_task(resolved, task, data, run_dir, resume=True)
    return run_dir


def _saved_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"'{run_dir}' is not a run directory (no config.yaml). Pass the directory that "
            f"'kiln train' printed as its last line."
        )
    return validate(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))


def task_loaders(task: Task, cfg: RunConfig, data: Any) -> Loaders:
    """The train batches (shuffled, augmented) and the val batches, None if the val split is empty."""
    val = task.loader(cfg, data, "val", train=False) if len(data.splits["val"]) else None
    return Loaders(task.loader(cfg, data, "train", train=True), val)


def train_task(
    cfg: RunConfig,
    task: Task,
    data: Any,
    run_dir: Path,
    *,
    resume: bool = False,
    modules: nn.ModuleDict | None = None,
    bundle: bool = True,
    on_epoch: EpochHook | None = None,
) -> FitResult:
    """Train ``task`` on ``data`` into ``run_dir``; with ``bundle``, calibrate, profile the held-out split
    (``evaluate.reference``) and write ``run_dir/bundle``.

    Args:
        cfg: the resolved config (``task.prepare`` gave it, with ``data``).
        task: the run's task.
        data: what ``task.prepare`` returned.
        run_dir: the run directory (``config.yaml`` already written).
        resume: continue from the last checkpoint.
        modules: train these instead of new modules (a pruned model to fine-tune).
        bundle: write the bundle at the end (a fine-tune inside ``kiln export`` does not).
        on_epoch: called after every epoch with the state and its figures (see :func:`fit`).

    Returns:
        What :func:`~torchkiln.engine.trainer.fit` returns: the state and the best weights.

    Example:
        >>> resolved, data = task.prepare(cfg)
        >>> train_task(resolved, task, data, run_dir).state.best_value
    """
    loaders = task_loaders(task, cfg, data)
    train = task.train_module(cfg)
    if cfg.model.init_from and modules is None and not resume:  # a new run from an earlier bundle's weights
        modules = train.build_modules(cfg)
        for note in init_from_bundle(modules, cfg.model.init_from, cfg):
            log.info("%s", note)

    def write_bundle(result: FitResult) -> Path:
        model = result.modules[train.serves]
        calibration = task.calibrate(cfg, model, loaders.val, result.device)
        # What calibration chose that the answers read from the config (a classifier's threshold).
        saved = task.calibrated_config(cfg, calibration) if isinstance(task, ConfigCalibrator) else cfg
        # After calibration, with its config: the reference records the answers as served.
        reference = training_reference(saved, task, data, model, result.device)
        s = result.state
        summary = s.history[s.best_epoch] if 0 <= s.best_epoch < len(s.history) else {}
        trained = {
            "epochs": s.epoch,
            "best_epoch": s.best_epoch,
            "steps": s.step,
            "samples": s.samples,  # training items seen, by all processes together
            "seconds": round(s.elapsed, 1),
            "stopped": s.stopped,
            "metrics": summary,
        }
        # Beside a linear baseline on the same val split; a warning when the model is below it.
        baseline = val_summary(cfg, task, data, summary)
        return save_bundle(
            run_dir / "bundle",
            modules=result.modules,
            serves=train.serves,
            cfg=saved,
            task=task,
            state_files=task.state_files(data),
            profile={"raw": input_profile(task, data)},
            reference=reference,
            extra={
                "trained": trained,
                **({"calibration": calibration} if calibration else {}),
                **({"baseline": baseline} if baseline else {}),
            },
        )

    return fit(
        cfg,
        train,
        loaders,
        run_dir,
        resume=resume,
        modules=modules,
        finish=write_bundle if bundle else None,
        on_epoch=on_epoch,
    )
