"""The detector: its rows, the fixed thresholds (Bonferroni), "not enough data", and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.monitor.drift import (
    DriftSettings,
    Signals,
    Thresholds,
    detect,
    judge,
    measure,
)


def make(n: int, *, seed: int, shift: float = 0.0, major: int | None = None) -> Signals:
    rng = np.random.default_rng(seed)
    classes = (
        rng.integers(0, 5, n)
        if major is None
        else np.where(rng.random(n) < 0.8, major, rng.integers(0, 5, n))
    )
    return Signals(
        inputs={"mean": rng.normal(shift, 1.0, n), "std": rng.gamma(4.0, 1.0, n)},
        classes=classes,
        num_classes=5,
        confidence=rng.beta(8, 2, n),
        embeddings=rng.normal(size=(n, 4)) + shift,
    )


REF = make(2000, seed=0)


def test_a_clean_window_has_one_row_per_signal_feature_and_method_and_no_drift() -> None:
    report = detect(REF, make(200, seed=1))
    assert report.verdict == "no drift" and report.drifted is False
    assert [r.key for r in report.rows] == [
        "input/mean/ks", "input/mean/psi", "input/std/ks", "input/std/psi",
        "prediction/class/chi2", "confidence/confidence/ks", "embedding/embedding/mmd",
    ]  # fmt: skip
    assert (report.n_ref, report.n_cur) == (2000, 200)


def test_the_fixed_thresholds_are_bonferroni_over_the_p_value_rows_and_psi_above_0_25() -> None:
    report = detect(REF, make(200, seed=1))
    by_rule = {r.key: (r.rule, r.threshold) for r in report.rows}
    assert by_rule["input/mean/ks"] == ("p_value", pytest.approx(0.01 / 5))  # 5 rows have a p-value
    assert by_rule["input/mean/psi"] == ("statistic", 0.25)


def test_a_shifted_input_and_a_class_mix_are_flagged_on_their_rows() -> None:
    shifted = detect(REF, make(200, seed=2, shift=0.5))
    assert shifted.verdict == "drift"
    assert {r.key for r in shifted.rows if r.drifted} >= {"input/mean/ks", "embedding/embedding/mmd"}
    mix = detect(REF, make(200, seed=3, major=2))
    assert [r.key for r in mix.rows if r.drifted] == ["prediction/class/chi2"]


@pytest.mark.parametrize("n", [0, 1, 49])
def test_a_window_under_the_minimum_is_not_enough_data_never_an_alarm(n: int) -> None:
    window = make(max(n, 1), seed=4, shift=5.0).take(np.arange(n))  # a huge shift, but too few items
    report = detect(REF, window)
    assert report.verdict == "not enough data"
    assert report.drifted is None and report.rows == ()
    assert detect(REF, make(50, seed=4, shift=5.0)).verdict == "drift"  # 50 is enough
    assert detect(REF, make(80, seed=4, shift=5.0), settings=DriftSettings(min_window=100)).verdict == (
        "not enough data"
    )


def test_only_the_signals_both_sides_have_are_compared() -> None:
    window = Signals(inputs={"mean": np.random.default_rng(5).normal(size=100), "brightness": np.ones(100)})
    assert [r.key for r in detect(REF, window).rows] == ["input/mean/ks", "input/mean/psi"]
    with pytest.raises(DataError, match=r"share no signal.*Fix: log the same signals"):
        detect(REF, Signals(inputs={"brightness": np.ones(100)}))


def test_calibrated_thresholds_decide_on_the_statistic_and_must_cover_every_row() -> None:
    window = Signals(inputs={"mean": np.random.default_rng(6).normal(size=100)})
    m = measure(REF, window)
    low = Thresholds(calibrated={"input/mean/ks": 0.0, "input/mean/psi": 100.0})
    report = judge(m, low)
    assert [(r.rule, r.drifted) for r in report.rows] == [("statistic", True), ("statistic", False)]
    with pytest.raises(ConfigError, match=r"no row \['input/mean/psi'\].*Fix: calibrate again"):
        judge(m, Thresholds(calibrated={"input/mean/ks": 0.1}))


def test_reports_and_thresholds_are_json() -> None:
    report = detect(REF, make(100, seed=7))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "no drift" and data["rows"][0]["key"] == "input/mean/ks"
    t = Thresholds(calibrated={"input/mean/ks": 0.2}, target_false_alarm=0.05, window_size=100, rounds=500)
    assert Thresholds.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(ConfigError, match=r"unknown keys \['alhpa'\]"):
        Thresholds.from_dict({"alhpa": 0.1})


def test_signals_of_different_lengths_or_classes_without_a_count_are_refused() -> None:
    with pytest.raises(DataError, match="arrays of different lengths"):
        Signals(inputs={"mean": np.zeros(3)}, confidence=np.zeros(4))
    with pytest.raises(DataError, match=r"classes without num_classes.*Fix: pass num_classes="):
        Signals(classes=np.zeros(3, int))
    with pytest.raises(DataError, match="no signal at all"):
        Signals()


def test_an_unknown_method_is_refused_with_the_choices_and_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"Unknown method 'kss'.*one of ks, psi. Did you mean 'ks'"):
        DriftSettings(input_methods=("kss",))


def test_the_reference_must_hold_a_minimum_window() -> None:
    with pytest.raises(DataError, match="The reference has 10 items; expected at least min_window=50"):
        detect(REF.take(np.arange(10)), make(100, seed=8))


def test_the_domain_classifier_and_class_psi_can_replace_the_defaults() -> None:
    settings = DriftSettings(class_methods=("psi",), embedding_methods=("classifier",))
    report = detect(REF, make(300, seed=9, shift=0.5), settings=settings)
    rows = {r.key: r for r in report.rows}
    assert rows["embedding/embedding/classifier"].drifted
    assert rows["prediction/class/psi"].p_value is None
