"""Calibrated thresholds hold the false-alarm rate on fresh clean windows, and still see a shift."""

from __future__ import annotations

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.monitor.calibrate import calibrate, joint_thresholds
from torchkiln.monitor.drift import DriftSettings, Signals, detect, judge, measure


def make(n: int, *, seed: int, shift: float = 0.0) -> Signals:
    rng = np.random.default_rng(seed)
    mean = rng.normal(shift, 1.0, n)
    return Signals(
        inputs={"mean": mean, "std": mean + rng.normal(0, 0.3, n)},  # two features that move together
        classes=rng.integers(0, 4, n),
        num_classes=4,
        embeddings=rng.normal(size=(n, 3)) + shift,
    )


def test_joint_thresholds_share_the_false_alarms_of_rows_that_move_together() -> None:
    null = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    thresholds, rate = joint_thresholds(null, 0.25)
    assert thresholds.tolist() == [3.0, 3.0] and rate == 0.25
    crossed = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]])  # never both high: no room
    thresholds, rate = joint_thresholds(crossed, 0.25)
    assert thresholds.tolist() == [4.0, 4.0] and rate == 0.0


def test_calibrated_thresholds_keep_fresh_clean_windows_near_the_target_and_flag_a_shift() -> None:
    ref, settings = make(2000, seed=0), DriftSettings(permutations=20, max_reference=300)
    t = calibrate(ref, 100, target_false_alarm=0.05, rounds=200, settings=settings)
    assert sorted(t.calibrated) == [
        "embedding/embedding/mmd", "input/mean/ks", "input/mean/psi", "input/std/ks", "input/std/psi",
        "prediction/class/chi2",
    ]  # fmt: skip
    assert (t.target_false_alarm, t.window_size, t.rounds) == (0.05, 100, 200)
    assert t.measured_false_alarm is not None and t.measured_false_alarm <= 0.05
    clean = [judge(measure(ref, make(100, seed=s), settings=settings), t).drifted for s in range(1, 61)]
    assert sum(clean) <= 8  # target 5 %: about 3 of 60, binomial sd ~1.7
    shifted = [
        judge(measure(ref, make(100, seed=s, shift=0.4), settings=settings), t).drifted for s in range(20)
    ]
    assert all(shifted)


def test_calibrate_refuses_too_few_rounds_a_small_reference_and_a_bad_target() -> None:
    ref = make(300, seed=0)
    with pytest.raises(ConfigError, match=r"expected rounds >= 500. Fix: pass more rounds"):
        calibrate(ref, 100, target_false_alarm=0.01, rounds=200)
    with pytest.raises(DataError, match=r"reference of 300 items and window_size=200.*at least twice"):
        calibrate(ref, 200)
    with pytest.raises(ConfigError, match=r"must be a float in \(0, 1\)\. Got 5"):
        calibrate(ref, 100, target_false_alarm=5)


def test_calibrated_thresholds_are_what_detect_takes() -> None:
    ref = make(1000, seed=0)
    t = calibrate(ref, 100, target_false_alarm=0.1, rounds=50)
    report = detect(ref, make(100, seed=1, shift=1.0), thresholds=t)
    assert report.verdict == "drift" and all(r.rule == "statistic" for r in report.rows)
