"""Splits in time, windows and scalers (tasks/forecasting/windows.py): nothing from val or test reaches
training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchkiln.core.errors import DataError
from torchkiln.tasks.forecasting.config import ScalerStats, TimeSeriesSplitConfig
from torchkiln.tasks.forecasting.windows import fit_scaler, scale, split_bounds, unscale, window_origins


def message(call, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kw)
    return str(info.value)


def test_too_short_history():
    split = TimeSeriesSplitConfig(val=0.2, test=0.2, gap=1)
    assert message(split_bounds, 40, split, lookback=24, horizon=6) == (
        "The series is too short for these windows: 40 steps, data.lookback 24, data.horizon 6, split val 8 "
        "/ test 8 / gap 1 step(s): train has 22 step(s) but needs lookback + horizon = 30. Expected train >= "
        "lookback + horizon and a non-zero val or test >= horizon. Fix: use a smaller data.lookback or "
        "data.horizon, a smaller data.split.val / data.split.test, or a longer series."
    )
    text = message(split_bounds, 100, TimeSeriesSplitConfig(val=0.04, test=3), lookback=5, horizon=6)
    assert "val has 4 step(s) but needs at least horizon = 6; test has 3 step(s)" in text
    no_room = TimeSeriesSplitConfig(val=5, test=5, gap=1)
    assert "train has 0 step(s) but needs" in message(split_bounds, 10, no_room, lookback=1, horizon=1)


def test_split_bounds_fractions_counts_gaps_and_empty_parts():
    default = TimeSeriesSplitConfig()
    assert split_bounds(144, default, lookback=24, horizon=12) == {
        "train": (0, 100),
        "val": (100, 122),
        "test": (122, 144),
    }
    counts = TimeSeriesSplitConfig(val=12, test=12, gap=3)
    assert split_bounds(144, counts, lookback=24, horizon=12) == {
        "train": (0, 114),
        "val": (117, 129),
        "test": (132, 144),
    }
    no_val = TimeSeriesSplitConfig(val=0, test=10, gap=2)
    assert split_bounds(50, no_val, lookback=4, horizon=2) == {
        "train": (0, 38),
        "val": (38, 38),
        "test": (40, 50),
    }
    no_test = TimeSeriesSplitConfig(val=10, test=0, gap=2)
    assert split_bounds(50, no_test, lookback=4, horizon=2) == {
        "train": (0, 38),
        "val": (40, 50),
        "test": (50, 50),
    }
    everything = TimeSeriesSplitConfig(val=0, test=0, gap=5)
    assert split_bounds(50, everything, lookback=4, horizon=2)["train"] == (0, 50)


@pytest.mark.parametrize(
    ("n", "split", "lookback", "horizon", "stride"),
    [
        (144, TimeSeriesSplitConfig(), 24, 12, 1),
        (144, TimeSeriesSplitConfig(val=12, test=12, gap=3), 24, 12, 1),
        (100, TimeSeriesSplitConfig(val=0, test=0.1, gap=4), 7, 3, 2),
        (100, TimeSeriesSplitConfig(val=20, test=0, gap=0), 30, 1, 1),
        (60, TimeSeriesSplitConfig(val=0.1, test=0.1, gap=1), 40, 6, 3),  # inputs reach back two splits
    ],
)
def test_windows_never_cross_a_split_boundary(n, split, lookback, horizon, stride):
    bounds = split_bounds(n, split, lookback=lookback, horizon=horizon)
    (t0, t1), (v0, v1), (s0, s1) = bounds["train"], bounds["val"], bounds["test"]
    assert t0 == 0 and t1 <= v0 <= v1 <= s0 <= s1 == n  # chronological
    held_out = set(range(v0, v1)) | set(range(s0, s1))
    for name in ("train", "val", "test"):
        start, end = bounds[name]
        origins = window_origins(bounds, name, lookback=lookback, horizon=horizon, stride=stride)
        assert origins.dtype == np.int64
        for o in origins.tolist():
            assert start <= o and o + horizon <= end  # targets inside the split
            assert o - lookback >= 0
            if name == "train":
                assert o - lookback >= t0  # inputs inside train too
                assert not held_out & set(range(o - lookback, o + horizon))  # never touches val or test
        # Every allowed origin is used (at this stride): nothing is dropped beyond the rules.
        low = start + lookback if name == "train" else max(start, lookback)
        expected = [o for o in range(low, end - horizon + 1, stride)]
        assert origins.tolist() == expected
    assert message(window_origins, bounds, "valid", lookback=1, horizon=1).startswith("Unknown split 'valid'")


@pytest.mark.parametrize("kind", ["standard", "minmax", "log1p", "none"])
def test_scale_unscale_round_trip_numpy_and_torch(kind):
    rng = np.random.default_rng(1)
    train = np.abs(rng.normal(50, 20, (40, 3)))  # (N, C) >= 0, so log1p fits
    stats = fit_scaler(train, kind)
    batch = np.abs(rng.normal(50, 20, (4, 10, 3)))  # (B, T, C): columns on the last axis
    np.testing.assert_allclose(unscale(scale(batch, stats), stats), batch, rtol=1e-10)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        tensor = torch.tensor(batch, dtype=dtype)
        scaled = scale(tensor, stats)
        assert isinstance(scaled, torch.Tensor) and scaled.dtype == dtype
        np.testing.assert_allclose(scaled.numpy(), scale(batch, stats), rtol=tol, atol=tol)
        torch.testing.assert_close(unscale(scaled, stats), tensor, rtol=tol, atol=tol)
    on_train = scale(train, stats)
    if kind in ("standard", "log1p"):
        np.testing.assert_allclose(on_train.mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(on_train.std(axis=0), 1, rtol=1e-12)
    elif kind == "minmax":
        np.testing.assert_allclose([on_train.min(axis=0), on_train.max(axis=0)], [[0] * 3, [1] * 3])
    else:
        np.testing.assert_array_equal(on_train, train)
    assert scale(np.array([[1, 2, 3]]), stats).dtype == np.float64  # integers become floats


def test_scaler_edge_cases():
    constant = fit_scaler(np.full((5, 2), 0.1), "standard")
    assert constant.scale == [1.0, 1.0]
    assert fit_scaler(np.full((5, 1), 7.0), "minmax") == ScalerStats(kind="minmax", center=[7.0], scale=[1.0])
    assert fit_scaler(np.ones((3, 2)), "none") == ScalerStats(
        kind="none", center=[0.0, 0.0], scale=[1.0, 1.0]
    )
    train = np.array([[1.0, 2.0], [3.0, -0.5]])
    assert message(fit_scaler, train, "log1p", names=["sales", "profit"]) == (
        "The log1p scaler needs values >= 0, but column 'profit' holds -0.5 (train row 1); expected a "
        "positive series. Fix: set data.scaler: standard (or minmax)."
    )
    assert "column 1 holds -0.5" in message(fit_scaler, train, "log1p")
    assert message(scale, np.ones((2, 3)), constant) == (
        "The values have 3 column(s) on the last axis, but the scaler was fit on 2; expected the same "
        "columns in the same order. Fix: pass the same columns."
    )
