"""Rolling-origin backtests of a forecasting config: train and test again at N successive origins.

One test split says how a model did on one stretch of time. A backtest moves the end of the data back
``step`` steps at a time and, for each of ``folds`` ends, trains the config from scratch on the data up
to that end (``data.end``) and evaluates its test split beside the baselines. Every fold is a full run
with its own bundle and report; the summary averages each metric over the folds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkiln.config import validate
from torchkiln.config.schema import RunConfig, TimeSeriesDataConfig
from torchkiln.data.timeseries import iso_time, read_series
from torchkiln.errors import ConfigError, DataError
from torchkiln.io import atomic_write_text


@dataclass(frozen=True)
class Fold:
    """One origin: the data it saw, its run, and its test metrics per model (the network and baselines)."""

    index: int
    end: str  # the last timestamp the run used
    test: tuple[str, str]  # the first and last target time of its test split
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    train_seconds: float


@dataclass(frozen=True)
class BacktestResult:
    folds: list[Fold]
    mean: dict[str, dict[str, float]]  # model -> metric -> mean over the folds
    summary: Path  # backtest.json beside the fold runs


def backtest(cfg: RunConfig, *, folds: int = 3, step: int | None = None) -> BacktestResult:
    """Train and evaluate ``cfg`` at ``folds`` successive ends of the series, ``step`` steps apart.

    Args:
        cfg: a forecasting config.
        folds: how many origins (at least 2).
        step: steps between consecutive ends; default ``data.horizon``. The last fold ends where the
            data ends (or at ``data.end``).

    Returns:
        The folds and the mean of each metric; ``backtest.json`` is written to
        ``runs_dir/<name>-backtest/`` with one run directory per fold beside it.

    Raises:
        ConfigError: the config is not a forecasting one, or folds/step are out of range.
        DataError: the series is too short for this many folds (the message gives the sizes).

    Example:
        >>> result = backtest(load_config("examples/air-passengers.yaml"), folds=3)
        >>> result.mean["model"]["relative_mae"]
    """
    from torchkiln import api
    from torchkiln.evaluation.forecast import evaluate_forecast
    from torchkiln.tasks.bundle import load_bundle

    d = cfg.data
    if not isinstance(d, TimeSeriesDataConfig):
        raise ConfigError(f"kiln backtest is for forecasting configs; this one is {cfg.task.kind}.")
    if folds < 2:
        raise ConfigError(f"A backtest needs at least 2 folds; got {folds}. Use --folds 2 or more.")
    step = d.horizon if step is None else step
    if step < 1:
        raise ConfigError(f"--step must be at least 1; got {step}.")
    times = read_series(d).time
    ends = [len(times) - 1 - (folds - 1 - k) * step for k in range(folds)]
    if ends[0] < 0:
        raise DataError(
            f"The series has {len(times)} steps, too few for {folds} folds {step} steps apart. Use fewer "
            f"--folds or a smaller --step."
        )
    root = Path(cfg.runs_dir) / f"{cfg.run_name}-backtest"
    done: list[Fold] = []
    for k, last in enumerate(ends):
        raw = cfg.model_dump(mode="json")
        raw["data"] = {**raw["data"], "end": iso_time(times[last])}
        raw["name"], raw["runs_dir"] = f"fold{k + 1}", str(root)
        run_dir = api.train(validate(raw))
        bundle = load_bundle(run_dir / "bundle")
        result = evaluate_forecast(bundle, split="test", out_dir=run_dir / "eval" / "test")
        done.append(
            Fold(
                k + 1,
                iso_time(times[last]),
                result.span,
                run_dir,
                result.metrics,
                float(bundle.meta.get("trained", {}).get("seconds", math.nan)),
            )
        )
    mean = _mean([f.metrics for f in done])
    summary = root / "backtest.json"
    atomic_write_text(summary, json.dumps(_as_json(done, mean, step), indent=2))
    return BacktestResult(done, mean, summary)


def _mean(per_fold: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model in per_fold[0]:
        names = [n for n, v in per_fold[0][model].items() if isinstance(v, int | float)]
        out[model] = {
            n: float(sum(m[model][n] for m in per_fold) / len(per_fold))
            for n in names
            if all(isinstance(m.get(model, {}).get(n), int | float) for m in per_fold)
        }
    return out


def _as_json(folds: list[Fold], mean: dict[str, dict[str, float]], step: int) -> dict[str, Any]:
    return {
        "step": step,
        "folds": [
            {
                "fold": f.index,
                "end": f.end,
                "test": list(f.test),
                "run_dir": str(f.run_dir),
                "train_seconds": f.train_seconds,
                "metrics": f.metrics,
            }
            for f in folds
        ],
        "mean": mean,
    }
