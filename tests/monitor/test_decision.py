"""McNemar's exact and mid-p tests against hand-computed binomial sums, the offline gate, and the canary's
sequential test: its bounds by hand and its error rates by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError
from torchkiln.monitor.decision import (
    CanaryTest,
    RetrainSettings,
    canary_verdict,
    judge,
    load_retrain_settings,
    mcnemar,
)


def pairs(both: int, only_champion: int, only_challenger: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * both + [1] * only_champion + [0] * only_challenger + [0] * neither
    z = [1] * both + [0] * only_champion + [1] * only_challenger + [0] * neither
    return np.array(a, bool), np.array(z, bool)


def test_mcnemar_matches_hand_computed_binomial_sums() -> None:
    # b = 1, c = 5, n = 6: P(X >= 5) = (C(6,5) + C(6,6)) / 64 = 7/64; P(X = 5) = 6/64.
    t = mcnemar(*pairs(10, 1, 5, 4))
    assert (t.b, t.c, t.discordant) == (1, 5, 6)
    assert t.p_exact == pytest.approx(7 / 64)
    assert t.p_midp == pytest.approx(1 / 64 + 3 / 64)  # P(X > 5) + P(X = 5) / 2
    assert t.p_exact_two_sided == pytest.approx(14 / 64)
    assert t.p_midp_two_sided == pytest.approx(8 / 64)
    # b = 2, c = 8, n = 10: P(X >= 8) = (45 + 10 + 1) / 1024; P(X = 8) = 45 / 1024.
    t = mcnemar(*pairs(0, 2, 8, 0))
    assert t.p_exact == pytest.approx(56 / 1024)
    assert t.p_midp == pytest.approx(11 / 1024 + 22.5 / 1024)
    # c < b: the challenger is worse, the one-sided p is large.
    t = mcnemar(*pairs(0, 5, 1, 0))
    assert t.p_exact == pytest.approx(63 / 64) and t.p_exact_two_sided == pytest.approx(14 / 64)


def test_no_discordant_items_is_no_evidence() -> None:
    t = mcnemar(*pairs(20, 0, 0, 5))
    assert (t.p_exact, t.p_midp, t.p_exact_two_sided, t.p_midp_two_sided) == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_the_gate_needs_significance_and_the_minimum_effect_and_enough_items() -> None:
    passed, _ = judge(*pairs(10, 0, 12, 8), RetrainSettings())
    assert passed.passed and passed.reason.startswith("significantly better")
    weak, _ = judge(*pairs(10, 1, 5, 14), RetrainSettings())  # mid-p 1/16 >= 0.05
    assert not weak.passed and weak.reason.startswith("not significantly better")
    small, _ = judge(*pairs(10, 0, 12, 8), RetrainSettings(min_effect=0.7))
    assert not small.passed and "min_effect 70.00 points" in small.reason
    few, _ = judge(*pairs(5, 0, 9, 0), RetrainSettings(min_test_items=20))
    assert not few.passed and "fewer than min_test_items (20)" in few.reason
    exact, _ = judge(*pairs(10, 1, 5, 14), RetrainSettings(test="exact", alpha=0.2))
    assert exact.passed and exact.p_value == pytest.approx(7 / 64)


def test_the_canary_test_has_walds_bounds_and_log_likelihood_ratio() -> None:
    t = CanaryTest(p0=0.001, p1=0.05, alpha=0.05, beta=0.05)
    assert t.upper == pytest.approx(np.log(19)) and t.lower == pytest.approx(-np.log(19))
    # 2 failures in 40 requests, by hand: 2 ln(50) + 38 ln(0.95 / 0.999)
    assert t.llr(2, 40) == pytest.approx(2 * np.log(50) + 38 * np.log(0.95 / 0.999))
    # Clean requests pass after ceil(ln 19 / ln(0.999 / 0.95)) = 59; one early failure rolls back.
    assert [t.decide(0, n) for n in (58, 59)] == [None, "pass"]
    assert (t.decide(1, 19), t.decide(1, 20), t.decide(1, 21)) == ("fail", "fail", None)


@pytest.mark.parametrize(("rate", "outcome", "bound"), [(0.001, "fail", 0.05), (0.05, "pass", 0.05)])
def test_the_canary_test_keeps_its_risks_by_simulation(rate: float, outcome: str, bound: float) -> None:
    """2,000 simulated canaries at the healthy rate are rolled back, and 2,000 at the failing rate are
    passed, at most as often as alpha and beta say (Wald's bounds are conservative)."""
    s = RetrainSettings(canary_min_requests=1, canary_max_requests=5000, canary_max_p99_ms=None)
    rng = np.random.default_rng(0)
    wrong = 0
    for _ in range(2000):
        failures = np.cumsum(rng.random(5000) < rate)
        for n in range(1, 5001):
            decision, _ = canary_verdict(int(failures[n - 1]), n, None, s)
            if decision is not None:
                wrong += decision == outcome
                break
    assert wrong / 2000 <= bound


def test_the_canary_verdict_waits_for_its_minimum_then_judges_p99_and_the_cap() -> None:
    s = RetrainSettings(canary_min_requests=30, canary_max_requests=80, canary_max_p99_ms=200)
    assert canary_verdict(0, 29, None, s) == (None, "")
    assert canary_verdict(0, 30, 250.0, s) == (
        "fail",
        "p99 250.0 ms > canary_max_p99_ms 200.0 on 30 requests",
    )
    decision, why = canary_verdict(0, 59, 20.0, s)
    assert decision == "pass" and why.startswith("0 of 59 canary requests failed (0.000): healthy")
    # Undecided at the cap (1 failure in 80 keeps the ratio between the bounds): the observed rate decides.
    assert CanaryTest.of(s).decide(1, 80) is None
    assert canary_verdict(1, 80, 20.0, s) == (
        "pass",
        "1 of 80 canary requests failed (0.013) <= canary_max_error_rate 0.05 at canary_max_requests",
    )
    decision, why = canary_verdict(2, 3, None, s)  # failures count before the minimum
    assert decision == "fail" and why.startswith("2 of 3 canary requests failed (0.667): the sequential test")


def test_canary_rates_out_of_order_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_retrain_settings(overrides=["canary_good_error_rate=0.1", "canary_max_error_rate=0.05"])
    assert (
        "canary_good_error_rate (0.1) must be below canary_max_error_rate (0.05): the sequential test tells "
        "the two apart" in str(err.value)
    )
