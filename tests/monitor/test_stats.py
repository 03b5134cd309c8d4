"""Each drift statistic against scipy, or against a hand computation, on hand-made samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sp

from torchkiln.core.errors import DataError
from torchkiln.monitor import stats


def test_ks_matches_scipy_and_the_hand_computed_distance() -> None:
    ref, cur = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.5, 4.5])
    res = stats.ks_test(ref, cur)
    assert res.statistic == 0.75  # at 3: the reference CDF is 3/4, the window's 0
    assert res.p_value == pytest.approx(sp.ks_2samp(ref, cur).pvalue)
    assert (res.n_ref, res.n_cur) == (4, 2)


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_the_numpy_ks_distance_equals_scipys_with_ties(shift: float) -> None:
    rng = np.random.default_rng(1)
    ref = np.round(rng.normal(size=500), 1)  # rounded: many ties
    cur = np.round(rng.normal(shift, size=80), 1)
    assert stats.ks_statistic(ref, cur) == pytest.approx(sp.ks_2samp(ref, cur).statistic, abs=1e-12)


def test_psi_by_hand_with_quantile_bins() -> None:
    ref = np.arange(100.0)  # quartile edges 24.75, 49.5, 74.25: 25 items per bin
    cur = np.array([0.0] * 10 + [30.0] * 10 + [60.0] * 10 + [90.0] * 20)  # 20 %, 20 %, 20 %, 40 %
    p, q = np.array([0.25] * 4), np.array([0.2, 0.2, 0.2, 0.4])
    expected = float(np.sum((q - p) * np.log(q / p)))
    assert stats.psi(ref, cur, bins=4).statistic == pytest.approx(expected)
    assert stats.psi(ref, cur, bins=4).p_value is None


def test_psi_floors_an_empty_bin_and_is_zero_for_the_same_sample() -> None:
    ref = np.arange(100.0)
    cur = np.arange(50.0)  # the upper half of the bins is empty
    p, q = np.array([0.5, 0.5]), np.array([1.0, stats.PSI_FLOOR])
    assert stats.psi(ref, cur, bins=2).statistic == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert stats.psi(ref, ref).statistic == 0.0


def test_psi_bins_merge_on_ties_and_values_outside_the_reference_land_in_the_outer_bins() -> None:
    ref = np.array([1.0] * 90 + [0.5] * 10)  # a confidence stuck at 1.0: deciles collapse
    assert len(stats.quantile_edges(ref)) == 2
    assert np.isfinite(stats.psi(ref, np.array([-5.0, 7.0, 1.0])).statistic)


def test_chi2_matches_scipys_contingency_test_without_correction() -> None:
    ref = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])
    cur = np.repeat([0, 1, 2, 3], [20, 20, 20, 40])
    res = stats.chi2_test(ref, cur, num_classes=4)
    chi2, p, *_ = sp.chi2_contingency(np.array([[50, 30, 15, 5], [20, 20, 20, 40]]), correction=False)
    assert res.statistic == pytest.approx(chi2)
    assert res.p_value == pytest.approx(p)


def test_chi2_drops_classes_absent_from_both_and_keeps_those_absent_from_one() -> None:
    ref = np.repeat([0, 1], [30, 30])
    cur = np.repeat([0, 2], [10, 10])  # class 2 never in the reference, class 3 nowhere
    res = stats.chi2_test(ref, cur, num_classes=4)
    chi2, p, dof, _ = sp.chi2_contingency(np.array([[30, 30, 0], [10, 0, 10]]), correction=False)
    assert dof == 2
    assert (res.statistic, res.p_value) == (pytest.approx(chi2), pytest.approx(p))
    one = stats.chi2_test(np.zeros(5, int), np.zeros(3, int), num_classes=2)
    assert (one.statistic, one.p_value) == (0.0, 1.0)


def test_class_psi_by_hand() -> None:
    ref, cur = np.repeat([0, 1, 2], [50, 25, 25]), np.repeat([0, 1], [80, 20])  # class 2 emptied
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.8, 0.2, stats.PSI_FLOOR])
    expected = float(np.sum((q - p) * np.log(q / p)))
    assert stats.class_psi(ref, cur, num_classes=3).statistic == pytest.approx(expected)


def test_class_inputs_out_of_range_say_what_to_pass() -> None:
    with pytest.raises(DataError, match=r"current classes range from 5 to 5; expected 0..2 \(3 classes\)"):
        stats.chi2_test(np.array([0, 1]), np.array([5]), num_classes=3)
    with pytest.raises(DataError, match="expected a non-empty 1-D integer array"):
        stats.chi2_test(np.array([0.5]), np.array([1]), num_classes=3)


def test_a_non_finite_sample_is_refused() -> None:
    with pytest.raises(DataError, match="1 non-finite values; expected a non-empty 1-D array"):
        stats.ks_test(np.array([1.0, np.nan]), np.array([1.0]))


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray, width: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * width * width))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_is_the_unbiased_estimate_written_out_as_loops() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, size=(9, 3))
    assert stats.mmd2(x, y, bandwidth=1.5) == pytest.approx(_mmd2_by_loops(x, y, 1.5), abs=1e-5)
    assert stats.mmd_test(x, y, bandwidth=1.5).statistic == pytest.approx(_mmd2_by_loops(x, y, 1.5), abs=1e-5)


def test_the_median_bandwidth_is_the_median_pairwise_distance() -> None:
    x = np.array([[0.0], [1.0], [3.0]])  # distances 1, 2, 3
    assert stats.median_bandwidth(x) == pytest.approx(2.0)
    assert stats.median_bandwidth(np.zeros((4, 2))) == 1.0


def test_the_rbf_kernel_matches_cdist() -> None:
    x, y = torch.randn(20, 4), torch.randn(7, 4)
    expected = torch.exp(-torch.cdist(x, y).square() / (2 * 0.7**2))
    torch.testing.assert_close(stats.rbf_kernel(x, y, 0.7), expected, atol=1e-6, rtol=1e-5)


def test_mmd_permutation_p_values_are_roughly_uniform_under_the_null() -> None:
    # 200 null pairs: a calibrated test rejects at 5 % about 10 times (binomial sd ~3); the p-values'
    # mean is near 1/2.
    rng = np.random.default_rng(0)
    p = np.array(
        [
            stats.mmd_test(
                rng.normal(size=(60, 4)), rng.normal(size=(40, 4)), permutations=99, seed=s
            ).p_value
            for s in range(200)
        ]
    )
    assert 2 <= int((p <= 0.05).sum()) <= 20
    assert 0.42 <= p.mean() <= 0.58
    assert sp.kstest(p, "uniform").pvalue > 0.01


def test_mmd_finds_a_shift_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(100, 8))
    y[:, 0] += 1.0
    res = stats.mmd_test(x, y, permutations=200)
    assert res.p_value == 1 / 201
    same = rng.normal(size=(100, 8))
    assert stats.mmd_test(x, same, seed=3) == stats.mmd_test(x, same, seed=3)


def test_mmd_refuses_embeddings_of_different_widths() -> None:
    with pytest.raises(DataError, match="4 dimensions and the current ones 3; expected the same"):
        stats.mmd_test(np.zeros((5, 4)), np.zeros((5, 3)))


def test_the_domain_classifier_sees_a_shift_and_not_its_absence() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    shifted = stats.classifier_auc(x, rng.normal(size=(200, 4)) + np.array([1.0, 0, 0, 0]))
    same = stats.classifier_auc(x, rng.normal(size=(200, 4)))
    assert shifted.statistic > 0.7 and shifted.p_value < 1e-6
    assert 0.4 < same.statistic < 0.6 and same.p_value > 0.01


def test_bonferroni_divides_alpha_by_the_number_of_tests() -> None:
    assert stats.bonferroni(0.01, 5) == pytest.approx(0.002)
    assert stats.bonferroni(0.01, 0) == 0.01
