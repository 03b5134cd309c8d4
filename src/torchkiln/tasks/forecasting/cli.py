"""Forecasting on the command line: ``kiln backtest`` and what ``kiln predict --history`` prints.

``backtest`` is a ``torchkiln.commands`` entry point: ``kiln`` mounts it without naming this family, at
every start, so this module imports nothing heavy at the top (the evaluation loads in the command).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from torchkiln.core.cli_options import (
    BatchSizeOpt,
    DeviceOpt,
    EpochsOpt,
    LrOpt,
    RunsDirOpt,
    SeedOpt,
    SetOpt,
    run_overrides,
)
from torchkiln.core.console import fail, out
from torchkiln.core.errors import KilnError


def forecast_lines(res: dict[str, Any], title: str, *, as_json: bool) -> list[Any]:
    """What ``kiln predict --history`` prints: the answer as one JSON line, or a table of timestamps
    with each target's median and outermost interval."""
    if as_json:
        return [json.dumps(res)]
    qs = list(res["quantiles"])
    table = Table(title=title)
    table.add_column("time")
    for name in res["forecast"]:
        table.add_column(f"{name} (median)", justify="right")
        table.add_column(f"{name} {qs[0]}-{qs[-1]}", justify="right")
    places = {  # one number of decimals per target, so its column lines up (442.0 beside 445.2)
        name: decimals([*values, *res["quantiles"][qs[0]][name], *res["quantiles"][qs[-1]][name]])
        for name, values in res["forecast"].items()
    }
    for i, t in enumerate(res["timestamps"]):
        cells = [t]
        for name, values in res["forecast"].items():
            low, high = res["quantiles"][qs[0]][name][i], res["quantiles"][qs[-1]][name][i]
            d = places[name]
            cells += [f"{values[i]:.{d}f}", f"{low:.{d}f} .. {high:.{d}f}"]
        table.add_row(*cells)
    return [table]


def decimals(values: list[float], significant: int = 4) -> int:
    """Decimals that give the largest of ``values`` ``significant`` digits (0 to 6): one for a whole column.

    Example:
        >>> decimals([442.0, 445.23]), decimals([0.0123, 0.5])
        (1, 4)
    """
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 0
    return min(6, max(0, significant - 1 - math.floor(math.log10(max(finite)))))


def backtest(
    config: Annotated[Path, typer.Argument(help="A forecasting run config YAML.")],
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    runs_dir: RunsDirOpt = None,
    folds: Annotated[int, typer.Option(min=2, help="How many successive forecast origins.")] = 3,
    step: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Steps between the folds' ends (default: the test length, data.split.test of the whole "
            "series, so the test periods do not overlap; a smaller step makes them overlap, with a warning).",
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Train every fold with this many seeds, from the config's seed up.")
    ] = 1,
) -> None:
    """Rolling-origin backtest: train and test a forecasting config at FOLDS successive ends of its data."""
    from torchkiln.tasks.base import load_config
    from torchkiln.tasks.forecasting.backtest import backtest as run_backtest
    from torchkiln.tasks.forecasting.evaluate import REL_MAE, forecast_table

    try:
        overrides = run_overrides(
            set_, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, runs_dir=runs_dir
        )
        cfg = load_config(config, overrides)
        result = run_backtest(cfg, folds=folds, step=step, seeds=range(cfg.seed, cfg.seed + seeds))
    except KilnError as exc:
        fail(exc)
    d = decimals([f.metrics["model"]["rmse"] for f in result.folds])  # the same decimals on every line
    for f in result.folds:
        m = f.metrics["model"]
        out.print(
            f"{f'seed {f.seed}, ' if seeds > 1 else ''}fold {f.index}: data to {f.end}, test {f.test[0]} .. "
            f"{f.test[1]}: MASE {m['mase']:.3f}  rel. MAE {m['relative_mae']:.3f}  RMSE {m['rmse']:.{d}f}  "
            f"({f.train_seconds:.1f} s of training)"
        )
    runs = f"{folds} folds" + (f" x {seeds} seeds" if seeds > 1 else "")
    shared = sum(o.steps for o in result.plan.overlaps)
    overlap = f" (test periods overlap: {shared} shared steps counted more than once)" if shared else ""
    out.print(forecast_table(f"mean over {runs}{overlap}", result.mean))
    out.print(
        forecast_table(f"pooled: each of the {result.windows} distinct test windows once", result.pooled)
    )
    if result.seed_std:
        for seed, m in result.per_seed.items():
            n = m["model"]
            out.print(
                f"network, seed {seed}: MASE {n['mase']:.3f}  rel. MAE {n['relative_mae']:.3f}  "
                f"RMSE {n['rmse']:.{d}f}"
            )
        n, sd = result.mean["model"], result.seed_std["model"]
        out.print(
            f"network over seeds (mean ± sd of the per-seed means): MASE {n['mase']:.3f} ± {sd['mase']:.3f}  "
            f"rel. MAE {n['relative_mae']:.3f} ± {sd['relative_mae']:.3f}  "
            f"RMSE {n['rmse']:.{d}f} ± {sd['rmse']:.{d}f}"
        )
    out.print(REL_MAE)
    out.print(f"summary: {result.summary}")
