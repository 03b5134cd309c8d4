"""Classical forecasting baselines, evaluated on exactly the windows the neural model sees.

Each method forecasts every column of a ``(N, C)`` series on its own:

- ``naive``: every step repeats the last value, ``ŷ[o+h] = y[o-1]``.
- ``seasonal_naive``: every step repeats the value one season back, ``ŷ[o+h] = y[o+h-m*(h//m+1)]``.
- ``ets``: statsmodels ``ETSModel``, the lowest AICc among error {add, mul} x trend {none, add, damped add}
  x seasonal {none, add, mul}, less additive error with multiplicative season (unstable; R's ``ets`` leaves
  it out too). Multiplicative parts need strictly positive training data; seasonal ones need two full
  seasons of it.
- ``arima``: statsmodels ``SARIMAX``, chosen as R's ``auto.arima`` does for long series: D = 1 when the STL
  seasonal strength exceeds 0.64, d from KPSS tests, then (p, q) in 0..2 and (P, Q) in 0..1 ranked by the
  AIC of a fast conditional-sum-of-squares fit. The best-ranked order whose exact maximum-likelihood fit
  succeeds wins. A constant (mean, or drift when d + D = 1) is tried when d + D <= 1.

No leakage: parameters and model choice use ``series[:train_end]`` only. A forecast from origin ``o``
covers ``series[o:o+horizon]`` and uses only ``series[:o]``: the fitted parameters stay fixed and the
state is updated with the observations before ``o``. For speed, each column is filtered once and the
forecast of every origin is read off the state at that origin. That equals re-filtering ``series[:o]``
and forecasting, e.g. ``fit.model(series[:o, c]).filter(np.array(fit.params)).forecast(horizon)`` for
ARIMA (``.smooth`` for ETS); ``tests/tasks/forecasting/test_baselines.py`` checks it.

Example:
    >>> fitted = fit_baselines(series, train_end=101, season=12)  # series: (N, C), original units
    >>> fitted.describe()["ets"]  # one name per column; AirPassengers with train_end=101:
    ['ETS(M,A,M)']
    >>> forecasts = fitted.forecast(series, origins, horizon=12)  # {"naive": (len(origins), 12, C), ...}
    >>> forecasts = baseline_forecasts(series, origins, horizon=12, season=12, train_end=101)  # same, at once
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize
from scipy.signal import lfilter
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from torchkiln.core.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:  # statsmodels is imported where ETS and ARIMA need it: naive ones work without it
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel
    from statsmodels.tsa.statespace.sarimax import SARIMAX

BASELINES = ("naive", "seasonal_naive", "ets", "arima")
MIN_FIT_LENGTH = 10  # training steps that ETS and ARIMA need to estimate their parameters at all
SEASONAL_STRENGTH = 0.64  # auto.arima's STL seasonal strength above which it takes a seasonal difference


@dataclass(frozen=True)
class EtsFit:
    """One column's chosen ETS model; ``params`` are in the order of ``model(y).param_names``."""

    error: str  # "add" or "mul"
    trend: str | None  # None or "add"
    damped: bool
    seasonal: str | None  # None, "add" or "mul"
    season: int
    params: tuple[float, ...] = ()
    aicc: float = float("nan")

    @property
    def name(self) -> str:
        """Hyndman's short name, e.g. ``ETS(M,Ad,M)``."""
        trend = "N" if self.trend is None else "Ad" if self.damped else "A"
        return f"ETS({self.error[0].upper()},{trend},{(self.seasonal or 'n')[0].upper()})"

    def model(self, endog: np.ndarray) -> ETSModel:
        """This specification on ``endog`` (1-D); ``.smooth(np.array(fit.params))`` applies the fit."""
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        return ETSModel(
            endog,
            error=self.error,
            trend=self.trend,
            damped_trend=self.damped,
            seasonal=self.seasonal,
            seasonal_periods=self.season if self.seasonal else None,
        )


@dataclass(frozen=True)
class ArimaFit:
    """One column's chosen ARIMA model; ``params`` are in the order of ``model(y).param_names``."""

    order: tuple[int, int, int]
    seasonal_order: tuple[int, int, int, int]  # (0, 0, 0, 0) when there is no seasonal part
    constant: bool
    params: tuple[float, ...] = ()
    aic: float = float("nan")

    @property
    def name(self) -> str:
        """R's style of name, e.g. ``ARIMA(2,1,1)(0,1,0)[12]`` or ``ARIMA(1,0,0) with mean``."""
        (p, d, q), (sp, sd, sq, s) = self.order, self.seasonal_order
        name = f"ARIMA({p},{d},{q})" + (f"({sp},{sd},{sq})[{s}]" if s else "")
        return name + (" with drift" if d + sd == 1 else " with mean") * self.constant

    def model(self, endog: np.ndarray) -> SARIMAX:
        """This specification on ``endog`` (1-D); ``.filter(np.array(fit.params))`` applies the fit."""
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        trend = "c" if self.constant else "n"
        return SARIMAX(endog, order=self.order, seasonal_order=self.seasonal_order, trend=trend)


@dataclass(frozen=True)
class FittedBaselines:
    """The baselines fitted on ``series[:train_end]``; build it with :func:`fit_baselines`."""

    methods: tuple[str, ...]
    season: int
    train_end: int
    n_columns: int
    ets: tuple[EtsFit, ...] = ()  # one per column when "ets" is in methods
    arima: tuple[ArimaFit, ...] = ()  # one per column when "arima" is in methods

    def describe(self) -> dict[str, list[str]]:
        """Return, per method, one readable model name per column, e.g. ``{"arima": ["ARIMA(1,1,0)"]}``."""
        fixed = {"naive": "naive", "seasonal_naive": f"seasonal naive [{self.season}]"}
        fitted = {"ets": [f.name for f in self.ets], "arima": [f.name for f in self.arima]}
        return {m: fitted[m] if m in fitted else [fixed[m]] * self.n_columns for m in self.methods}

    def forecast(self, series: np.ndarray, origins: np.ndarray, *, horizon: int) -> dict[str, np.ndarray]:
        """Forecast ``series[o:o+horizon]`` from ``series[:o]`` for each origin ``o``.

        Args:
            series: The full series, float array ``(N, C)`` in original units (the one fitted on).
            origins: 1-D integer array of forecast origins.
            horizon: Number of steps to forecast.

        Returns:
            Per method, a float array ``(len(origins), horizon, C)``.

        Raises:
            ConfigError: if ``horizon`` is not an integer >= 1.
            DataError: if the series has another column count, or a window does not fit the series.

        Example:
            >>> fitted.forecast(series, np.arange(101, 133), horizon=12)["ets"].shape
            (32, 12, 1)
        """
        series = _check_series(series)
        if series.shape[1] != self.n_columns:
            raise DataError(
                f"The baselines were fitted on {self.n_columns} column(s) but got a series with "
                f"{series.shape[1]}. Expected the series they were fitted on. Fix: pass that series."
            )
        season = self.season if "seasonal_naive" in self.methods else 1
        origins = _check_origins(origins, horizon=horizon, length=len(series), season=season)
        if not origins.size:
            return {m: np.empty((0, horizon, self.n_columns)) for m in self.methods}
        seen = series[: max(int(origins.max()), self.train_end)]  # no forecast reads past its origin
        with _quiet():
            return {m: _FORECASTERS[m](self, seen, origins, horizon) for m in self.methods}


def fit_baselines(
    series: np.ndarray, *, train_end: int, season: int, methods: Sequence[str] = BASELINES
) -> FittedBaselines:
    """Choose and fit the ETS and ARIMA models of every column on ``series[:train_end]``.

    Args:
        series: The full series, float array ``(N, C)`` in original units. Only ``series[:train_end]``
            is read.
        train_end: Index where the training part ends.
        season: Season length in steps (1 for none).
        methods: Which of :data:`BASELINES` to prepare.

    Returns:
        The fitted baselines; ``.forecast(series, origins, horizon=...)`` runs them.

    Raises:
        ConfigError: for an unknown or repeated method, or a season that is not an integer >= 1.
        DataError: for a series that is not ``(N, C)`` and finite, a bad ``train_end``, or when no
            ETS or ARIMA candidate can be fitted.

    Example:
        >>> fit_baselines(air_passengers, train_end=101, season=12).describe()["arima"]
        ['ARIMA(0,1,1)(1,1,1)[12]']
    """
    methods = _check_methods(methods)
    series = _check_series(series)
    _check_positive_int("season", season)
    _check_train_end(train_end, len(series), needs_fit="ets" in methods or "arima" in methods)
    if "ets" in methods or "arima" in methods:
        _require_statsmodels()
    train, columns = series[:train_end], range(series.shape[1])
    with _quiet():
        ets = tuple(_fit_ets(train[:, c], int(season), c) for c in columns) if "ets" in methods else ()
        arima = tuple(_fit_arima(train[:, c], int(season), c) for c in columns) if "arima" in methods else ()
    return FittedBaselines(methods, int(season), int(train_end), series.shape[1], ets, arima)


def _require_statsmodels() -> None:
    """ETS and ARIMA need statsmodels (the 'forecast' extra); the naive baselines do not."""
    try:
        import statsmodels.tsa.exponential_smoothing.ets
        import statsmodels.tsa.seasonal
        import statsmodels.tsa.statespace.sarimax
        import statsmodels.tsa.stattools  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ETS and ARIMA need statsmodels, which cannot be imported ({exc}). Install it with: "
            f"pip install 'torchkiln[forecast]'."
        ) from None


def baseline_forecasts(
    series: np.ndarray,
    origins: np.ndarray,
    *,
    horizon: int,
    season: int,
    train_end: int,
    methods: Sequence[str] = BASELINES,
) -> dict[str, np.ndarray]:
    """Fit on ``series[:train_end]`` and forecast ``series[o:o+horizon]`` from ``series[:o]`` per origin.

    The inputs are checked before anything is fitted. See :func:`fit_baselines` and
    :meth:`FittedBaselines.forecast` for the arguments and errors.

    Returns:
        Per method, a float array ``(len(origins), horizon, C)`` in original units.

    Example:
        >>> out = baseline_forecasts(y, np.arange(120, 133), horizon=12, season=12, train_end=101)
        >>> out["seasonal_naive"].shape
        (13, 12, 1)
    """
    methods = _check_methods(methods)
    series = _check_series(series)
    _check_positive_int("season", season)
    _check_origins(
        origins, horizon=horizon, length=len(series), season=season if "seasonal_naive" in methods else 1
    )
    fitted = fit_baselines(series, train_end=train_end, season=season, methods=methods)
    return fitted.forecast(series, origins, horizon=horizon)


# --- forecasting with fixed parameters ---------------------------------------------------------------


# Each takes (fitted, series (N, C) up to the last origin, origins (O,), horizon) -> (O, H, C)


def _naive(fitted: FittedBaselines, series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(series[origins - 1][:, None, :], horizon, axis=1)


def _seasonal_naive(
    fitted: FittedBaselines, series: np.ndarray, origins: np.ndarray, horizon: int
) -> np.ndarray:
    m, h = fitted.season, np.arange(horizon)
    return series[origins[:, None] + h - m * (h // m + 1)]  # (O, H) indices -> (O, H, C)


def _ets(fitted: FittedBaselines, series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    columns = [_ets_column(fit, series[:, c], c, origins, horizon) for c, fit in enumerate(fitted.ets)]
    return np.stack(columns, axis=-1)


def _arima(fitted: FittedBaselines, series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    columns = [_arima_column(fit, series[:, c], origins, horizon) for c, fit in enumerate(fitted.arima)]
    return np.stack(columns, axis=-1)


_FORECASTERS: dict[str, Callable[[FittedBaselines, np.ndarray, np.ndarray, int], np.ndarray]] = {
    "naive": _naive,
    "seasonal_naive": _seasonal_naive,
    "ets": _ets,
    "arima": _arima,
}


def _ets_column(fit: EtsFit, y: np.ndarray, column: int, origins: np.ndarray, horizon: int) -> np.ndarray:
    """ETS point forecasts ``(O, H)`` from the smoothed states at ``o - 1`` (as statsmodels' forecast)."""
    if "mul" in (fit.error, fit.seasonal) and (y <= 0).any():
        raise DataError(
            f"{fit.name} was chosen for column {column} on a strictly positive training part, but the series "
            f"has a value <= 0 at index {int(np.argmax(y <= 0))}, before the last origin. Expected positive "
            "values for a multiplicative model. Fix: leave 'ets' out of methods for this series."
        )
    model = fit.model(y)
    value = dict(zip(model.param_names, fit.params, strict=True))
    states = np.asarray(model.smooth(np.array(fit.params)).states)  # (N, k): level[, trend][, seasonal]
    steps = np.arange(1, horizon + 1)
    last = states[origins - 1]  # (O, k)
    level = np.broadcast_to(last[:, :1], (len(origins), horizon))
    if fit.trend:
        phi = value.get("damping_trend", 1.0)
        level = level + np.cumsum(phi**steps) * last[:, 1:2]
    if not fit.seasonal:
        return np.array(level)
    m = fit.season
    # history[i + m] = s_i; the initial seasonal j is s_{-1-j}
    initial = [value[f"initial_seasonal.{j}"] for j in range(m)][::-1]
    history = np.concatenate([initial, states[:, -1]])
    season = history[origins[:, None] - 1 + steps - m * ((steps - 1) // m + 1) + m]  # (O, H)
    return level * season if fit.seasonal == "mul" else level + season


def _arima_column(fit: ArimaFit, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """ARIMA forecasts ``(O, H)`` by iterating the state equation from each origin's predicted state."""
    model = fit.model(y)
    state = model.filter(np.array(fit.params)).predicted_state[:, origins]  # (k, O): E[a_o | y[:o]]
    k = state.shape[0]
    design, transition = model.ssm["design"].reshape(k), model.ssm["transition"].reshape(k, k)
    # with trend "c" statsmodels stores the intercepts per time step, all equal; take the first
    obs_intercept = np.asarray(model.ssm["obs_intercept"]).reshape(-1)[0]
    state_intercept = np.asarray(model.ssm["state_intercept"]).reshape(k, -1)[:, :1]
    out = np.empty((len(origins), horizon))
    for h in range(horizon):
        out[:, h] = design @ state + obs_intercept
        state = transition @ state + state_intercept
    return out


# --- model choice on the training part -----------------------------------------------------------------


def _fit_ets(y: np.ndarray, season: int, column: int) -> EtsFit:
    positive = bool((y > 0).all())
    seasonal = season > 1 and len(y) >= 2 * season
    candidates = [
        EtsFit(error, trend, damped, seas, season)
        for error in (("add", "mul") if positive else ("add",))
        for trend, damped in ((None, False), ("add", False), ("add", True))
        for seas in (None, "add", "mul")
        # R's restricted set: additive error with multiplicative seasonality is numerically unstable
        if (seas is None or seasonal) and (seas != "mul" or error == "mul")
    ]
    best, last_error = None, ""
    for spec in candidates:
        try:
            result = spec.model(y).fit(disp=False)
        except Exception as exc:  # statsmodels raises assorted types for a bad candidate; skip it
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        if (
            np.isfinite(result.aicc)
            and np.isfinite(result.params).all()
            and (best is None or result.aicc < best.aicc)
        ):
            best = replace(spec, params=tuple(map(float, result.params)), aicc=float(result.aicc))
    if best is None:
        raise DataError(_no_fit_message("ETS", column, len(candidates), last_error))
    return best


def _fit_arima(y: np.ndarray, season: int, column: int) -> ArimaFit:
    s = season if season > 1 and len(y) >= 2 * season else 0
    big_d = int(s > 0 and _seasonal_strength(y, s) > SEASONAL_STRENGTH)
    w = y[s:] - y[:-s] if big_d else y
    d = _kpss_diffs(w, max_d=2 - big_d)
    candidates = _css_ranking(np.diff(w, n=d), s=s, d=d, big_d=big_d)
    last_error = ""
    for spec, start in candidates:
        try:
            result = spec.model(y).fit(start_params=start, disp=False)
        except Exception as exc:  # statsmodels raises assorted types for a bad candidate; skip it
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        if np.isfinite(result.llf) and np.isfinite(result.params).all():
            return replace(spec, params=tuple(map(float, result.params)), aic=float(result.aic))
    raise DataError(_no_fit_message("ARIMA", column, len(candidates), last_error))


def _no_fit_message(kind: str, column: int, n: int, last_error: str) -> str:
    return (
        f"No {kind} model could be fitted to the training part of column {column} ({n} candidates tried; "
        f"last error: {last_error or 'non-finite likelihood'}). Expected a finite, non-degenerate series. "
        f"Fix: use a longer train split, or leave '{kind.lower()}' out of methods."
    )


def _seasonal_strength(y: np.ndarray, s: int) -> float:
    """Hyndman's F_S = 1 - var(remainder) / var(seasonal + remainder), from an STL decomposition."""
    if np.ptp(y) == 0:
        return 0.0
    # seasonal=11 is R's mstl default (7 + 4); statsmodels' 7 lets the season soak up more noise
    from statsmodels.tsa.seasonal import STL

    stl = STL(y, period=s, seasonal=11).fit()
    total = np.var(stl.seasonal + stl.resid)
    return float(max(0.0, 1 - np.var(stl.resid) / total)) if total > 0 else 0.0


def _kpss_diffs(w: np.ndarray, max_d: int) -> int:
    """How often to difference until KPSS no longer rejects level stationarity at 5 % (auto.arima's rule)."""
    from statsmodels.tsa.stattools import kpss

    for d in range(max_d):
        if np.ptp(w) == 0:
            return d
        if kpss(w, regression="c", nlags="auto")[1] >= 0.05:
            return d
        w = np.diff(w)
    return max_d


def _css_ranking(w: np.ndarray, *, s: int, d: int, big_d: int) -> list[tuple[ArimaFit, np.ndarray]]:
    """Every (p, q)(P, Q) candidate with its SARIMAX start params, best conditional-sum-of-squares AIC first.

    ``w`` is the differenced training series. All candidates condition on the same first ``ncond``
    steps, so their AICs compare.
    """
    seasonal = s > 0 and len(w) >= 2 + s + MIN_FIT_LENGTH
    ncond = 2 + s * seasonal
    seasonal_range = range(2) if seasonal else range(1)
    constants = (False, True) if d + big_d <= 1 else (False,)
    scale = float(np.sqrt(np.mean(w**2))) or 1.0
    z = w / scale  # scaled (not centred: a model without constant must not get the mean for free)
    ranked = []
    for p, q, sp, sq, constant in itertools.product(
        range(3), range(3), seasonal_range, seasonal_range, constants
    ):
        orders = (p, q, sp, sq, s)
        k = p + q + sp + sq + constant
        objective = lambda x, orders=orders, constant=constant: _css(x, z, orders, constant, ncond)[0]  # noqa: E731
        x0 = np.r_[np.zeros(k - constant), [z.mean()] * constant]
        x = minimize(objective, x0, method="L-BFGS-B").x if k else x0
        value, ar_poly, coefs, sigma2 = _css(x, z, orders, constant, ncond)
        intercept = [x[-1] * scale * ar_poly.sum()] if constant else []  # SARIMAX's c = mean * AR(1)
        start = np.r_[intercept, coefs, sigma2 * scale**2]
        spec = ArimaFit((p, d, q), (sp, big_d, sq, s) if sp + big_d + sq else (0, 0, 0, 0), constant)
        ranked.append((value + 2 * (k + 1), spec, start))
    ranked.sort(key=lambda item: item[0])
    return [(spec, start) for _, spec, start in ranked]


def _css(
    x: np.ndarray, z: np.ndarray, orders: tuple[int, ...], constant: bool, ncond: int
) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Return ``(n log(sse / n), AR polynomial, SARIMAX-ordered coefficients, sigma2)`` at unconstrained x."""
    p, q, sp, sq, s = orders
    ar, ma = _stationary(x[:p]), -_stationary(x[p : p + q])
    sar, sma = _stationary(x[p + q : p + q + sp]), -_stationary(x[p + q + sp : p + q + sp + sq])
    ar_poly = np.convolve(_lag_poly(-ar, 1), _lag_poly(-sar, s))
    ma_poly = np.convolve(_lag_poly(ma, 1), _lag_poly(sma, s))
    mu = x[-1] if constant else 0.0
    residuals = lfilter([1.0], ma_poly, np.convolve(z - mu, ar_poly)[ncond : len(z)])
    sigma2 = max(float(residuals @ residuals) / len(residuals), 1e-300)
    return len(residuals) * np.log(sigma2), ar_poly, np.concatenate([ar, ma, sar, sma]), sigma2


def _stationary(x: np.ndarray) -> np.ndarray:
    """Map any real x to the coefficients of a stationary ``1 - c_1 L - ... - c_k L^k`` (Jones, 1980).

    x -> partial autocorrelations in (-1, 1) -> coefficients by the Durbin-Levinson recursion. Like
    statsmodels' ``constrain_stationary_univariate``, but without its overhead on these tiny inputs.
    """
    coefs = np.empty(0)
    for r in x / np.sqrt(1 + x * x):
        coefs = np.append(coefs - r * coefs[::-1], r)
    return coefs


def _lag_poly(coefs: np.ndarray, s: int) -> np.ndarray:
    """``1 + c_1 L^s + c_2 L^2s + ...`` as coefficients of ``L^0, L^1, ...``."""
    poly = np.zeros(len(coefs) * s + 1)
    poly[0] = 1.0
    if len(coefs):  # s is 0 when there is no season
        poly[s::s] = coefs
    return poly


# --- input checks --------------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence statsmodels and keep BLAS on one thread while fitting or filtering."""
    # statsmodels warns about convergence, start values and overflow for many candidates; a bad candidate
    # is skipped or outranked on purpose, so these warnings are noise to the user. The matrices are tiny
    # (at most ~30 x 30): BLAS threads only add overhead, 4x on a busy 2-core machine.
    with warnings.catch_warnings(), np.errstate(all="ignore"), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")
        yield


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    for name in methods:
        if name not in BASELINES:
            raise ConfigError(
                f"Unknown baseline '{name}'.{did_you_mean(str(name), BASELINES)} Expected some of "
                f"{', '.join(BASELINES)}. Fix: correct the name in methods."
            )
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(
            f"methods={list(methods)} is empty or names a baseline twice. Expected distinct names from "
            f"{', '.join(BASELINES)}. Fix: list each baseline once."
        )
    return methods


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}. Fix: pass a positive int.")


def _check_train_end(train_end: int, length: int, *, needs_fit: bool) -> None:
    if isinstance(train_end, bool) or not isinstance(train_end, int | np.integer):
        raise ConfigError(f"train_end must be an integer index, got {train_end!r}. Fix: pass an int.")
    minimum = MIN_FIT_LENGTH if needs_fit else 1
    if not minimum <= train_end <= length:
        why = f" (ETS and ARIMA need {minimum} training steps to fit)" if needs_fit else ""
        raise DataError(
            f"train_end={train_end} does not split a {length}-step series into a usable training part. "
            f"Expected {minimum} <= train_end <= {length}{why}. "
            "Fix: use a longer train split, or leave 'ets' and 'arima' out of methods."
        )


def _check_series(series: np.ndarray) -> np.ndarray:
    series = np.asarray(series, dtype=float)
    if series.ndim != 2 or series.shape[0] < 2 or series.shape[1] < 1:
        raise DataError(
            f"The baselines got a series of shape {series.shape}. Expected (N, C) with N >= 2 time steps. "
            "Fix: pass a 2-D array (use y.reshape(-1, 1) for one series)."
        )
    if not np.isfinite(series).all():
        raise DataError(
            "The baselines got a series with NaN or infinite values. Expected finite numbers. "
            "Fix: fill or drop the missing values first."
        )
    return series


def _check_origins(origins: np.ndarray, *, horizon: int, length: int, season: int) -> np.ndarray:
    _check_positive_int("horizon", horizon)
    origins = np.asarray(origins)
    if origins.ndim != 1 or not np.issubdtype(origins.dtype, np.integer):
        raise DataError(
            f"origins must be a 1-D integer array, got dtype {origins.dtype} and shape {origins.shape}. "
            "Fix: pass e.g. np.arange(first, last + 1)."
        )
    if origins.size and origins.min() < season:
        raise DataError(
            f"Origin {origins.min()} has fewer than {season} past step(s), so "
            + ("seasonal naive has no value one season back" if season > 1 else "there is no last value")
            + f". Expected every origin >= {season}. Fix: drop the first windows or use a smaller season."
        )
    if origins.size and origins.max() + horizon > length:
        raise DataError(
            f"Origin {origins.max()} with horizon {horizon} needs series[{origins.max()}:"
            f"{origins.max() + horizon}], but the series has {length} steps. Expected origin + horizon <= "
            f"{length} for every origin. Fix: drop the last windows or shorten the horizon."
        )
    return origins.astype(np.int64)
