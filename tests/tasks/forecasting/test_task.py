"""The forecasting task: no leakage through prepare, the pinball loss, metrics in the data's units,
prediction from a bundle, and the CLI from a CSV to a trained bundle and a dated forecast."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from torchkiln.artifacts.bundle import load_bundle, without_pretrained
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.cli.main import app
from torchkiln.core.errors import ConfigError, PredictError
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate
from torchkiln.tasks.forecasting.evaluate import network_quantiles
from torchkiln.tasks.forecasting.history import History, read_history
from torchkiln.tasks.forecasting.metrics import summarize_errors
from torchkiln.tasks.forecasting.task import PinballLoss
from torchkiln.tasks.forecasting.windows import fit_scaler, scale, unscale

from ...conftest import KILN

TASK = get_task("forecasting")


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([KILN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def predict(*args: str):
    """``kiln predict ...`` in process (training above runs the real executable)."""
    return CliRunner().invoke(app, ["predict", *args], env={"COLUMNS": "200"})


def months(n: int, start: str = "2000-01") -> np.ndarray:
    return (np.datetime64(start, "M") + np.arange(n)).astype("datetime64[ns]")


def test_test_values_never_reach_training(
    tmp_path: Path, make_series_csv, make_forecast_config, series_values
) -> None:
    """Scaler and MASE scale come from the train rows alone; changing val/test rows changes neither,
    nor any training window."""
    values = series_values()
    a = TASK.prepare(validate(make_forecast_config(make_series_csv(tmp_path / "a.csv", values), tmp_path)))
    changed = values.copy()
    changed[72:] *= 10  # everything after train (val starts at 72)
    b = TASK.prepare(validate(make_forecast_config(make_series_csv(tmp_path / "b.csv", changed), tmp_path)))
    (cfg_a, data_a), (cfg_b, data_b) = a, b
    assert data_a.bounds["train"] == (0, 72)
    by_hand = fit_scaler(values[:72, None].round(4), "standard")
    assert cfg_a.data.scaler_stats == cfg_b.data.scaler_stats
    np.testing.assert_allclose(cfg_a.data.scaler_stats.center, by_hand.center)
    np.testing.assert_allclose(cfg_a.data.scaler_stats.scale, by_hand.scale)
    assert cfg_a.data.mase_scale == cfg_b.data.mase_scale
    xa, ya = next(iter(TASK.loader(cfg_a, data_a, "train", train=False)))
    xb, yb = next(iter(TASK.loader(cfg_b, data_b, "train", train=False)))
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(ya, yb)
    assert data_a.splits["train"].max() + 6 <= 72


def test_pinball_loss_by_hand() -> None:
    loss = PinballLoss([0.1, 0.5, 0.9])
    out = torch.tensor([[[[1.0, 2.0, 3.0]]]])  # (B=1, H=1, C=1, Q=3)
    y = torch.tensor([[[2.5]]])
    # errors y - q: 1.5, 0.5, -0.5 -> 0.1 * 1.5, 0.5 * 0.5, (0.9 - 1) * -0.5 -> mean of 0.15, 0.25, 0.05
    assert loss(out, y).item() == pytest.approx((0.15 + 0.25 + 0.05) / 3)


def test_the_bundle_forecasts_dated_steps_in_the_data_units(
    tiny_forecast_bundle: Path, series_values
) -> None:
    predictor = load_predictor(tiny_forecast_bundle)
    [answer] = predictor.predict([History(series_values()[:40, None], months(40))])
    assert answer["steps"] == [1, 2, 3, 4, 5, 6]
    assert answer["timestamps"] == [
        "2003-05-01",
        "2003-06-01",
        "2003-07-01",
        "2003-08-01",
        "2003-09-01",
        "2003-10-01",
    ]
    low, mid, high = (answer["quantiles"][q]["value"] for q in ("0.1", "0.5", "0.9"))
    assert answer["forecast"]["value"] == mid
    assert all(a <= b <= c for a, b, c in zip(low, mid, high, strict=True))
    assert all(np.isfinite(mid)) and 20 < np.mean(mid) < 200  # in the data's units, not scaled ones


def test_training_calibrates_the_intervals_on_val_and_the_bundle_carries_them(
    tiny_forecast_bundle: Path,
) -> None:
    bundle = load_bundle(tiny_forecast_bundle)
    report = bundle.meta["calibration"]["intervals"]
    assert (report["split"], report["nominal"], report["method"]) == (
        "val",
        0.8,
        "conformalized quantile regression",
    )
    offset = bundle.model.interval_offset  # (H, C, Q), loaded from the bundle's weights
    assert (
        torch.all(offset[..., 0] <= 0) and torch.all(offset[..., 1] == 0) and torch.all(offset[..., 2] >= 0)
    )
    cfg = bundle.config
    _, data = bundle.task.prepare(without_pretrained(cfg), splits={"val"}, state=bundle.state)
    q = network_quantiles(bundle, bundle.task.loader(cfg, data, "val", train=False), torch.device("cpu"))
    origins = data.splits["val"]
    target = data.frame.targets[origins[:, None] + np.arange(6)]  # (W, H, C)
    inside = ((target >= q[0]) & (target <= q[-1])).mean()
    assert inside == pytest.approx(report["coverage_after"], abs=1e-6)  # what the bundle serves
    assert report["coverage_after"] >= min(report["coverage_before"], 0.8)


def test_no_calibration_when_it_is_off_or_there_is_no_interval(tiny_forecast_bundle: Path) -> None:
    bundle = load_bundle(tiny_forecast_bundle)
    cfg = bundle.config
    _, data = bundle.task.prepare(without_pretrained(cfg), splits={"val"}, state=bundle.state)
    loader = bundle.task.loader(cfg, data, "val", train=False)
    calibrated = bundle.model.interval_offset.clone()
    off = validate({**cfg.model_dump(mode="json"), "task": {"kind": "forecasting", "conformal": False}})
    upper = validate(
        {**cfg.model_dump(mode="json"), "task": {"kind": "forecasting", "quantiles": [0.5, 0.7, 0.9]}}
    )
    for settings in (off, upper):
        assert bundle.task.calibrate(settings, bundle.model, loader, torch.device("cpu")) == {}
        assert torch.equal(bundle.model.interval_offset, calibrated)  # left as it was
    assert bundle.task.calibrate(cfg, bundle.model, None, torch.device("cpu")) == {}  # no val windows


def test_too_short_history_is_refused(tiny_forecast_bundle: Path) -> None:
    predictor = load_predictor(tiny_forecast_bundle)
    with pytest.raises(PredictError) as err:
        predictor.predict([History(np.ones((5, 1)), months(5))])
    assert str(err.value) == (
        "The history has 5 points, but the model needs at least lookback = 12. "
        "Send the last 12 (or more) values of the series."
    )


def test_cli_train_then_predict_from_a_history_file(
    tmp_path: Path, make_series_csv, make_forecast_config, series_values
) -> None:
    csv = make_series_csv(tmp_path / "series.csv")
    cfg = make_forecast_config(csv, tmp_path / "runs")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    train = kiln("train", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "val/mase" in train.stderr  # progress goes to stderr; stdout is the run directory
    run = Path(train.stdout.strip().splitlines()[-1])

    history = make_series_csv(tmp_path / "history.csv", series_values()[:30])
    pred = predict(str(run), "--history", str(history), "--horizon", "3", "--json")
    assert pred.exit_code == 0, pred.output
    answer = json.loads(pred.stdout)
    assert answer["timestamps"] == ["2002-07-01", "2002-08-01", "2002-09-01"]
    assert len(answer["forecast"]["value"]) == 3

    table = predict(str(run), "--history", str(history))
    assert table.exit_code == 0 and "2002-12-01" in table.stdout and "value 0.1-0.9" in table.stdout
    # Every number of a target has the same decimals (no "442" beside "445.2").
    medians = [line.split("│")[2].strip() for line in table.stdout.splitlines() if line.startswith("│ 2002")]
    assert len({len(m.partition(".")[2]) for m in medians}) == 1, medians

    too_far = predict(str(run), "--history", str(history), "--horizon", "7")
    assert too_far.exit_code != 0
    assert (
        "--horizon 7 is longer than the 6 steps this model forecasts. Pass --horizon 6 or less, or "
        "retrain with data.horizon: 7." in " ".join(too_far.output.split())
    )
    unsorted = tmp_path / "unsorted.csv"
    lines = history.read_text().splitlines()
    unsorted.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    bad = predict(str(run), "--history", str(unsorted))
    assert bad.exit_code != 0 and "expected timestamps in increasing order" in " ".join(bad.output.split())


def test_a_resolved_config_keeps_its_rows_when_the_file_grows(
    tmp_path: Path, make_series_csv, make_forecast_config, series_values
) -> None:
    """The resolved start/end pin the rows: evaluating a bundle after new data arrived uses the same test."""
    csv = make_series_csv(tmp_path / "s.csv", series_values(96))
    resolved, data = TASK.prepare(validate(make_forecast_config(csv, tmp_path)))
    assert (resolved.data.start, resolved.data.end) == ("2000-01-01", "2007-12-01")
    make_series_csv(csv, series_values(120))  # two more years arrive
    again, later = TASK.prepare(resolved)
    assert later.bounds == data.bounds and len(later.frame.time) == 96
    assert again.data.scaler_stats == resolved.data.scaler_stats


def test_a_history_file_gives_the_covariates_of_the_steps_to_forecast(tmp_path: Path, series_values) -> None:
    """A model with file covariates reads them for the horizon from trailing rows with empty targets."""
    values = series_values()
    price = 5 + np.sin(np.arange(len(values)) / 3)
    months = np.datetime64("2000-01", "M") + np.arange(len(values))
    rows = [f"{m}-01,{v:.4f},{p:.4f}" for m, v, p in zip(months, values, price, strict=True)]
    (tmp_path / "s.csv").write_text("time,value,price\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cfg = {
        "task": "forecasting",
        "data": {"path": str(tmp_path / "s.csv"), "targets": ["value"], "covariates": ["price"]},
        "model": {"name": "lstm-forecaster", "args": {"hidden_size": 8}},
        "train": {"epochs": 1},
        "tracking": {"mlflow": False, "tensorboard": False},
        "runs_dir": str(tmp_path / "runs"),
    }
    cfg["data"] |= {"lookback": 12, "horizon": 3, "split": {"val": 12, "test": 12}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = Path(kiln("train", str(tmp_path / "c.yaml"), cwd=tmp_path).stdout.strip().splitlines()[-1])

    def history(future_rows: list[str]) -> Path:
        path = tmp_path / "history.csv"
        path.write_text("time,value,price\n" + "\n".join(rows[:40] + future_rows) + "\n", encoding="utf-8")
        return path

    future = ["2003-05-01,,5.0", "2003-06-01,,5.0", "2003-07-01,,5.0"]
    first = predict(str(run), "--history", str(history(future)), "--json")
    assert first.exit_code == 0, first.output
    answer = json.loads(first.stdout)
    assert answer["timestamps"] == ["2003-05-01", "2003-06-01", "2003-07-01"]
    dearer = predict(str(run), "--history", str(history([r[:-3] + "9.0" for r in future])), "--json")
    assert json.loads(dearer.stdout)["forecast"] != answer["forecast"]  # the future price reaches the model

    short = predict(str(run), "--history", str(history(future[:2])))
    assert short.exit_code != 0
    assert (
        "ends with 2 row(s) without target values, but this model needs the covariates ['price'] of the 3 "
        in (" ".join((short.stdout + short.stderr).split()))
    )


def test_the_training_metrics_on_the_device_match_the_numpy_definitions(tiny_forecast_bundle: Path) -> None:
    """ForecastMetrics sums on the device; its figures are those of summarize_errors on the same arrays."""
    cfg = load_bundle(tiny_forecast_bundle).config
    d = cfg.data
    g = torch.Generator().manual_seed(0)
    q = len(cfg.task.quantiles)
    metrics = get_task("forecasting").metrics(cfg)
    preds, targets = [], []
    for _ in range(3):  # three batches of 4 windows
        out = torch.randn(4, d.horizon, 1, q, generator=g).sort(dim=-1).values
        y = torch.randn(4, d.horizon, 1, generator=g)
        y[0, 0, 0] = unscale_inverse_zero(d)  # one target of exactly 0 in the data's units (MAPE skips it)
        metrics.update(out, y)
        preds.append(unscale(out.double()[..., q // 2], d.scaler_stats).numpy())
        targets.append(unscale(y.double(), d.scaler_stats).numpy())
    expected = summarize_errors(
        np.concatenate(preds), np.concatenate(targets), mase_scale=np.array(d.mase_scale)
    )
    got = metrics.compute()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name


def unscale_inverse_zero(d: Any) -> float:
    """The scaled value whose original value is 0."""
    return float(scale(np.zeros((1, 1)), d.scaler_stats)[0, 0])


def test_predict_options_of_another_task_are_refused(tiny_forecast_bundle: Path) -> None:
    result = CliRunner().invoke(
        app, ["predict", str(tiny_forecast_bundle), "--text", "hello", "--top-k", "2"]
    )
    assert result.exit_code == 2
    assert (
        "This bundle is a forecasting model, which does not take --text or --top-k. "
        "It takes --history and --horizon."
    ) in " ".join(result.output.split())


# ---- runtime checks (they hold under python -O: no assert does the checking) ---------------------------


def unresolved_message(what: str, field: str) -> str:
    return (
        f"{what} needs a resolved config, but data.{field} is not set; expected the config that "
        f"task.prepare returns, which fills data.{field} in from the data (a bundle's config is resolved "
        f"too). Fix: pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
    )


def test_a_config_of_another_task_names_the_sections_it_got(make_text_config) -> None:
    cfg = validate(make_text_config("reviews.csv"))
    with pytest.raises(ConfigError) as exc:
        TASK.build_model(cfg)
    assert str(exc.value) == (
        "The forecasting task got a config whose data section is of type TextDataConfig and whose task "
        "section is of type TextClassificationTaskConfig (task.kind 'text-classification'); expected a "
        "forecasting config (TimeSeriesDataConfig, ForecastingTaskConfig). Fix: build it with "
        "torchkiln.tasks.base.validate (or load_config), which picks the sections by task.kind, and hand "
        "it to the task of that kind (torchkiln.tasks.get_task)."
    )


@pytest.mark.parametrize("what", ["build_model", "preprocess", "postprocess"])
def test_an_unresolved_config_is_refused_with_the_field_prepare_fills_in(
    what: str, tmp_path: Path, make_forecast_config
) -> None:
    cfg = validate(make_forecast_config(tmp_path / "series.csv", tmp_path))  # not through prepare
    calls = {
        "build_model": lambda: TASK.build_model(cfg),
        "preprocess": lambda: TASK.preprocess(cfg, [History(np.zeros((12, 1)), months(12))]),
        "postprocess": lambda: TASK.postprocess(cfg, torch.zeros(1, 6, 1, 3), top_k=1),
    }
    with pytest.raises(ConfigError) as exc:
        calls[what]()
    assert str(exc.value) == unresolved_message(what, "targets")


def test_a_partly_resolved_config_names_the_field_that_is_missing(
    tmp_path: Path, make_forecast_config
) -> None:
    cfg = validate(make_forecast_config(tmp_path / "series.csv", tmp_path))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"targets": ["value"], "freq": "MS"})})
    with pytest.raises(ConfigError) as exc:
        TASK.preprocess(cfg, [History(np.zeros((12, 1)), months(12))])
    assert str(exc.value) == unresolved_message("preprocess", "scaler_stats")


def test_read_history_with_covariates_needs_a_resolved_config(tmp_path: Path, make_forecast_config) -> None:
    cfg = validate(make_forecast_config(tmp_path / "series.csv", tmp_path))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"covariates": ["temperature"]})})
    with pytest.raises(ConfigError) as exc:
        read_history(cfg, tmp_path / "history.csv")
    assert str(exc.value) == unresolved_message("read_history", "targets")


def test_an_inferred_time_column_is_written_into_the_resolved_config(
    tmp_path: Path, make_series_csv, make_forecast_config, series_values, caplog: pytest.LogCaptureFixture
) -> None:
    csv = make_series_csv(tmp_path / "s.csv", series_values(96))
    csv.write_text(csv.read_text().replace("time,", "Date,", 1))  # the one column of dates, another name
    resolved, _ = TASK.prepare(validate(make_forecast_config(csv, tmp_path)))
    assert resolved.data.time_column == "Date"  # a bundle, kiln predict's history files read it by name
    caplog.clear()
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        TASK.prepare(resolved)  # evaluating the bundle later: nothing to infer, nothing to say
    assert caplog.messages == []
