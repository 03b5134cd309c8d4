"""Rolling-origin backtests: each fold retrains on the data up to its end and tests on the steps before it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from torchkiln.backtest import backtest
from torchkiln.config import validate
from torchkiln.errors import ConfigError, DataError


def test_two_folds_one_horizon_apart(tmp_path: Path, make_series_csv, make_forecast_config) -> None:
    cfg = validate(make_forecast_config(make_series_csv(tmp_path / "s.csv"), tmp_path / "runs"))
    result = backtest(cfg, folds=2)  # 96 months from 2000-01: ends 2007-06 and 2007-12
    assert [f.end for f in result.folds] == ["2007-06-01", "2007-12-01"]
    assert [f.test for f in result.folds] == [("2006-07-01", "2007-06-01"), ("2007-01-01", "2007-12-01")]
    for f in result.folds:
        saved = yaml.safe_load((f.run_dir / "config.yaml").read_text(encoding="utf-8"))
        assert saved["data"]["end"] == f.end  # the run saw nothing after its end
        assert (f.run_dir / "eval" / "test" / "report.html").is_file()
        assert set(f.metrics) == {"model", "naive", "seasonal_naive", "ets", "arima"}
        assert f.metrics["seasonal_naive"]["relative_mae"] == pytest.approx(1.0)
    for model, metrics in result.mean.items():
        for name, value in metrics.items():
            assert value == pytest.approx(sum(f.metrics[model][name] for f in result.folds) / 2)
    summary = json.loads(result.summary.read_text(encoding="utf-8"))
    assert [f["end"] for f in summary["folds"]] == ["2007-06-01", "2007-12-01"] and summary["step"] == 6


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
    images = validate(make_config(tmp_path / "images", tmp_path / "runs"))
    with pytest.raises(
        ConfigError, match=r"^kiln backtest is for forecasting configs; this one is image-class"
    ):
        backtest(images, folds=2)


def test_the_cli_prints_each_fold_and_the_mean(tmp_path: Path, make_series_csv, make_forecast_config) -> None:
    from typer.testing import CliRunner

    from torchkiln.cli.main import app

    cfg = make_forecast_config(make_series_csv(tmp_path / "s.csv"), tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    args = ["backtest", str(tmp_path / "c.yaml"), "--folds", "2", "--step", "12"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "fold 1: data to 2006-12-01, test 2006-01-01 .. 2006-12-01: MASE" in result.stdout
    assert "fold 2: data to 2007-12-01" in result.stdout and "mean over 2 folds" in result.stdout
    assert "seasonal naive" in result.stdout and "backtest.json" in result.stdout
