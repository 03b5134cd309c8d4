"""Splitting a series in time, windowing it and scaling it, with no leakage by construction.

- :func:`split_bounds` cuts the series chronologically: train, gap, val, gap, test.
- :func:`window_origins` keeps train windows (inputs and targets) inside train, and the targets of val and
  test windows inside their split (their inputs may look back into earlier splits: that is the history a
  forecaster has at forecast time).
- :func:`fit_scaler` sees only the rows it is given: the caller gives it the train part. :func:`scale`
  and :func:`unscale` work on NumPy arrays and torch tensors alike (training, metrics and serving).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from torchkiln.core.errors import DataError
from torchkiln.tasks.forecasting.config import ScalerStats, TimeSeriesSplitConfig

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _steps(part: float, n: int) -> int:
    return math.floor(part * n + 0.5) if part < 1 else int(part)  # round half up, not to even


def split_bounds(
    n: int, split: TimeSeriesSplitConfig, *, lookback: int, horizon: int
) -> dict[str, tuple[int, int]]:
    """Chronological ``[start, end)`` row ranges of the targets of "train", "val" and "test".

    Test is the last part, val the part before it, train the rest; ``split.gap`` rows are dropped between
    train and the next part and between val and test. A part set to 0 is empty (``start == end``).

    Args:
        n: the length of the series.
        split: fractions of ``n`` (below 1, rounded) or counts of steps (1 or more).
        lookback, horizon: the window sizes, to check that each part can hold a window.

    Returns:
        ``{"train": (0, a), "val": (b, c), "test": (d, n)}``.

    Raises:
        DataError: train is shorter than lookback + horizon, or a non-zero val or test is shorter than
            horizon (too short a history for the windows).

    Example:
        >>> split_bounds(144, TimeSeriesSplitConfig(val=12, test=12, gap=0), lookback=24, horizon=12)
        {'train': (0, 120), 'val': (120, 132), 'test': (132, 144)}
    """
    n_val, n_test, gap = _steps(split.val, n), _steps(split.test, n), split.gap
    test_start = n - n_test
    val_end = test_start - (gap if n_test else 0)
    val_start = val_end - n_val
    train_end = val_start - (gap if n_val else 0)
    bounds = {"train": (0, train_end), "val": (val_start, val_end), "test": (test_start, n)}
    short = [f"train has {max(train_end, 0)} step(s) but needs lookback + horizon = {lookback + horizon}"]
    short = short if train_end < lookback + horizon else []
    for name, size, asked in (("val", n_val, split.val), ("test", n_test, split.test)):
        if asked > 0 and size < horizon:
            short.append(f"{name} has {size} step(s) but needs at least horizon = {horizon}")
    if short:
        raise DataError(
            f"The series is too short for these windows: {n} steps, data.lookback {lookback}, data.horizon "
            f"{horizon}, split val {n_val} / test {n_test} / gap {gap} step(s): {'; '.join(short)}. "
            f"Expected train >= lookback + horizon and a non-zero val or test >= horizon. Fix: use a smaller "
            f"data.lookback or data.horizon, a smaller data.split.val / data.split.test, or a longer series."
        )
    return bounds


def window_origins(
    bounds: dict[str, tuple[int, int]], split: str, *, lookback: int, horizon: int, stride: int = 1
) -> np.ndarray:
    """The window origins of one split: inputs are rows ``[o - lookback, o)``, targets ``[o, o + horizon)``.

    Train windows lie wholly inside train. Val and test windows have their targets inside the split;
    their inputs may reach back into earlier rows, the history known at forecast time.

    Args:
        bounds: from :func:`split_bounds`.
        split: "train", "val" or "test".
        lookback, horizon: the window sizes.
        stride: steps between consecutive origins.

    Returns:
        int64 (W,) origins, increasing (empty when the split is).

    Raises:
        DataError: ``split`` is not in ``bounds``.

    Example:
        >>> bounds = {"train": (0, 40), "val": (40, 50), "test": (50, 60)}
        >>> window_origins(bounds, "val", lookback=24, horizon=5)
        array([40, 41, 42, 43, 44, 45])
    """
    if split not in bounds:
        raise DataError(
            f"Unknown split '{split}'; expected one of {', '.join(bounds)}. Fix: use one of those."
        )
    start, end = bounds[split]
    low = start + lookback if split == "train" else max(start, lookback)
    return np.arange(low, end - horizon + 1, max(stride, 1), dtype=np.int64)


def fit_scaler(train: np.ndarray, kind: str, *, names: Sequence[str] | None = None) -> ScalerStats:
    """Fit a per-column scaler on the train rows (and only those: never pass val or test here).

    Args:
        train: (N, C) the train part of the series.
        kind: "standard" (mean / std), "minmax" (min / max - min), "log1p" (standard on log1p(x), for
            series >= 0) or "none" (0 / 1). A scale of 0 (a constant column) becomes 1.
        names: the C column names, for error messages.

    Returns:
        :class:`ScalerStats` with one center and scale per column.

    Raises:
        DataError: ``train`` is empty, ``kind`` is unknown, or log1p meets a negative value.

    Example:
        >>> fit_scaler(np.array([[1.0], [3.0]]), "standard")
        ScalerStats(kind='standard', center=[2.0], scale=[1.0])
    """
    x = np.asarray(train, dtype=np.float64).reshape(len(train), -1)  # (N, C)
    if len(x) == 0:
        raise DataError("The train part is empty; expected at least one row to fit the scaler on.")
    if kind == "log1p":
        if (bad := np.argwhere(x < 0)).size:
            i, j = bad[0]
            column = f"'{names[j]}'" if names else str(j)
            raise DataError(
                f"The log1p scaler needs values >= 0, but column {column} holds {x[i, j]:g} (train row {i}); "
                f"expected a positive series. Fix: set data.scaler: standard (or minmax)."
            )
        x = np.log1p(x)
    if kind in ("standard", "log1p"):
        center, size = x.mean(axis=0), x.std(axis=0)
    elif kind == "minmax":
        center, size = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    elif kind == "none":
        center, size = np.zeros(x.shape[1]), np.ones(x.shape[1])
    else:
        raise DataError(
            f"Unknown scaler '{kind}'; expected standard, minmax, log1p or none. Fix: set data.scaler."
        )
    size = np.where(size > 1e-12 * np.maximum(np.abs(center), 1.0), size, 1.0)  # constant column -> 1
    return ScalerStats(kind=kind, center=center.tolist(), scale=size.tolist())


def _affine(x: ArrayT, stats: ScalerStats) -> tuple[ArrayT, Any, Any]:
    """``x`` as floats, with center and scale as arrays (or tensors) of its type, dtype and device."""
    if x.shape[-1] != len(stats.center):
        raise DataError(
            f"The values have {x.shape[-1]} column(s) on the last axis, but the scaler was fit on "
            f"{len(stats.center)}; expected the same columns in the same order. Fix: pass the same columns."
        )
    if isinstance(x, torch.Tensor):
        x = x if x.is_floating_point() else x.float()
        return x, x.new_tensor(stats.center), x.new_tensor(stats.scale)
    x = np.asarray(x)
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
    return x, np.asarray(stats.center, dtype=x.dtype), np.asarray(stats.scale, dtype=x.dtype)


def scale(x: ArrayT, stats: ScalerStats) -> ArrayT:
    """``(f(x) - center) / scale``, f = log1p for the log1p scaler; numpy arrays or torch tensors, last axis
    the columns.

    Example:
        >>> scale(np.array([[3.0]]), ScalerStats(kind="standard", center=[2.0], scale=[1.0]))
        array([[1.]])
    """
    x, center, size = _affine(x, stats)
    if stats.kind == "log1p":
        x = torch.log1p(x) if isinstance(x, torch.Tensor) else np.log1p(x)
    return (x - center) / size


def unscale(x: ArrayT, stats: ScalerStats) -> ArrayT:
    """The inverse of :func:`scale`: ``x * scale + center``, then expm1 for log1p.

    Example:
        >>> unscale(np.array([[1.0]]), ScalerStats(kind="standard", center=[2.0], scale=[1.0]))
        array([[3.]])
    """
    x, center, size = _affine(x, stats)
    y = x * size + center
    if stats.kind == "log1p":
        y = torch.expm1(y) if isinstance(y, torch.Tensor) else np.expm1(y)
    return y
