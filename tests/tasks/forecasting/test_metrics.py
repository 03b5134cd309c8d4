"""Forecast metrics on tiny examples whose numbers are worked out by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.forecasting.metrics import forecast_errors, seasonal_naive_scale, summarize_errors

# Two windows, two horizon steps, one column: (W, H, C) = (2, 2, 1).
#   window 0: target 1, 2   pred 2, 2   error  1, 0
#   window 1: target 0, 4   pred 1, 2   error  1, -2
TARGET = np.array([[1.0, 2.0], [0.0, 4.0]])[..., None]
PRED = np.array([[2.0, 2.0], [1.0, 2.0]])[..., None]
SCALE = np.array([0.5])


def test_per_step_by_hand() -> None:
    m = forecast_errors(PRED, TARGET, mase_scale=SCALE)

    assert set(m) == {"mae", "rmse", "mape", "smape", "mase"}
    assert all(v.shape == (2,) for v in m.values())
    # step 0: |e| = 1, 1    step 1: |e| = 0, 2
    assert m["mae"] == pytest.approx([1.0, 1.0])
    assert m["rmse"] == pytest.approx([1.0, math.sqrt(2)])
    # step 0 skips the target 0: 1/1 -> 100 %; step 1: (0/2 + 2/4) / 2 -> 25 %
    assert m["mape"] == pytest.approx([100.0, 25.0])
    # step 0: 200*1/(1+2) = 66.67 and 200*1/(0+1) = 200; step 1: 0 and 200*2/(4+2) = 66.67
    assert m["smape"] == pytest.approx([(200 / 3 + 200) / 2, (0 + 200 / 3) / 2])
    assert m["mase"] == pytest.approx([2.0, 2.0])  # |e| / 0.5


def test_overall_by_hand() -> None:
    m = summarize_errors(PRED, TARGET, mase_scale=SCALE)

    assert all(isinstance(v, float) for v in m.values())
    assert m["mae"] == pytest.approx(1.0)  # (1 + 0 + 1 + 2) / 4
    # the root of the mean of 1, 0, 1, 4, not the mean of the per-step RMSEs (1 + 1.414) / 2
    assert m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["mape"] == pytest.approx(50.0)  # (100 + 0 + 50) / 3 non-zero targets
    assert m["smape"] == pytest.approx((200 / 3 + 200 + 0 + 200 / 3) / 4)
    assert m["mase"] == pytest.approx(2.0)


def test_mase_divides_each_column_by_its_own_scale() -> None:
    target = np.zeros((1, 1, 2))
    pred = np.array([[[1.0, 4.0]]])
    m = summarize_errors(pred, target, mase_scale=np.array([1.0, 2.0]))
    assert m["mae"] == pytest.approx(2.5)
    assert m["mase"] == pytest.approx((1 / 1 + 4 / 2) / 2)


def test_mape_with_all_zero_targets_is_nan_and_smape_counts_0_over_0_as_0() -> None:
    target = np.zeros((2, 3, 1))
    m = forecast_errors(np.zeros((2, 3, 1)), target, mase_scale=np.array([1.0]))
    assert np.isnan(m["mape"]).all()
    assert m["smape"] == pytest.approx([0.0, 0.0, 0.0])
    assert math.isnan(summarize_errors(np.ones((2, 3, 1)), target, mase_scale=np.array([1.0]))["mape"])


def test_perfect_forecast_scores_zero() -> None:
    m = summarize_errors(TARGET + 1, TARGET + 1, mase_scale=SCALE)
    assert m == pytest.approx({"mae": 0.0, "rmse": 0.0, "mape": 0.0, "smape": 0.0, "mase": 0.0})


def test_seasonal_naive_scale_by_hand() -> None:
    train = np.array([[1.0, 10.0], [2.0, 10.0], [4.0, 12.0], [7.0, 11.0]])
    # lag 2: column 0 |4-1|, |7-2| -> 4; column 1 |12-10|, |11-10| -> 1.5
    assert seasonal_naive_scale(train, season=2) == pytest.approx([4.0, 1.5])
    # N = 4 <= season 4: falls back to lag 1: |1|, |2|, |3| -> 2; |0|, |2|, |-1| -> 1
    assert seasonal_naive_scale(train, season=4) == pytest.approx([2.0, 1.0])


def test_constant_column_is_refused() -> None:
    train = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    message = (
        "The training part of column 1 is constant over lag 1, so its MASE is undefined (the seasonal "
        "naive in-sample error is 0). Expected a series that changes. "
        "Fix: drop that column or use a longer train split."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        seasonal_naive_scale(train, season=1)


def test_too_short_train_is_refused() -> None:
    with pytest.raises(
        DataError, match=re.escape("got a training part of shape (1, 1). Expected (N, C) with N >= 2")
    ):
        seasonal_naive_scale(np.array([[3.0]]), season=1)
    with pytest.raises(ConfigError, match=re.escape("got season=0. Expected an integer >= 1")):
        seasonal_naive_scale(np.ones((4, 1)), season=0)


def test_bad_shapes_and_scales_are_refused() -> None:
    with pytest.raises(DataError, match=re.escape("got pred of shape (2, 2) and target of shape (2, 2, 1)")):
        forecast_errors(PRED[..., 0], TARGET, mase_scale=SCALE)
    message = "got mase_scale=[0.0] for 1 column(s). Expected one finite number > 0 per column."
    with pytest.raises(DataError, match=re.escape(message)):
        summarize_errors(PRED, TARGET, mase_scale=np.array([0.0]))
