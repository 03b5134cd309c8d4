"""Rolling-origin backtests: each fold retrains on the data up to its end and tests on the steps before it,
once per seed; test periods do not overlap by default, and a step that makes them overlap is warned of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.base import validate
from torchkiln.tasks.forecasting.backtest import (
    FoldForecasts,
    FoldOverlap,
    backtest,
    fold_overlaps,
    overlap_warning,
    plan_folds,
    pooled_metrics,
)


def test_bad_backtests_say_why(tmp_path: Path, make_series_csv, make_forecast_config, make_config) -> None:
    cfg = validate(make_forecast_config(make_series_csv(tmp_path / "s.csv"), tmp_path / "runs"))
    with pytest.raises(
        ConfigError, match=r"^A backtest needs at least 2 folds; got 1\. Use --folds 2 or more\.$"
    ):
        backtest(cfg, folds=1)
    with pytest.raises(ConfigError, match=r"^--step must be at least 1; got 0\.$"):
        backtest(cfg, folds=2, step=0)
    with pytest.raises(DataError) as err:
        backtest(cfg, folds=5, step=30)
    assert str(err.value) == (
        "The series has 96 steps, too few for 5 folds 30 steps apart. Use fewer --folds or a smaller --step."
    )
    with pytest.raises(
        DataError, match=r"too few for 9 folds 12 steps apart"
    ):  # default step: the test length
        backtest(cfg, folds=9)
    with pytest.raises(DataError) as err:  # checked before the first fold trains
        backtest(cfg, folds=7, step=12)
    assert str(err.value) == (
        "Fold 1 of 7 (data to 2001-12-01) cannot be split: The series is too short for these windows: "
        "24 steps, data.lookback 12, data.horizon 6, split val 12 / test 12 / gap 0 step(s): train has 0 "
        "step(s) but needs lookback + horizon = 18. Expected train >= lookback + horizon and a non-zero val "
        "or test >= horizon. Fix: use a smaller data.lookback or data.horizon, a smaller data.split.val / "
        "data.split.test, or a longer series. Or use fewer --folds or a smaller --step."
    )
    no_test = validate(
        {
            **make_forecast_config(tmp_path / "s.csv"),
            "data": {"path": str(tmp_path / "s.csv"), "split": {"test": 0}},
        }
    )
    with pytest.raises(ConfigError) as err:
        backtest(no_test, folds=2)
    assert str(err.value) == (
        "kiln backtest scores each fold on its test split, but data.split.test is 0; expected a test part. "
        "Fix: set data.split.test, e.g. --set data.split.test=0.15."
    )
    for seeds in ([], [1, 1], [-1]):
        with pytest.raises(ConfigError) as err:
            backtest(cfg, folds=2, seeds=seeds)
        assert str(err.value) == (
            f"A backtest's seeds must be distinct integers >= 0, at least one; got {seeds}. "
            "Use --seeds N for N seeds counted up from the config's seed."
        )
    images = validate(make_config(tmp_path / "images", tmp_path / "runs"))
    with pytest.raises(
        ConfigError, match=r"^kiln backtest is for forecasting configs; this one is image-class"
    ):
        backtest(images, folds=2)


def test_the_cli_prints_each_fold_of_each_seed_the_means_and_the_overlap(
    tmp_path: Path, make_series_csv, make_forecast_config
) -> None:
    from typer.testing import CliRunner

    from torchkiln.cli.main import app

    csv = make_series_csv(tmp_path / "s.csv")
    cfg = make_forecast_config(csv, tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "seed": 5}), encoding="utf-8")
    # 12 test months, ends 4 months apart: the two test periods share 8 months.
    args = ["backtest", str(tmp_path / "c.yaml"), "--folds", "2", "--step", "4", "--seeds", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (
        "warning: The test periods of the backtest folds overlap: folds 1 and 2 share 8 steps (2007-01-01 .. "
        "2007-08-01). The mean over folds counts the forecasts of those steps more than once; the pooled "
        "figures count each forecast target once. Expected --step of at least the test length, 12 steps, so "
        "that each step is tested once. Fix: use --step 12, or leave --step out.\n"
    ) in result.stderr
    assert "seed 5, fold 1: data to 2007-08-01, test 2006-09-01 .. 2007-08-01: MASE" in result.stdout
    assert "seed 6, fold 2: data to 2007-12-01, test 2007-01-01 .. 2007-12-01: MASE" in result.stdout
    title = "mean over 2 folds x 2 seeds (test periods overlap: 8 shared steps counted more than once)"
    assert title in result.stdout and "pooled: each of the 11 distinct test windows once" in result.stdout
    assert "network over seeds" in result.stdout and "seasonal naive" in result.stdout
    summary = json.loads(next((tmp_path / "runs").glob("*-backtest/backtest.json")).read_text("utf-8"))
    assert summary["step"] == 4 and summary["test_steps"] == 12
    assert summary["overlaps"] == [
        {"first": 1, "second": 2, "steps": 8, "start": "2007-01-01", "end": "2007-08-01"}
    ]
    for f in summary["folds"]:
        end = "2007-08-01" if f["fold"] == 1 else "2007-12-01"
        run_dir = Path(f["run_dir"])
        assert f["end"] == end and run_dir.parent.name == f"seed{f['seed']}-fold{f['fold']}"
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        assert saved["data"]["end"] == end and saved["seed"] == f["seed"]  # nothing after its end, its seed
        assert (run_dir / "eval" / "test" / "report.html").is_file()
        assert set(f["metrics"]) == {"model", "naive", "seasonal_naive", "ets", "arima"}
        assert f["metrics"]["seasonal_naive"]["relative_mae"] == pytest.approx(1.0)
    assert summary["seeds"] == [5, 6] and [(f["seed"], f["fold"]) for f in summary["folds"]] == [
        (5, 1),
        (5, 2),
        (6, 1),
        (6, 2),
    ]
    rmse = [[f["metrics"]["model"]["rmse"] for f in summary["folds"] if f["seed"] == s] for s in (5, 6)]
    per_seed = [sum(r) / 2 for r in rmse]
    assert [summary["per_seed"][s]["model"]["rmse"] for s in ("5", "6")] == pytest.approx(per_seed)
    assert summary["seed_std"]["model"]["rmse"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    assert summary["mean"]["model"]["rmse"] == pytest.approx(sum(per_seed) / 2)
    assert summary["per_seed"]["5"]["seasonal_naive"] == summary["per_seed"]["6"]["seasonal_naive"]
    # Window origins (rows) 80..86 in fold 1 and 84..90 in fold 2: 3 windows in both, 11 distinct. Seasonal
    # naive forecasts y[o + h - 12] in every fold and seed, so its pooled MAE is its mean error over the 11
    # windows, each once, while the mean over folds counts rows 84..86 twice.
    y = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=1)
    targets = np.arange(80, 91)[:, None] + np.arange(6)  # (11, 6) the rows each window forecasts
    errors = np.abs(y[targets] - y[targets - 12]).mean(axis=1)  # (11,) per window
    assert summary["windows"] == 11
    assert summary["pooled"]["seasonal_naive"]["mae"] == pytest.approx(errors.mean())
    twice = (errors[:7].mean() + errors[4:].mean()) / 2
    assert summary["mean"]["seasonal_naive"]["mae"] == pytest.approx(twice)
    assert summary["pooled"]["seasonal_naive"]["relative_mae"] == pytest.approx(1.0)
    assert 0 <= summary["pooled"]["model"]["coverage"] <= 1


def test_the_default_step_is_the_test_length_so_test_periods_do_not_overlap(
    tmp_path: Path, make_series_csv, make_forecast_config
) -> None:
    days = np.arange("2014-01-01", "2015-01-01", dtype="datetime64[D]")  # elec-daily's 365 days
    rows = "".join(f"{d},{100 + 10 * np.sin(i / 3):.3f}\n" for i, d in enumerate(days))
    (tmp_path / "daily.csv").write_text("time,demand\n" + rows, encoding="utf-8")
    raw = make_forecast_config(tmp_path / "daily.csv")
    raw["data"] |= {"lookback": 28, "horizon": 7, "split": {"val": 0.15, "test": 0.15}}
    cfg = validate(raw)
    # The case, `kiln backtest examples/elec-daily.yaml --folds 3 --step 28`: test is 15 % of each
    # fold's own data (46, 51 and 55 days), so with ends 28 days apart the test periods overlap.
    overlapping = plan_folds(cfg, folds=3, step=28)
    assert overlapping.tests == [
        ("2014-09-21", "2014-11-05"),
        ("2014-10-14", "2014-12-03"),
        ("2014-11-07", "2014-12-31"),
    ]
    assert overlapping.overlaps == [
        FoldOverlap(1, 2, 23, "2014-10-14", "2014-11-05"),
        FoldOverlap(2, 3, 27, "2014-11-07", "2014-12-03"),
    ]
    # By default the ends are 55 days apart, the longest test period (the last fold's).
    plan = plan_folds(cfg, folds=3)
    assert plan.step == plan.test_steps == 55 and plan.overlaps == []
    assert plan.ends == ["2014-09-12", "2014-11-06", "2014-12-31"]
    assert plan.tests == [
        ("2014-08-06", "2014-09-12"),
        ("2014-09-21", "2014-11-06"),
        ("2014-11-07", "2014-12-31"),
    ]
    # A whole number of test steps: every fold tests that many, the folds back to back.
    months = plan_folds(validate(make_forecast_config(make_series_csv(tmp_path / "s.csv"))), folds=3)
    assert months.step == 12 and months.overlaps == []
    assert months.tests == [
        ("2005-01-01", "2005-12-01"),
        ("2006-01-01", "2006-12-01"),
        ("2007-01-01", "2007-12-01"),
    ]


def test_overlaps_are_found_pair_by_pair() -> None:
    months = np.arange("2000-01", "2001-01", dtype="datetime64[M]").astype("datetime64[D]")
    assert fold_overlaps(months, [(0, 4), (4, 8), (8, 12)]) == []  # adjacent: no step in two folds
    assert fold_overlaps(months, [(0, 6), (3, 9), (5, 12)]) == [
        FoldOverlap(1, 2, 3, "2000-04-01", "2000-06-01"),
        FoldOverlap(1, 3, 1, "2000-06-01", "2000-06-01"),
        FoldOverlap(2, 3, 4, "2000-06-01", "2000-09-01"),
    ]
    assert overlap_warning(fold_overlaps(months, [(0, 6), (5, 12)]), 7) == (
        "The test periods of the backtest folds overlap: folds 1 and 2 share 1 step (2000-06-01 .. "
        "2000-06-01). The mean over folds counts the forecasts of those steps more than once; the pooled "
        "figures count each forecast target once. Expected --step of at least the test length, 7 steps, so "
        "that each step is tested once. Fix: use --step 7, or leave --step out."
    )


def test_pooled_metrics_count_a_window_two_folds_share_once() -> None:
    days = np.arange("2014-01-01", "2014-01-04", dtype="datetime64[D]")
    y = np.array([[[10.0]], [[20.0]], [[30.0]]])  # (W=3, H=1, C=1)
    net = np.array([[[12.0]], [[23.0]], [[30.0]]])  # errors 2, 3, 0
    snaive = np.array([[[14.0]], [[20.0]], [[34.0]]])  # errors 4, 0, 4
    fold1 = FoldForecasts(days[:2], y[:2], {"model": net[:2], "seasonal_naive": snaive[:2]}, np.array([2.0]))
    # Fold 2 forecasts day 2 too, with its own network (error 5) and MASE scale (4).
    net2 = np.array([[[25.0]], [[30.0]]])
    fold2 = FoldForecasts(days[1:], y[1:], {"model": net2, "seasonal_naive": snaive[1:]}, np.array([4.0]))
    pooled = pooled_metrics([fold1, fold2])
    # Day 2 counts once with the mean of its two errors (3 and 5): MAE (2 + 4 + 0) / 3 = 2.
    assert pooled["model"]["mae"] == pytest.approx(2.0)
    assert pooled["model"]["rmse"] == pytest.approx(np.sqrt((4 + (9 + 25) / 2 + 0) / 3))
    assert pooled["model"]["mase"] == pytest.approx((2 / 2 + (3 / 2 + 5 / 4) / 2 + 0 / 4) / 3)
    assert pooled["model"]["mape"] == pytest.approx(100 * (2 / 10 + (3 / 20 + 5 / 20) / 2 + 0) / 3)
    assert pooled["model"]["smape"] == pytest.approx(100 * (4 / 22 + (6 / 43 + 10 / 45) / 2 + 0) / 3)
    assert pooled["seasonal_naive"]["mae"] == pytest.approx(8 / 3)
    assert pooled["model"]["relative_mae"] == pytest.approx(2.0 / (8 / 3))
    assert "coverage" not in pooled["model"]  # no interval in these runs


def test_a_column_gets_one_number_of_decimals() -> None:
    from torchkiln.tasks.forecasting.cli import decimals

    assert decimals([442.0, 445.23]) == 1 and f"{442.0:.1f} {445.23:.1f}" == "442.0 445.2"
    assert decimals([0.0123, 0.5]) == 4
    assert decimals([12345.6]) == 0 and decimals([]) == 0 and decimals([0.0, float("nan")]) == 0
