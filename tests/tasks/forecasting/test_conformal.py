"""Conformalized quantile regression: the offsets by hand, and coverage on the calibration windows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from torchkiln.tasks.forecasting.conformal import TOLERANCE, conformal_offsets, interval_pairs


def test_offsets_match_the_hand_computed_rank() -> None:
    q = np.array([[[[0.0, 1.0, 2.0]]]] * 4)  # 4 windows, 1 step, 1 target: interval [0, 2]
    y = np.array([[[3.0]], [[1.0]], [[-2.0]], [[1.5]]])
    # scores max(0 - y, y - 2): 1, -1, 2, -0.5 -> sorted -1, -0.5, 1, 2; rank ceil(5 * 0.5) = 3 -> 1.0
    offsets, report = conformal_offsets(q, y, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(offsets[0, 0], [-1.0 - TOLERANCE, 0.0, 1.0 + TOLERANCE])
    assert (report.windows, report.nominal, report.capped) == (4, 0.5, False)
    assert (report.coverage_before, report.coverage_after) == (0.5, 0.75)


def test_each_pair_and_each_step_get_their_own_offset_and_a_wide_interval_is_kept() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 2, 1)) * np.array([1.0, 3.0])[None, :, None]  # step 2 is noisier
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    too_narrow = np.stack(
        [-0.1 * np.ones_like(y), -0.05 * np.ones_like(y), 0 * y, 0.05 + 0 * y, 0.1 + 0 * y], -1
    )
    offsets, report = conformal_offsets(too_narrow, y, levels)
    calibrated = too_narrow + offsets
    for lo, hi in ((0, 4), (1, 3)):
        inside = ((y >= calibrated[..., lo]) & (y <= calibrated[..., hi])).mean(axis=(0, 2))  # per step
        assert np.all(np.abs(inside - (levels[hi] - levels[lo])) < 0.03)
    assert offsets[1, 0, 4] > 2 * offsets[0, 0, 4]  # the noisier step is widened more
    assert report.coverage_before < 0.2 and report.coverage_after >= 0.9
    too_wide, report = conformal_offsets(too_narrow * 100, y, levels)
    assert np.all(too_wide == 0) and report.coverage_before == report.coverage_after


def test_too_few_windows_use_the_largest_score_and_say_so() -> None:
    q = np.array([[[[0.0, 1.0, 2.0]]]] * 3)
    y = np.array([[[3.0]], [[5.0]], [[1.0]]])  # rank ceil(4 * 0.8) = 4 > 3 windows
    offsets, report = conformal_offsets(q, y, [0.1, 0.5, 0.9])
    assert offsets[0, 0, 2] == pytest.approx(3.0 + TOLERANCE) and report.capped


def test_bad_shapes_and_unpaired_levels_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=re.escape("quantiles (2, 1, 1, 3) and targets (2, 1) do not match")):
        conformal_offsets(np.zeros((2, 1, 1, 3)), np.zeros((2, 1)), [0.1, 0.5, 0.9])
    with pytest.raises(
        ValueError, match=re.escape("Cannot calibrate intervals from 2 windows and levels [0.5]")
    ):
        conformal_offsets(np.zeros((2, 1, 1, 1)), np.zeros((2, 1, 1)), [0.5])


def test_an_outer_pair_is_widened_at_least_as_much_as_an_inner_one() -> None:
    q = np.array([[[[-3.0, -0.1, 0.0, 0.1, 3.0]]]] * 9)  # a wide outer pair, a narrow inner pair
    y = np.linspace(-2.0, 2.0, 9).reshape(9, 1, 1)
    offsets, _ = conformal_offsets(q, y, [0.05, 0.25, 0.5, 0.75, 0.95])
    calibrated = (q + offsets)[0, 0, 0]
    assert offsets[0, 0, 1] < 0 and offsets[0, 0, 0] == offsets[0, 0, 1]  # the outer pair moved with it
    assert np.all(np.diff(calibrated) > 0)


def test_interval_pairs_pair_levels_from_the_outside_in_around_the_median() -> None:
    assert interval_pairs([0.05, 0.25, 0.5, 0.75, 0.95]) == [(0, 4), (1, 3)]
    assert interval_pairs([0.1, 0.5, 0.8]) == [(0, 2)]
    assert interval_pairs([0.5, 0.7, 0.9]) == [] and interval_pairs([0.5]) == []
