"""Classical baselines: hand-computed naive forecasts, no look-ahead, and the fast path vs statsmodels."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.forecasting.baselines import (
    BASELINES,
    ArimaFit,
    EtsFit,
    FittedBaselines,
    baseline_forecasts,
    fit_baselines,
)

SEASON, TRAIN_END, HORIZON = 12, 72, 12

# A tiny series for the naive methods: column 0 is 1..12, column 1 is irregular.
TINY = np.stack([np.arange(1.0, 13.0), np.array([5.0, 1, 4, 2, 6, 3, 7, 0, 8, 9, 2, 4])], axis=1)  # (12, 2)


def seasonal_series(n: int = 108, seed: int = 0) -> np.ndarray:
    """Monthly-like data: level 100, trend 0.8 per step, a season of 12 with amplitude 15, noise sd 2."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return (100 + 0.8 * t + 15 * np.sin(2 * np.pi * t / SEASON) + rng.normal(0, 2, n)).reshape(-1, 1)


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    return seasonal_series()


@pytest.fixture(scope="module")
def fitted(series: np.ndarray) -> FittedBaselines:
    return fit_baselines(series, train_end=TRAIN_END, season=SEASON)


def test_naive_and_seasonal_naive_by_hand() -> None:
    out = baseline_forecasts(
        TINY, np.array([4, 6]), horizon=6, season=4, train_end=8, methods=("naive", "seasonal_naive")
    )

    assert set(out) == {"naive", "seasonal_naive"}
    # naive repeats y[o - 1]: y[3] = (4, 2) and y[5] = (6, 3)
    assert out["naive"][:, :, 0].tolist() == [[4] * 6, [6] * 6]
    assert out["naive"][:, :, 1].tolist() == [[2] * 6, [3] * 6]
    # seasonal naive reads y[o + h - 4 * (h // 4 + 1)]: indices 0 1 2 3 0 1 from o = 4, 2 3 4 5 2 3 from o = 6
    assert out["seasonal_naive"][:, :, 0].tolist() == [[1, 2, 3, 4, 1, 2], [3, 4, 5, 6, 3, 4]]
    assert out["seasonal_naive"][:, :, 1].tolist() == [[5, 1, 4, 2, 5, 1], [4, 2, 6, 3, 4, 2]]


def test_describe_names_every_method_and_column() -> None:
    fitted = fit_baselines(TINY, train_end=8, season=4, methods=("seasonal_naive", "naive"))
    assert fitted.describe() == {"seasonal_naive": ["seasonal naive [4]"] * 2, "naive": ["naive"] * 2}
    assert fitted.forecast(TINY, np.array([], dtype=int), horizon=3)["naive"].shape == (0, 3, 2)


def test_ets_and_arima_beat_naive(series: np.ndarray, fitted: FittedBaselines) -> None:
    origins = np.arange(TRAIN_END, len(series) - HORIZON + 1)
    out = fitted.forecast(series, origins, horizon=HORIZON)
    target = np.stack([series[o : o + HORIZON] for o in origins])  # (O, H, 1)
    mae = {name: float(np.abs(f - target).mean()) for name, f in out.items()}

    assert {name: f.shape for name, f in out.items()} == {
        name: (len(origins), HORIZON, 1) for name in BASELINES
    }
    assert mae["ets"] < mae["naive"]
    assert mae["arima"] < mae["naive"]
    described = fitted.describe()
    assert re.fullmatch(r"ETS\([AM],(N|A|Ad),[NAM]\)", described["ets"][0])
    assert re.fullmatch(r"ARIMA\(\d,\d,\d\)(\(\d,\d,\d\)\[12\])?( with (drift|mean))?", described["arima"][0])


def test_nothing_after_train_end_is_used_for_fitting(series: np.ndarray, fitted: FittedBaselines) -> None:
    changed = series.copy()
    changed[TRAIN_END:] = changed[TRAIN_END:][::-1] * 3 + 50  # a very different future
    refitted = fit_baselines(changed, train_end=TRAIN_END, season=SEASON)
    assert refitted == fitted  # same model choice and the very same parameters

    origins = np.array([SEASON, 40, TRAIN_END - 3, TRAIN_END])  # windows read only series[:o]
    before = fitted.forecast(series, origins, horizon=HORIZON)
    after = refitted.forecast(changed, origins, horizon=HORIZON)
    for name in BASELINES:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.parametrize("origin", [SEASON, TRAIN_END, 90])
def test_values_from_the_origin_on_never_change_its_forecast(
    series: np.ndarray, fitted: FittedBaselines, origin: int
) -> None:
    changed = series.copy()
    changed[origin:] = changed[origin:][::-1] * 3 + 50  # stays positive, as multiplicative ETS needs
    before = fitted.forecast(series, np.array([origin]), horizon=HORIZON)
    after = fitted.forecast(changed, np.array([origin]), horizon=HORIZON)
    for name in BASELINES:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


# Hand-picked parameters: the fast path must match statsmodels for any parameters, not only fitted ones.
PARAMS = {
    "smoothing_level": 0.3,
    "smoothing_trend": 0.05,
    "smoothing_seasonal": 0.1,
    "damping_trend": 0.9,
    "initial_level": 100.0,
    "initial_trend": 0.8,
    "intercept": 0.5,
    "ar.L1": 0.6,
    "ma.L1": -0.3,
    f"ar.S.L{SEASON}": 0.3,
    "sigma2": 4.0,
}


def with_params(spec: EtsFit | ArimaFit, series: np.ndarray) -> EtsFit | ArimaFit:
    """``spec`` with the PARAMS values, and for ETS initial seasonals s_{-1-j} shaped like the data."""
    values = dict(PARAMS)
    for j in range(SEASON):
        wave = np.sin(2 * np.pi * (-1 - j) / SEASON)
        values[f"initial_seasonal.{j}"] = (
            1 + 0.15 * wave if getattr(spec, "seasonal", None) == "mul" else 15 * wave
        )
    return replace(spec, params=tuple(values[name] for name in spec.model(series[:, 0]).param_names))


ETS_SPECS = [
    EtsFit("add", None, False, None, SEASON),
    EtsFit("mul", "add", True, None, SEASON),
    EtsFit("add", "add", True, "add", SEASON),
    EtsFit("mul", "add", False, "mul", SEASON),
]


@pytest.mark.parametrize("spec", ETS_SPECS, ids=lambda spec: spec.name)
def test_ets_fast_path_equals_refiltering_each_origin(series: np.ndarray, spec: EtsFit) -> None:
    fit = with_params(spec, series)
    params = np.array(fit.params)
    origins = np.array([1, 5, 2 * SEASON, TRAIN_END, 90, len(series) - HORIZON])
    fitted = FittedBaselines(("ets",), SEASON, TRAIN_END, 1, ets=(fit,))
    fast = fitted.forecast(series, origins, horizon=HORIZON)["ets"][:, :, 0]
    for row, o in enumerate(origins):
        if o >= 2 * SEASON:  # the slow path: a model of series[:o] alone, smoothed with the fixed parameters
            slow = fit.model(series[:o, 0]).smooth(params).forecast(HORIZON)
        else:  # statsmodels cannot build a seasonal model on < 2 seasons: simulate on from y[o - 1]
            smoothed = fit.model(series[:, 0]).smooth(params)
            slow = smoothed.simulate(HORIZON, anchor=int(o) - 1, random_errors=np.zeros((HORIZON, 1)))
        np.testing.assert_allclose(fast[row], np.ravel(slow), rtol=1e-6, err_msg=f"origin {o}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # statsmodels on 1 point
def test_arima_fast_path_equals_refiltering_each_origin(series: np.ndarray, fitted: FittedBaselines) -> None:
    drift = with_params(ArimaFit((1, 1, 1), (0, 0, 0, 0), constant=True), series)
    mean = with_params(ArimaFit((1, 0, 0), (1, 0, 0, SEASON), constant=True), series)
    origins = np.array([1, 5, TRAIN_END, 90, len(series) - HORIZON])
    for fit in (fitted.arima[0], drift, mean):
        one = FittedBaselines(("arima",), SEASON, TRAIN_END, 1, arima=(fit,))
        fast = one.forecast(series, origins, horizon=HORIZON)["arima"][:, :, 0]
        for row, o in enumerate(origins):
            slow = fit.model(series[:o, 0]).filter(np.array(fit.params)).forecast(HORIZON)
            np.testing.assert_allclose(fast[row], slow, rtol=1e-6, err_msg=f"{fit.name}, origin {o}")


def test_origin_before_one_season_is_refused() -> None:
    message = (
        "Origin 2 has fewer than 4 past step(s), so seasonal naive has no value one season back. "
        "Expected every origin >= 4. Fix: drop the first windows or use a smaller season."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        baseline_forecasts(
            TINY, np.array([2, 6]), horizon=2, season=4, train_end=8, methods=("seasonal_naive",)
        )


def test_window_past_the_end_is_refused() -> None:
    message = (
        "Origin 10 with horizon 4 needs series[10:14], but the series has 12 steps. "
        "Expected origin + horizon <= 12 for every origin. Fix: drop the last windows or shorten the horizon."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        baseline_forecasts(TINY, np.array([4, 10]), horizon=4, season=4, train_end=8, methods=("naive",))


def test_too_short_train_is_refused() -> None:
    message = (
        "train_end=5 does not split a 12-step series into a usable training part. Expected 10 <= train_end "
        "<= 12 (ETS and ARIMA need 10 training steps to fit). "
        "Fix: use a longer train split, or leave 'ets' and 'arima' out of methods."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        baseline_forecasts(TINY, np.array([6]), horizon=2, season=4, train_end=5)


def test_unknown_method_and_bad_series_are_refused() -> None:
    message = (
        "Unknown baseline 'arma'. Did you mean 'arima'? Expected some of naive, seasonal_naive, ets, arima. "
        "Fix: correct the name in methods."
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit_baselines(TINY, train_end=8, season=4, methods=("naive", "arma"))
    with pytest.raises(DataError, match=re.escape("got a series of shape (12,). Expected (N, C)")):
        fit_baselines(TINY[:, 0], train_end=8, season=4, methods=("naive",))


def test_multiplicative_ets_refuses_non_positive_values_it_would_read(series: np.ndarray) -> None:
    fit = with_params(EtsFit("mul", None, False, None, SEASON), series)
    fitted = FittedBaselines(("ets",), SEASON, TRAIN_END, 1, ets=(fit,))
    changed = series.copy()
    changed[80] = 0.0
    fitted.forecast(changed, np.array([80]), horizon=HORIZON)  # reads only series[:80]: fine
    with pytest.raises(
        DataError, match=re.escape("ETS(M,N,N) was chosen for column 0 on a strictly positive")
    ):
        fitted.forecast(changed, np.array([81]), horizon=HORIZON)
