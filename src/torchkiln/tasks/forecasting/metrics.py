"""Point-forecast metrics: MAE, RMSE, MAPE, sMAPE and MASE, per horizon step and overall.

Everything works on ``pred`` and ``target`` arrays of shape ``(W, H, C)`` (windows, horizon steps,
target columns) in original units, so a neural model and the classical baselines are scored by the
same code on the same windows. MASE divides each column's absolute errors by ``mase_scale[c]``, the
in-sample MAE of seasonal naive on the training part (:func:`seasonal_naive_scale`).

Definitions (``e = pred - target``):

- MAPE = ``100 * mean(|e| / |y|)`` over the targets that are not 0 (``nan`` when all are 0).
- sMAPE = ``mean(200 * |e| / (|y| + |ŷ|))``, where a ``0 / 0`` term counts as 0.
- RMSE overall is the square root of the mean squared error over everything, not a mean of RMSEs.

Example:
    >>> scale = seasonal_naive_scale(train, season=12)  # (N, C) -> (C,)
    >>> per_step = forecast_errors(pred, target, mase_scale=scale)  # {"mae": (H,), ...}
    >>> overall = summarize_errors(pred, target, mase_scale=scale)  # {"mae": 1.7, ...}
"""

from __future__ import annotations

import numpy as np

from torchkiln.core.errors import ConfigError, DataError

METRICS = ("mae", "rmse", "mape", "smape", "mase")


def forecast_errors(pred: np.ndarray, target: np.ndarray, *, mase_scale: np.ndarray) -> dict[str, np.ndarray]:
    """Return each metric per horizon step, averaged over windows and columns.

    Args:
        pred: Forecasts, float array ``(W, H, C)`` in original units.
        target: True values, same shape.
        mase_scale: ``(C,)`` positive MASE denominators, from :func:`seasonal_naive_scale`.

    Returns:
        ``{"mae", "rmse", "mape", "smape", "mase"}`` -> float array ``(H,)``. MAPE and sMAPE are in
        percent; MAPE is ``nan`` at a step whose targets are all 0.

    Raises:
        DataError: if the shapes disagree or a scale is not a finite number > 0.

    Example:
        >>> forecast_errors(np.ones((1, 2, 1)), np.full((1, 2, 1), 2.0), mase_scale=np.array([0.5]))["mase"]
        array([2., 2.])
    """
    return _errors(pred, target, mase_scale, axis=(0, 2))


def summarize_errors(pred: np.ndarray, target: np.ndarray, *, mase_scale: np.ndarray) -> dict[str, float]:
    """Return each metric over all windows, steps and columns (same keys as :func:`forecast_errors`).

    Raises:
        DataError: as :func:`forecast_errors`.

    Example:
        >>> summarize_errors(np.ones((1, 2, 1)), np.full((1, 2, 1), 2.0), mase_scale=np.array([0.5]))["mae"]
        1.0
    """
    return {name: float(value) for name, value in _errors(pred, target, mase_scale, axis=None).items()}


def seasonal_naive_scale(train: np.ndarray, season: int) -> np.ndarray:
    """Return the MASE denominators: per column, the mean of ``|y_t - y_{t-season}|`` over ``train``.

    When the training part is not longer than one season, the lag falls back to 1 (naive).

    Args:
        train: The training part, float array ``(N, C)`` in original units.
        season: Season length in steps (1 for none).

    Returns:
        Float array ``(C,)``, every entry > 0.

    Raises:
        ConfigError: if ``season`` is not an integer >= 1.
        DataError: if ``train`` is not 2-D, has fewer than 2 rows, is not finite, or a column is
            constant over the lag (MASE is undefined then).

    Example:
        >>> seasonal_naive_scale(np.array([[1.0], [2.0], [4.0], [7.0]]), season=2)
        array([4.])
    """
    if isinstance(season, bool) or not isinstance(season, int | np.integer) or season < 1:
        raise ConfigError(
            f"seasonal_naive_scale got season={season!r}. Expected an integer >= 1 (1 means no season). "
            "Fix: pass the season length in steps, e.g. 12 for monthly data."
        )
    train = np.asarray(train, dtype=float)
    if train.ndim != 2 or train.shape[0] < 2:
        raise DataError(
            f"seasonal_naive_scale got a training part of shape {train.shape}. Expected (N, C) with N >= 2 "
            "time steps. Fix: pass a 2-D array (y.reshape(-1, 1) for one series) and a longer train split."
        )
    if not np.isfinite(train).all():
        raise DataError(
            "seasonal_naive_scale got a training part with NaN or infinite values. Expected finite numbers. "
            "Fix: fill or drop the missing values before splitting."
        )
    lag = season if train.shape[0] > season else 1
    scale = np.abs(train[lag:] - train[:-lag]).mean(axis=0)
    constant = np.flatnonzero(scale == 0)
    if constant.size:
        raise DataError(
            f"The training part of column {int(constant[0])} is constant over lag {lag}, so its MASE is "
            "undefined (the seasonal naive in-sample error is 0). Expected a series that changes. "
            "Fix: drop that column or use a longer train split."
        )
    return scale


def _errors(
    pred: np.ndarray, target: np.ndarray, mase_scale: np.ndarray, axis: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    pred, target, scale = _checked(pred, target, mase_scale)
    abs_err = np.abs(pred - target)  # (W, H, C)
    nonzero = target != 0
    ape = np.divide(abs_err, np.abs(target), out=np.zeros_like(abs_err), where=nonzero)
    n_nonzero = nonzero.sum(axis=axis)
    denom = np.abs(target) + np.abs(pred)
    sape = np.divide(2 * abs_err, denom, out=np.zeros_like(abs_err), where=denom > 0)  # 0/0 counts as 0
    mape = np.divide(
        100 * ape.sum(axis=axis),
        n_nonzero,
        out=np.full(np.shape(n_nonzero), np.nan),
        where=n_nonzero > 0,
    )
    return {
        "mae": abs_err.mean(axis=axis),
        "rmse": np.sqrt((abs_err**2).mean(axis=axis)),
        "mape": mape,
        "smape": 100 * sape.mean(axis=axis),
        "mase": (abs_err / scale).mean(axis=axis),
    }


def _checked(
    pred: np.ndarray, target: np.ndarray, mase_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    scale = np.asarray(mase_scale, dtype=float)
    if pred.shape != target.shape or pred.ndim != 3 or pred.size == 0:
        raise DataError(
            f"Forecast metrics got pred of shape {pred.shape} and target of shape {target.shape}. Expected "
            "two non-empty arrays of the same shape (windows, horizon, columns). "
            "Fix: stack the windows so both are (W, H, C), with C = 1 for one series."
        )
    if scale.shape != (pred.shape[2],) or not (np.isfinite(scale) & (scale > 0)).all():
        raise DataError(
            f"Forecast metrics got mase_scale={scale.tolist()} for {pred.shape[2]} column(s). Expected one "
            "finite number > 0 per column. Fix: compute it with seasonal_naive_scale(train, season)."
        )
    return pred, target, scale
