"""Rolling-origin backtests: each fold retrains on the data up to its end and tests on the steps before it,
once per seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.base import validate
from torchkiln.tasks.forecasting.backtest import backtest


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
    with pytest.raises(DataError, match=r"too few for 17 folds 6 steps apart"):  # default step: the horizon
        backtest(cfg, folds=17)
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


def test_the_cli_prints_each_fold_of_each_seed_and_the_means(
    tmp_path: Path, make_series_csv, make_forecast_config
) -> None:
    from typer.testing import CliRunner

    from torchkiln.cli.main import app

    cfg = make_forecast_config(make_series_csv(tmp_path / "s.csv"), tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "seed": 5}), encoding="utf-8")
    args = ["backtest", str(tmp_path / "c.yaml"), "--folds", "2", "--step", "12", "--seeds", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "seed 5, fold 1: data to 2006-12-01, test 2006-01-01 .. 2006-12-01: MASE" in result.stdout
    assert "seed 6, fold 2: data to 2007-12-01" in result.stdout
    assert "mean over 2 folds x 2 seeds" in result.stdout and "network over seeds" in result.stdout
    assert "seasonal naive" in result.stdout and "backtest.json" in result.stdout
    summary = json.loads(next((tmp_path / "runs").glob("*-backtest/backtest.json")).read_text("utf-8"))
    assert summary["step"] == 12
    for f in summary["folds"]:
        end, test = ("2006-12-01", ["2006-01-01", "2006-12-01"]) if f["fold"] == 1 else ("2007-12-01", None)
        assert f["end"] == end and (test is None or f["test"] == test)
        run_dir = Path(f["run_dir"])
        assert run_dir.parent.name == f"seed{f['seed']}-fold{f['fold']}"
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


def test_a_column_gets_one_number_of_decimals() -> None:
    from torchkiln.tasks.forecasting.cli import decimals

    assert decimals([442.0, 445.23]) == 1 and f"{442.0:.1f} {445.23:.1f}" == "442.0 445.2"
    assert decimals([0.0123, 0.5]) == 4
    assert decimals([12345.6]) == 0 and decimals([]) == 0 and decimals([0.0, float("nan")]) == 0
