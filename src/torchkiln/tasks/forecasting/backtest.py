"""Rolling-origin backtests of a forecasting config: train and test again at N successive origins.

One test split says how a model did on one stretch of time. A backtest moves the end of the data back
``step`` steps at a time and, for each of ``folds`` ends, trains the config from scratch on the data up
to that end (``data.end``) and evaluates its test split beside the baselines. Every fold is a full run
with its own bundle and report; the summary averages each metric over the folds.

A network's result also depends on its seed (its initial weights and the order of its batches), and on
short series by more than the gap between two models. With several ``seeds`` every fold is trained once
per seed; the summary gives each seed's mean over the folds and the spread of those means.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.core.io import atomic_write_text
from torchkiln.tasks.base import validate
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig
from torchkiln.tasks.forecasting.data import iso_time, read_series


@dataclass(frozen=True)
class Fold:
    """One origin: the data it saw, its run, and its test metrics per model (the network and baselines)."""

    index: int
    seed: int
    end: str  # the last timestamp the run used
    test: tuple[str, str]  # the first and last target time of its test split
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    train_seconds: float


Metrics = dict[str, dict[str, float]]  # model -> metric -> value


@dataclass(frozen=True)
class BacktestResult:
    folds: list[Fold]  # seed by seed, each seed's folds in time order
    mean: Metrics  # mean over every fold of every seed
    summary: Path  # backtest.json beside the fold runs
    per_seed: dict[int, Metrics]  # seed -> mean over its folds
    seed_std: Metrics  # standard deviation of the per-seed means ({} with one seed)


def backtest(
    cfg: RunConfig, *, folds: int = 3, step: int | None = None, seeds: Sequence[int] | None = None
) -> BacktestResult:
    """Train and evaluate ``cfg`` at ``folds`` successive ends of the series, ``step`` steps apart.

    Args:
        cfg: a forecasting config.
        folds: how many origins (at least 2).
        step: steps between consecutive ends; default ``data.horizon``. The last fold ends where the
            data ends (or at ``data.end``).
        seeds: train every fold once per seed (distinct, >= 0); default ``[cfg.seed]``.

    Returns:
        The folds and the mean of each metric; ``backtest.json`` is written to
        ``runs_dir/<name>-backtest/`` with one run directory per fold beside it.

    Raises:
        ConfigError: the config is not a forecasting one, or folds/step/seeds are out of range.
        DataError: the series is too short for this many folds (the message gives the sizes).

    Example:
        >>> result = backtest(load_config("examples/air-passengers.yaml"), folds=3)
        >>> result.mean["model"]["relative_mae"]
        >>> backtest(cfg, folds=3, seeds=[0, 1, 2]).seed_std["model"]["rmse"]
    """
    from torchkiln.artifacts.bundle import load_bundle
    from torchkiln.tasks.forecasting.evaluate import evaluate_forecast
    from torchkiln.tasks.training import train_new_run

    d = cfg.data
    if not isinstance(d, TimeSeriesDataConfig):
        raise ConfigError(f"kiln backtest is for forecasting configs; this one is {cfg.task.kind}.")
    if folds < 2:
        raise ConfigError(f"A backtest needs at least 2 folds; got {folds}. Use --folds 2 or more.")
    step = d.horizon if step is None else step
    if step < 1:
        raise ConfigError(f"--step must be at least 1; got {step}.")
    seeds = [cfg.seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"A backtest's seeds must be distinct integers >= 0, at least one; got {seeds}. "
            "Use --seeds N for N seeds counted up from the config's seed."
        )
    times = read_series(d).time
    ends = [len(times) - 1 - (folds - 1 - k) * step for k in range(folds)]
    if ends[0] < 0:
        raise DataError(
            f"The series has {len(times)} steps, too few for {folds} folds {step} steps apart. Use fewer "
            f"--folds or a smaller --step."
        )
    root = Path(cfg.runs_dir) / f"{cfg.run_name}-backtest"
    done: list[Fold] = []
    for seed in seeds:
        for k, last in enumerate(ends):
            raw = cfg.model_dump(mode="json")
            raw["data"] = {**raw["data"], "end": iso_time(times[last])}
            raw["seed"], raw["runs_dir"] = seed, str(root)
            raw["name"] = f"fold{k + 1}" if len(seeds) == 1 else f"seed{seed}-fold{k + 1}"
            run_dir = train_new_run(validate(raw))  # what api.train does with a config
            bundle = load_bundle(run_dir / "bundle")
            result = evaluate_forecast(bundle, split="test", out_dir=run_dir / "eval" / "test")
            done.append(
                Fold(
                    k + 1,
                    seed,
                    iso_time(times[last]),
                    result.span,
                    run_dir,
                    result.metrics,
                    float(bundle.meta.get("trained", {}).get("seconds", math.nan)),
                )
            )
    per_seed = {
        seed: _reduce([f.metrics for f in done if f.seed == seed], statistics.fmean) for seed in seeds
    }
    seed_std = _reduce(list(per_seed.values()), statistics.stdev) if len(seeds) > 1 else {}
    mean = _reduce([f.metrics for f in done], statistics.fmean)
    summary = root / "backtest.json"
    payload = _as_json(done, mean, step) | {
        "seeds": seeds,
        "per_seed": {str(seed): m for seed, m in per_seed.items()},
        "seed_std": seed_std,
    }
    atomic_write_text(summary, json.dumps(payload, indent=2))
    return BacktestResult(done, mean, summary, per_seed, seed_std)


def _reduce(runs: list[Metrics], how: Callable[[list[float]], float]) -> Metrics:
    """``how`` (a mean, a standard deviation) of each metric over ``runs``, where every run has it."""
    out: Metrics = {}
    for model in runs[0]:
        names = [n for n, v in runs[0][model].items() if isinstance(v, int | float)]
        out[model] = {
            n: float(how([m[model][n] for m in runs]))
            for n in names
            if all(isinstance(m.get(model, {}).get(n), int | float) for m in runs)
        }
    return out


def _as_json(folds: list[Fold], mean: Metrics, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "folds": [
            {
                "fold": f.index,
                "seed": f.seed,
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
