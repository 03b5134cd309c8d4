"""kiln evaluate on a forecasting bundle: the network beside the baselines, on the same test windows."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkiln.artifacts.bundle import Bundle, load_bundle, without_pretrained
from torchkiln.artifacts.predictor import Predictor
from torchkiln.core.errors import BundleError, DataError
from torchkiln.tasks.forecasting.baselines import baseline_forecasts
from torchkiln.tasks.forecasting.evaluate import (
    ForecastEvalResult,
    evaluate_forecast,
    network_quantiles,
    run_baselines,
)
from torchkiln.tasks.forecasting.history import History
from torchkiln.tasks.forecasting.metrics import METRICS, forecast_errors, summarize_errors
from torchkiln.tasks.forecasting.task import SeriesData

from ...conftest import KILN


@pytest.fixture(scope="module")
def bundle(tiny_forecast_bundle: Path) -> Bundle:
    return load_bundle(tiny_forecast_bundle)


@pytest.fixture(scope="module")
def data(bundle: Bundle) -> SeriesData:
    return bundle.task.prepare(without_pretrained(bundle.config), splits={"test"}, state=bundle.state)[1]


@pytest.fixture(scope="module")
def evaluated(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> ForecastEvalResult:
    return evaluate_forecast(bundle, split="test", out_dir=tmp_path_factory.mktemp("forecast-eval"))


def _targets(data: SeriesData, horizon: int) -> np.ndarray:
    origins = data.splits["test"]
    return data.frame.targets[origins[:, None] + np.arange(horizon)]  # (W, H, C)


def test_network_metrics_equal_the_predictors_forecasts_on_the_test_windows(
    bundle: Bundle, data: SeriesData, evaluated: ForecastEvalResult
) -> None:
    d = bundle.config.data
    frame, origins = data.frame, data.splits["test"]
    answers = Predictor(bundle).predict([History(frame.targets[:o], frame.time[:o]) for o in origins])
    pred = np.array([a["forecast"]["value"] for a in answers])[..., None]  # (W, H, 1)
    low = np.array([a["quantiles"]["0.1"]["value"] for a in answers])[..., None]
    high = np.array([a["quantiles"]["0.9"]["value"] for a in answers])[..., None]
    target = _targets(data, d.horizon)
    expected = summarize_errors(pred, target, mase_scale=np.asarray(d.mase_scale))

    assert evaluated.windows == len(origins) == 7  # 12 test months, horizon 6
    for metric in METRICS:
        assert evaluated.metrics["model"][metric] == pytest.approx(expected[metric], rel=1e-4), metric
    assert evaluated.metrics["model"]["coverage"] == pytest.approx(
        ((target >= low) & (target <= high)).mean()
    )
    assert evaluated.interval == (0.1, 0.9)
    assert len(evaluated.per_step["model"]["mae"]) == d.horizon


def test_baselines_equal_baseline_forecasts_on_the_same_origins(
    bundle: Bundle, data: SeriesData, evaluated: ForecastEvalResult
) -> None:
    d = bundle.config.data
    train_end = data.bounds["train"][1]
    assert train_end == 96 - 24  # fitted on the train rows only
    target, scale = _targets(data, d.horizon), np.asarray(d.mase_scale)
    expected = baseline_forecasts(
        data.frame.targets, data.splits["test"], horizon=d.horizon, season=d.season, train_end=train_end
    )
    reference = summarize_errors(expected["seasonal_naive"], target, mase_scale=scale)["mae"]
    assert list(evaluated.metrics) == ["model", "naive", "seasonal_naive", "ets", "arima"]
    for name, pred in expected.items():
        overall = summarize_errors(pred, target, mase_scale=scale)
        assert evaluated.metrics[name] == pytest.approx(
            {**overall, "relative_mae": overall["mae"] / reference}
        )
        steps = forecast_errors(pred, target, mase_scale=scale)
        for metric in METRICS:
            assert evaluated.per_step[name][metric] == pytest.approx(steps[metric].tolist()), (name, metric)
    assert evaluated.metrics["seasonal_naive"]["relative_mae"] == 1.0  # exactly: the reference itself
    assert evaluated.per_step["seasonal_naive"]["relative_mae"] == [1.0] * d.horizon
    assert evaluated.baselines["ets"][0].startswith("ETS(")
    assert evaluated.baselines["arima"][0].startswith("ARIMA(")
    assert evaluated.baselines["seasonal_naive"] == ["seasonal naive [12]"]


def test_without_statsmodels_the_naive_baselines_remain_with_a_note(
    data: SeriesData, monkeypatch: pytest.MonkeyPatch
) -> None:
    series, origins, train_end = data.frame.targets, data.splits["test"], data.bounds["train"][1]
    expected = baseline_forecasts(
        series, origins, horizon=6, season=12, train_end=train_end, methods=("naive", "seasonal_naive")
    )
    for module in (
        "statsmodels.tsa.exponential_smoothing.ets",
        "statsmodels.tsa.seasonal",
        "statsmodels.tsa.statespace.sarimax",
        "statsmodels.tsa.stattools",
    ):
        monkeypatch.setitem(sys.modules, module, None)  # importing it: ImportError, as without statsmodels
    forecasts, models, notes = run_baselines(series, origins, horizon=6, season=12, train_end=train_end)
    assert sorted(forecasts) == ["naive", "seasonal_naive"] and sorted(models) == sorted(forecasts)
    for name, pred in expected.items():
        np.testing.assert_array_equal(forecasts[name], pred)
    assert [n.split(" was skipped")[0] for n in notes] == ["ETS", "ARIMA"]
    assert all("pip install 'torchkiln[forecast]'" in n for n in notes)


def test_writes_metrics_json_and_a_self_contained_report(
    bundle: Bundle, evaluated: ForecastEvalResult
) -> None:
    payload = json.loads(evaluated.metrics_file.read_text(encoding="utf-8"))
    assert payload["metrics"]["model"]["interval"] == [0.1, 0.9]
    assert payload["metrics"]["model"]["mase"] == pytest.approx(evaluated.metrics["model"]["mase"])
    assert payload["model"] == bundle.config.model.name and payload["windows"] == 7
    assert payload["baselines"] == evaluated.baselines and len(payload["per_step"]["arima"]["mae"]) == 6
    cal = bundle.meta["calibration"]["intervals"]
    assert payload["extra"]["intervals"] == (
        "widened on the val split by conformalized quantile regression: "
        f"{100 * cal['coverage_before']:.1f} % -> {100 * cal['coverage_after']:.1f} % of its "
        f"{cal['windows']} windows' targets inside (80 % nominal)"
    )
    page = evaluated.report.read_text(encoding="utf-8")
    assert "http" not in page and "<script" not in page  # nothing loaded from elsewhere
    assert page.count('src="data:image/png;base64,') == 3  # two per-step plots, one series plot
    assert "pinball" in page and "Seasonal naive" in page and evaluated.baselines["ets"][0] in page


def test_an_unknown_split_is_a_data_error(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Unknown split 'tset'\. Expected one of train, val, test"):
        evaluate_forecast(bundle, split="tset", out_dir=tmp_path)


def test_cli_evaluate_prints_the_models_by_metrics_table(tiny_forecast_bundle: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    run_dir = tiny_forecast_bundle.parent
    proc = subprocess.run(
        [KILN, "evaluate", str(run_dir), "--out", str(tmp_path / "eval")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in ("network", "seasonal naive", "ETS", "ARIMA", "rel. MAE", "MASE", "coverage of the 0.1-0.9"):
        assert text in proc.stdout, text
    assert f"report:  {tmp_path / 'eval' / 'report.html'}" in proc.stdout
    assert (tmp_path / "eval" / "metrics.json").is_file()


def without(bundle: Bundle, field: str) -> Bundle:
    """The bundle with ``data.<field>`` removed from its config, as in a hand-edited config.yaml."""
    data = bundle.config.data.model_copy(update={field: None})
    return dataclasses.replace(bundle, config=bundle.config.model_copy(update={"data": data}))


def unresolved_bundle_message(bundle: Bundle, field: str) -> str:
    return (
        f"Bundle '{bundle.path}' has no data.{field} in its config.yaml; expected the resolved config that "
        f"training writes (it fills data.{field} in from the train split). Fix: restore config.yaml from "
        f"the run, or retrain to rewrite the bundle."
    )


def test_a_bundle_without_the_mase_scale_is_refused_before_forecasting(
    bundle: Bundle, tmp_path: Path
) -> None:
    broken = without(bundle, "mase_scale")
    with pytest.raises(BundleError) as exc:
        evaluate_forecast(broken, split="test", out_dir=tmp_path)
    assert str(exc.value) == unresolved_bundle_message(broken, "mase_scale")
    assert not (tmp_path / "metrics.json").exists()


def test_a_bundle_without_the_scaler_is_refused(bundle: Bundle) -> None:
    broken = without(bundle, "scaler_stats")
    with pytest.raises(BundleError) as exc:
        network_quantiles(broken, [], torch.device("cpu"))
    assert str(exc.value) == unresolved_bundle_message(broken, "scaler_stats")
