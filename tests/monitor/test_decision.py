"""McNemar's exact and mid-p tests against hand-computed binomial sums, and the offline gate."""

from __future__ import annotations

import numpy as np
import pytest

from torchkiln.monitor.decision import RetrainSettings, judge, mcnemar


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
