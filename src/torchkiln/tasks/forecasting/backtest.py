"""Rolling-origin backtests of a forecasting config: train and test again at N successive origins.

One test split says how a model did on one stretch of time. A backtest moves the end of the data back
``step`` steps at a time and, for each of ``folds`` ends, trains the config from scratch on the data up
to that end (``data.end``) and evaluates its test split beside the baselines. Every fold is a full run
with its own bundle and report.

The step defaults to the test length (``data.split.test`` of the whole series), so the folds' test
periods do not overlap and each time step is tested once. A shorter ``step`` makes them overlap: a
warning then names the folds and the shared steps, since the mean over the folds counts the forecasts of
those steps more than once. Two summaries are given either way:

- ``mean``: each metric averaged over the folds, every fold weighing the same;
- ``pooled``: each metric over the distinct forecast targets, as if one evaluation had scored them all. A
  target is a (window origin, horizon step, target column); a window that k runs forecast (overlapping
  folds, several seeds) weighs 1/k in each of them, so it counts once. RMSE is then the root of the
  pooled mean square and rel. MAE the ratio of pooled MAEs, not means of per-fold ratios.

A network's result also depends on its seed (its initial weights and the order of its batches), and on
short series by more than the gap between two models. With several ``seeds`` every fold is trained once
per seed; the summary gives each seed's mean over the folds and the spread of those means.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.core.io import atomic_write_text
from torchkiln.tasks.base import validate
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig
from torchkiln.tasks.forecasting.data import iso_time, read_series
from torchkiln.tasks.forecasting.evaluate import MODEL, REFERENCE, evaluate_forecast
from torchkiln.tasks.forecasting.windows import split_bounds

log = logging.getLogger("torchkiln.train")  # kiln prints it as warning: lines


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


@dataclass(frozen=True)
class FoldOverlap:
    """Two folds whose test periods share time steps: the forecasts of those steps are scored in both."""

    first: int  # fold numbers, from 1
    second: int
    steps: int  # how many time steps both test periods hold
    start: str  # the first and last shared time (ISO 8601)
    end: str


@dataclass(frozen=True)
class FoldForecasts:
    """What pooling needs of one run's test forecasts, in the data's units."""

    origins: np.ndarray  # (W,) datetime64: the time of each window's first forecast step
    target: np.ndarray  # (W, H, C)
    points: dict[str, np.ndarray]  # model -> (W, H, C) point forecasts
    mase_scale: np.ndarray  # (C,) this run's MASE denominators (from its own train part)
    inside: np.ndarray | None = None  # (W, H, C) bool: the target inside the network's interval


@dataclass(frozen=True)
class FoldPlan:
    """Where each fold of a backtest ends and what it tests: known before any training."""

    step: int  # steps between the folds' ends
    test_steps: int  # the test length of the whole series (the default step)
    ends: list[str]  # each fold's last time (its data.end), ISO 8601
    tests: list[tuple[str, str]]  # each fold's first and last test time
    overlaps: list[FoldOverlap]  # the folds whose test periods share steps ([] with the default step)


Metrics = dict[str, dict[str, float]]  # model -> metric -> value


@dataclass(frozen=True)
class BacktestResult:
    folds: list[Fold]  # seed by seed, each seed's folds in time order
    mean: Metrics  # mean over every fold of every seed
    summary: Path  # backtest.json beside the fold runs
    per_seed: dict[int, Metrics]  # seed -> mean over its folds
    seed_std: Metrics  # standard deviation of the per-seed means ({} with one seed)
    pooled: Metrics  # over the distinct forecast targets, each once (see the module docstring)
    windows: int  # distinct test windows (origins) over all folds
    plan: FoldPlan  # the step, each fold's end and test period, and the overlapping folds


def backtest(
    cfg: RunConfig, *, folds: int = 3, step: int | None = None, seeds: Sequence[int] | None = None
) -> BacktestResult:
    """Train and evaluate ``cfg`` at ``folds`` successive ends of the series, ``step`` steps apart.

    Args:
        cfg: a forecasting config.
        folds: how many origins (at least 2).
        step: steps between consecutive ends; default the test length (``data.split.test`` of the
            whole series), so the test periods do not overlap. A smaller step makes them overlap: that is
            logged as a warning on ``torchkiln.train`` and listed in ``overlaps``. The last fold ends
            where the data ends (or at ``data.end``).
        seeds: train every fold once per seed (distinct, >= 0); default ``[cfg.seed]``.

    Returns:
        The folds, the mean of each metric over them and the metrics pooled over the distinct forecast
        targets; ``backtest.json`` is written to ``runs_dir/<name>-backtest/`` with one run directory
        per fold beside it.

    Raises:
        ConfigError: the config is not a forecasting one, has no test split, or folds/step/seeds are
            out of range.
        DataError: the series is too short for this many folds, or a fold's data for its splits (the
            message gives the sizes).

    Example:
        >>> result = backtest(load_config("examples/air-passengers.yaml"), folds=3)
        >>> result.mean["model"]["relative_mae"], result.pooled["model"]["rmse"]
        >>> backtest(cfg, folds=3, seeds=[0, 1, 2]).seed_std["model"]["rmse"]
    """
    seeds = _checked_seeds(cfg, seeds)
    plan = plan_folds(cfg, folds=folds, step=step)
    if plan.overlaps:
        log.warning(overlap_warning(plan.overlaps, plan.test_steps))
    root = Path(cfg.runs_dir) / f"{cfg.run_name}-backtest"
    done: list[Fold] = []
    forecasts: list[FoldForecasts] = []
    for seed in seeds:
        for k, end in enumerate(plan.ends):
            name = f"fold{k + 1}" if len(seeds) == 1 else f"seed{seed}-fold{k + 1}"
            fold, fc = _run_fold(cfg, root, name, k + 1, seed, end)
            done.append(fold)
            forecasts.append(fc)
    per_seed = {
        seed: _reduce([f.metrics for f in done if f.seed == seed], statistics.fmean) for seed in seeds
    }
    result = BacktestResult(
        folds=done,
        mean=_reduce([f.metrics for f in done], statistics.fmean),
        summary=root / "backtest.json",
        per_seed=per_seed,
        seed_std=_reduce(list(per_seed.values()), statistics.stdev) if len(seeds) > 1 else {},
        pooled=pooled_metrics(forecasts),
        windows=len(np.unique(np.concatenate([f.origins for f in forecasts]))),
        plan=plan,
    )
    atomic_write_text(result.summary, json.dumps(_as_json(result, seeds), indent=2))
    return result


def pooled_metrics(runs: Sequence[FoldForecasts]) -> Metrics:
    """Each metric over the distinct forecast targets of ``runs``, each target once.

    A window origin that k of the runs forecast (overlapping folds, or several seeds) weighs 1/k in each,
    so its targets count once, with the mean of the runs' errors. MASE divides each run's errors by that
    run's own scale. The definitions are those of :mod:`torchkiln.tasks.forecasting.metrics`, weighted:
    RMSE is the root of the pooled mean square, rel. MAE a model's pooled MAE over seasonal naive's.

    Args:
        runs: every run's test forecasts, all with the same horizon and targets.

    Returns:
        model -> ``mae``, ``rmse``, ``mape``, ``smape``, ``mase``, ``relative_mae`` (and the network's
        ``coverage`` when every run has an interval), for the models that every run has.

    Example:
        >>> a = FoldForecasts(days[:2], y[:2], {"model": p[:2], "seasonal_naive": s[:2]}, np.ones(1))
        >>> b = FoldForecasts(days[1:], y[1:], {"model": p[1:], "seasonal_naive": s[1:]}, np.ones(1))
        >>> pooled_metrics([a, b])["model"]["mae"]  # the window at days[1] counts once, not twice
    """
    _, window, counts = np.unique(
        np.concatenate([r.origins for r in runs]), return_inverse=True, return_counts=True
    )
    weight = (1.0 / counts[window])[:, None, None]  # (W, 1, 1) over all runs' windows
    target = np.concatenate([r.target for r in runs])  # (W, H, C)

    def mean(x: np.ndarray, where: np.ndarray | None = None) -> float:
        w = np.broadcast_to(weight, x.shape) if where is None else weight * where
        return float((w * x).sum() / w.sum()) if w.sum() > 0 else math.nan

    out: Metrics = {}
    for name in [m for m in runs[0].points if all(m in r.points for r in runs)]:
        pred = np.concatenate([r.points[name] for r in runs])
        err = np.abs(pred - target)
        scaled = np.concatenate([np.abs(r.points[name] - r.target) / r.mase_scale for r in runs])
        nonzero, denom = target != 0, np.abs(target) + np.abs(pred)
        ape = np.divide(err, np.abs(target), out=np.zeros_like(err), where=nonzero)
        sape = np.divide(2 * err, denom, out=np.zeros_like(err), where=denom > 0)  # 0/0 counts as 0
        out[name] = {
            "mae": mean(err),
            "rmse": math.sqrt(mean(err**2)),
            "mape": 100 * mean(ape, where=nonzero),
            "smape": 100 * mean(sape),
            "mase": mean(scaled),
        }
    reference = out.get(REFERENCE, {}).get("mae", math.nan)
    for metrics in out.values():
        metrics["relative_mae"] = metrics["mae"] / reference if reference > 0 else math.nan
    if MODEL in out and all(r.inside is not None for r in runs):
        out[MODEL]["coverage"] = mean(np.concatenate([r.inside for r in runs if r.inside is not None]))
    return out


def fold_overlaps(times: np.ndarray, tests: Sequence[tuple[int, int]]) -> list[FoldOverlap]:
    """Every pair of folds whose test rows ``[start, stop)`` (rows of ``times``) share steps.

    Example:
        >>> days = np.arange("2014-01-01", "2014-01-11", dtype="datetime64[D]")
        >>> fold_overlaps(days, [(2, 6), (4, 10)])
        [FoldOverlap(first=1, second=2, steps=2, start='2014-01-05', end='2014-01-06')]
    """
    found = []
    for i, (start, stop) in enumerate(tests):
        for j in range(i + 1, len(tests)):
            lo, hi = max(start, tests[j][0]), min(stop, tests[j][1])
            if hi > lo:
                found.append(FoldOverlap(i + 1, j + 1, hi - lo, iso_time(times[lo]), iso_time(times[hi - 1])))
    return found


def overlap_warning(overlaps: Sequence[FoldOverlap], test_steps: int) -> str:
    """The warning for overlapping test periods: which folds, how many steps, what it does, the fix.

    Example:
        >>> overlap_warning([FoldOverlap(1, 2, 23, "2014-10-14", "2014-11-05")], 55)
        'The test periods of the backtest folds overlap: folds 1 and 2 share 23 steps (2014-10-14 .. ...'
    """
    shared = "; ".join(
        f"folds {o.first} and {o.second} share {o.steps} step{'' if o.steps == 1 else 's'} "
        f"({o.start} .. {o.end})"
        for o in overlaps
    )
    return (
        f"The test periods of the backtest folds overlap: {shared}. The mean over folds counts the forecasts "
        f"of those steps more than once; the pooled figures count each forecast target once. Expected --step "
        f"of at least the test length, {test_steps} steps, so that each step is tested once. Fix: use --step "
        f"{test_steps}, or leave --step out."
    )


def plan_folds(cfg: RunConfig, *, folds: int = 3, step: int | None = None) -> FoldPlan:
    """Where each fold of ``backtest(cfg, folds=folds, step=step)`` ends and what it tests, and which
    folds' test periods overlap; reads the series but trains nothing.

    Each fold splits its own data as its run will (:func:`~torchkiln.tasks.forecasting.windows.split_bounds`
    on the rows up to its end), so a fractional ``data.split.test`` gives earlier folds shorter test
    periods. The default step, the whole series' test length, is the longest of them: no two overlap.

    Args:
        cfg: a forecasting config.
        folds: how many folds (at least 2).
        step: steps between consecutive ends (at least 1); default the test length.

    Returns:
        A :class:`FoldPlan`.

    Raises:
        ConfigError: the config is not a forecasting one, has no test split, or folds/step are out of
            range.
        DataError: the series cannot be read, is too short for this many folds, or a fold's data is too
            short for its splits (the message names the fold).

    Example:
        >>> plan = plan_folds(load_config("examples/elec-daily.yaml"), folds=3, step=28)
        >>> plan.tests[0], plan.overlaps[0].steps
        (('2014-09-21', '2014-11-05'), 23)
    """
    d = cfg.data
    if not isinstance(d, TimeSeriesDataConfig):
        raise ConfigError(f"kiln backtest is for forecasting configs; this one is {cfg.task.kind}.")
    if folds < 2:
        raise ConfigError(f"A backtest needs at least 2 folds; got {folds}. Use --folds 2 or more.")
    if step is not None and step < 1:
        raise ConfigError(f"--step must be at least 1; got {step}.")
    if d.split.test == 0:
        raise ConfigError(
            "kiln backtest scores each fold on its test split, but data.split.test is 0; expected a test "
            "part. Fix: set data.split.test, e.g. --set data.split.test=0.15."
        )
    times = read_series(d).time
    start, stop = _test_rows(d, len(times))
    step = stop - start if step is None else step
    ends = [len(times) - 1 - (folds - 1 - k) * step for k in range(folds)]
    if ends[0] < 0:
        raise DataError(
            f"The series has {len(times)} steps, too few for {folds} folds {step} steps apart. Use fewer "
            f"--folds or a smaller --step."
        )
    tests = [
        _test_rows(d, last + 1, fold=(k + 1, folds, iso_time(times[last]))) for k, last in enumerate(ends)
    ]
    return FoldPlan(
        step=step,
        test_steps=stop - start,
        ends=[iso_time(times[last]) for last in ends],
        tests=[(iso_time(times[a]), iso_time(times[b - 1])) for a, b in tests],
        overlaps=fold_overlaps(times, tests),
    )


def _checked_seeds(cfg: RunConfig, seeds: Sequence[int] | None) -> list[int]:
    seeds = [cfg.seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"A backtest's seeds must be distinct integers >= 0, at least one; got {seeds}. "
            "Use --seeds N for N seeds counted up from the config's seed."
        )
    return seeds


def _run_fold(
    cfg: RunConfig, root: Path, name: str, index: int, seed: int, end: str
) -> tuple[Fold, FoldForecasts]:
    """Train ``cfg`` on the data up to ``end`` into ``root/name`` and evaluate its test split."""
    from torchkiln.artifacts.bundle import load_bundle
    from torchkiln.tasks.training import train_new_run

    raw = cfg.model_dump(mode="json")
    raw["data"] = {**raw["data"], "end": end}
    raw["seed"], raw["runs_dir"], raw["name"] = seed, str(root), name
    run_dir = train_new_run(validate(raw))  # what api.train does with a config
    bundle = load_bundle(run_dir / "bundle")
    result = evaluate_forecast(bundle, split="test", out_dir=run_dir / "eval" / "test")
    seconds = float(bundle.meta.get("trained", {}).get("seconds", math.nan))
    fc, d = result.forecasts, bundle.config.data
    assert fc is not None and isinstance(d, TimeSeriesDataConfig), "evaluate_forecast returns its forecasts"
    inside = None
    if fc.interval is not None:  # the network's outermost quantiles: (Q, W, H, C)
        inside = (fc.target >= fc.quantiles[0]) & (fc.target <= fc.quantiles[-1])
    pooled = FoldForecasts(
        fc.frame.time[fc.origins], fc.target, dict(fc.points), np.asarray(d.mase_scale), inside
    )
    return Fold(index, seed, end, result.span, run_dir, result.metrics, seconds), pooled


def _test_rows(
    d: TimeSeriesDataConfig, n: int, *, fold: tuple[int, int, str] | None = None
) -> tuple[int, int]:
    """The test rows ``[start, stop)`` of a run on the first ``n`` rows, as its training will split them."""
    try:
        return split_bounds(n, d.split, lookback=d.lookback, horizon=d.horizon)["test"]
    except DataError as exc:
        if fold is None:
            raise
        k, folds, end = fold
        raise DataError(
            f"Fold {k} of {folds} (data to {end}) cannot be split: {exc} Or use fewer --folds or a "
            "smaller --step."
        ) from None


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


def _as_json(result: BacktestResult, seeds: list[int]) -> dict[str, Any]:
    return {
        "step": result.plan.step,
        "test_steps": result.plan.test_steps,
        "overlaps": [asdict(o) for o in result.plan.overlaps],
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
            for f in result.folds
        ],
        "mean": result.mean,
        "pooled": result.pooled,
        "windows": result.windows,
        "seeds": seeds,
        "per_seed": {str(seed): m for seed, m in result.per_seed.items()},
        "seed_std": result.seed_std,
    }
