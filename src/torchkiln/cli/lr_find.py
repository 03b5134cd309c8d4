"""`kiln lr-find`: a thin wrapper over :func:`torchkiln.tasks.lr_range.lr_find` (the range test)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.cli_options import BatchSizeOpt, DeviceOpt, SeedOpt, SetOpt, run_overrides
from torchkiln.core.console import err, fail, out, show_warnings
from torchkiln.core.errors import KilnError


def lr_find_command(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config YAML.")],
    steps: Annotated[int, typer.Option(min=2, help="Optimizer steps of the test, at most.")] = 100,
    start_lr: Annotated[float, typer.Option("--start-lr", help="The first learning rate.")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", help="The last learning rate.")] = 10.0,
    diverge: Annotated[
        float, typer.Option(help="Stop when the smoothed loss is over this many times its best.")
    ] = 4.0,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for lr-find.png and lr-find.json (default: RUNS/NAME/lr-find)."),
    ] = None,
    set_: SetOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Find a learning rate: train a few steps with the rate growing from --start-lr to --end-lr.

    The run is built as kiln train builds it and left untouched: nothing but the plot and its data is
    written. The last line printed is the kiln train command with the suggested --lr."""
    from torchkiln.api import lr_find
    from torchkiln.engine.lr_find import check_range
    from torchkiln.tasks.base import load_config

    show_warnings()
    try:
        check_range(steps=steps, start_lr=start_lr, end_lr=end_lr, diverge=diverge)
        overrides = run_overrides(set_, batch_size=batch_size, device=device, seed=seed)
        cfg = load_config(config, overrides)
        err.print(f"range test: up to {steps} steps, lr {start_lr:g} to {end_lr:g}", soft_wrap=True)
        result = lr_find(cfg, steps=steps, start_lr=start_lr, end_lr=end_lr, diverge=diverge, out=out_dir)
    except KilnError as exc:
        fail(exc)
    ended = f" (stopped early: {result.stopped})" if result.stopped else ""
    out.print(f"steps: {len(result.lrs)} of {steps}{ended}", highlight=False)
    if result.suggestion is None or result.min_tenth is None:
        err.print("no suggestion: too few steps to tell. Lower --start-lr, or raise --steps.", soft_wrap=True)
    else:
        out.print(f"suggested lr (steepest descent): {result.suggestion:.2g}", highlight=False)
        out.print(f"minimum / 10: {result.min_tenth:.2g}", highlight=False)
    out.print(f"plot: {result.plot}", highlight=False)
    out.print(f"data: {result.data}", highlight=False)
    if result.suggestion is not None:
        flags = [
            *_flags(set_, batch_size=batch_size, device=device, seed=seed),
            "--lr",
            f"{result.suggestion:.2g}",
        ]
        print(shlex.join(["kiln", "train", str(config), *flags]))


def _flags(
    set_: list[str] | None, *, batch_size: int | None, device: str | None, seed: int | None
) -> list[str]:
    """The options given here that ``kiln train`` takes, so the command trains the run that was tested."""
    given = [
        f for s in set_ or () if s.partition("=")[0].strip() != "train.optimizer.lr" for f in ("--set", s)
    ]
    for flag, value in (("--batch-size", batch_size), ("--device", device), ("--seed", seed)):
        if value is not None:
            given += [flag, str(value)]
    return given
