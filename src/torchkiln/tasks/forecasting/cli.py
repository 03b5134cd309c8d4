"""Forecasting on the command line: ``kiln backtest``, ``kiln predict --history`` and the score tables.

``backtest`` is a ``torchkiln.commands`` entry point: ``kiln`` mounts it without naming this family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from torchkiln.core.console import fail, out
from torchkiln.core.errors import KilnError, PredictError

if TYPE_CHECKING:
    from torchkiln.tasks.base import PredictArgs

MODEL_NAMES = {"model": "network", "naive": "naive", "seasonal_naive": "seasonal naive"}
REL_MAE = "rel. MAE = MAE / seasonal naive's MAE on the same windows (< 1 beats it)."


def forecast_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    """Models x (MAE, RMSE, sMAPE, MASE, rel. MAE), the network first."""
    table = Table(title=title)
    table.add_column("model")
    for header in ("MAE", "RMSE", "sMAPE %", "MASE", "rel. MAE"):
        table.add_column(header, justify="right")
    for name, m in metrics.items():
        values = (m["mae"], m["rmse"], m["smape"], m["mase"], m["relative_mae"])
        table.add_row(
            MODEL_NAMES.get(name, name.upper()), *(f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" for v in values)
        )
    return table


def predict_lines(predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
    """``kiln predict BUNDLE --history series.csv [--horizon H]``: a table of timestamps and quantiles."""
    from torchkiln.tasks.forecasting.task import read_history

    cfg = predictor.bundle.config
    if args.history is None:
        raise PredictError("A forecaster needs the series so far: pass --history series.csv.")
    if args.horizon is not None and args.horizon > cfg.data.horizon:
        raise PredictError(
            f"--horizon {args.horizon} is longer than the {cfg.data.horizon} steps this model forecasts. "
            f"Pass --horizon {cfg.data.horizon} or less, or retrain with data.horizon: {args.horizon}."
        )
    [res] = predictor.predict([read_history(cfg, args.history)])
    n = args.horizon or cfg.data.horizon
    res = {
        "timestamps": res["timestamps"][:n],
        "steps": res["steps"][:n],
        "forecast": {k: v[:n] for k, v in res["forecast"].items()},
        "quantiles": {q: {k: v[:n] for k, v in by.items()} for q, by in res["quantiles"].items()},
    }
    if as_json:
        return [json.dumps(res)]
    qs = list(res["quantiles"])
    table = Table(title=f"forecast from {args.history.name}")
    table.add_column("time")
    for name in res["forecast"]:
        table.add_column(f"{name} (median)", justify="right")
        table.add_column(f"{name} {qs[0]}-{qs[-1]}", justify="right")
    for i, t in enumerate(res["timestamps"]):
        cells = [t]
        for name, values in res["forecast"].items():
            low, high = res["quantiles"][qs[0]][name][i], res["quantiles"][qs[-1]][name][i]
            cells += [f"{values[i]:.4g}", f"{low:.4g} .. {high:.4g}"]
        table.add_row(*cells)
    return [table]


def backtest(
    config: Annotated[Path, typer.Argument(help="A forecasting run config YAML.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: --set train.epochs=5 (repeatable)."),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="How many successive forecast origins.")] = 3,
    step: Annotated[
        int | None, typer.Option(min=1, help="Steps between the folds' ends (default: data.horizon).")
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Train every fold with this many seeds, from the config's seed up.")
    ] = 1,
) -> None:
    """Rolling-origin backtest: train and test a forecasting config at FOLDS successive ends of its data."""
    from torchkiln.tasks.base import load_config
    from torchkiln.tasks.forecasting.backtest import backtest as run_backtest

    try:
        cfg = load_config(config, set_ or [])
        result = run_backtest(cfg, folds=folds, step=step, seeds=range(cfg.seed, cfg.seed + seeds))
    except KilnError as exc:
        fail(exc)
    for f in result.folds:
        m = f.metrics["model"]
        out.print(
            f"{f'seed {f.seed}, ' if seeds > 1 else ''}fold {f.index}: data to {f.end}, test {f.test[0]} .. "
            f"{f.test[1]}: MASE {m['mase']:.3f}  rel. MAE {m['relative_mae']:.3f}  RMSE {m['rmse']:.4g}  "
            f"({f.train_seconds:.1f} s of training)"
        )
    runs = f"{folds} folds" + (f" x {seeds} seeds" if seeds > 1 else "")
    out.print(forecast_table(f"mean over {runs}", result.mean))
    if result.seed_std:
        for seed, m in result.per_seed.items():
            n = m["model"]
            out.print(
                f"network, seed {seed}: MASE {n['mase']:.3f}  rel. MAE {n['relative_mae']:.3f}  "
                f"RMSE {n['rmse']:.4g}"
            )
        n, sd = result.mean["model"], result.seed_std["model"]
        out.print(
            f"network over seeds (mean ± sd of the per-seed means): MASE {n['mase']:.3f} ± {sd['mase']:.3f}  "
            f"rel. MAE {n['relative_mae']:.3f} ± {sd['relative_mae']:.3f}  "
            f"RMSE {n['rmse']:.2f} ± {sd['rmse']:.2f}"
        )
    out.print(REL_MAE)
    out.print(f"summary: {result.summary}")
