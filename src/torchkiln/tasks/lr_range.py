"""``kiln lr-find``: a config's run built as ``kiln train`` builds it, the range test, its plot and data.

The test itself is :func:`torchkiln.engine.lr_find.lr_find`; this module brings a task's data, loaders and
train module to it and writes what it measured. It leaves no run directory, checkpoint or MLflow run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

from torchkiln.artifacts.bundle import init_from_bundle, load_bundle
from torchkiln.core.config import RunConfig
from torchkiln.core.io import atomic_write, atomic_write_text
from torchkiln.engine.lr_find import LRFindResult, check_range
from torchkiln.engine.lr_find import lr_find as range_test
from torchkiln.engine.trainer import setup
from torchkiln.tasks.base import get_task
from torchkiln.tasks.training import task_loaders

log = logging.getLogger("torchkiln.train")


def default_out(cfg: RunConfig) -> Path:
    """``<runs_dir>/<run_name>/lr-find``: beside the run folders, never one of them (no config.yaml)."""
    return Path(cfg.runs_dir) / cfg.run_name / "lr-find"


def lr_find(
    cfg: RunConfig,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    diverge: float = 4.0,
    out: Path | None = None,
) -> LRFindResult:
    """The learning-rate range test on ``cfg``'s run; writes ``lr-find.png`` and ``lr-find.json`` to ``out``.

    The run is built as ``kiln train`` builds it (``task.prepare``, the loaders, the train module,
    ``model.init_from``, then the engine's ``setup``: device, precision, memory format, compile), and
    trained for up to ``steps`` optimizer steps with ``train.optimizer.lr`` growing exponentially from
    ``start_lr`` to ``end_lr``.

    Args:
        cfg: the run config, as for :func:`torchkiln.api.train`.
        steps: optimizer steps of the test.
        start_lr, end_lr: the range of ``train.optimizer.lr``.
        diverge: stop when the smoothed loss is over this factor times its best.
        out: the folder for the plot and the JSON (default ``<runs_dir>/<run_name>/lr-find``).

    Returns:
        The rates, losses and suggestions, with ``plot`` and ``data`` set to the files written.

    Raises:
        ConfigError: bad test settings (before the data is read), or a bad config.
        DataError: the data cannot be used, as for ``kiln train``.

    Example:
        >>> result = lr_find(load_config("examples/fashion-mnist.yaml"), steps=100)
        >>> f"kiln train examples/fashion-mnist.yaml --lr {result.suggestion:.2g}"
    """
    check_range(steps=steps, start_lr=start_lr, end_lr=end_lr, diverge=diverge)
    task = get_task(cfg.task.kind)
    state = None
    if cfg.model.init_from:  # the tokenizer or other fitted state the bundle's weights fit
        files = load_bundle(cfg.model.init_from).state_files
        state = task.load_state(cfg, files) if files else None
    resolved, data = task.prepare(cfg, state=state)
    train = task.train_module(resolved)
    modules = None
    if resolved.model.init_from:
        modules = train.build_modules(resolved)
        for note in init_from_bundle(modules, resolved.model.init_from, resolved):
            log.info("%s", note)
    loop = setup(resolved, train, task_loaders(task, resolved, data), modules)
    result = range_test(loop, steps=steps, start_lr=start_lr, end_lr=end_lr, diverge=diverge)
    folder = Path(out) if out is not None else default_out(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    data_file, plot_file = folder / "lr-find.json", folder / "lr-find.png"
    atomic_write_text(data_file, json.dumps(result.to_dict(), indent=2) + "\n")
    png = plot_png(result, title=f"{resolved.run_name}: {resolved.train.optimizer.name}")
    atomic_write(plot_file, lambda fh: fh.write(png))
    return dataclasses.replace(result, plot=plot_file, data=data_file)


def plot_png(result: LRFindResult, *, title: str) -> bytes:
    """The raw and smoothed loss against the rate on a log axis, with both suggestions marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: matplotlib is slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    marks = (
        (result.suggestion, "C3", "-", "suggestion (steepest descent)"),
        (result.min_tenth, "C2", "--", "minimum / 10"),
    )
    for lr, color, style, name in marks:
        if lr is not None:
            ax.axvline(lr, color=color, linestyle=style, linewidth=1.2, label=f"{name}: {lr:.2g}")
    if result.smoothed:  # the blow-up would squash the curve: the y axis spans the way down to the minimum
        s = result.smoothed
        lowest = min(range(len(s)), key=s.__getitem__)
        low, top = min(s[lowest], *result.losses[: lowest + 1]), max(s[: lowest + 1])
        if top > low:
            ax.set_ylim(low - 0.05 * (top - low), top + 0.15 * (top - low))
    ax.set_xlabel("learning rate (train.optimizer.lr)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
