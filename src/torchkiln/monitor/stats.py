"""Two-sample statistics for drift: a reference sample against a window of served traffic.

Each function takes the reference first and the current window second and returns a :class:`TestResult`.
The statistics grow with the shift; ``p_value`` is None where the statistic has no null distribution of its
own (PSI, whose threshold is a convention or is calibrated, see :mod:`torchkiln.monitor.calibrate`).

scipy is imported inside the functions that need it (the ``monitor`` extra), so importing this module
costs nothing. MMD is written in torch because its permutation test is one matrix product over all
permutations at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from torchkiln.core.errors import DataError

# PSI: a bin that is empty in one sample counts as this fraction of it, so log(p / q) stays finite.
# 1e-4 is the usual choice; the term of such a bin is then at most about p * ln(p / 1e-4), e.g. 0.69 for a
# reference bin of 10 %, so one emptied bin among 10 reads as a large shift, which it is.
PSI_FLOOR = 1e-4
PSI_BINS = 10


@dataclass(frozen=True)
class TestResult:
    """The outcome of one two-sample statistic.

    Attributes:
        statistic: larger means further apart (KS D, chi-square, PSI, MMD², AUC).
        p_value: the probability of a statistic at least this large when both samples come from one
            distribution, or None for statistics without a test (PSI).
        n_ref: size of the reference sample.
        n_cur: size of the current window.
    """

    __test__ = False  # not a pytest test class, despite the name

    statistic: float
    p_value: float | None
    n_ref: int
    n_cur: int


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0 or not np.all(np.isfinite(a)):
        raise DataError(
            f"The {name} sample has shape {a.shape} with {int((~np.isfinite(a)).sum())} non-finite values; "
            f"expected a non-empty 1-D array of finite numbers. Fix: pass one finite number per item."
        )
    return a


def ks_test(reference: np.ndarray, current: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov: the largest gap between the two empirical CDFs, and its p-value.

    Args:
        reference: 1-D sample of the reference distribution.
        current: 1-D sample of the window.

    Returns:
        D in [0, 1] and the two-sided p-value of ``scipy.stats.ks_2samp`` (exact for these sizes).

    Raises:
        DataError: a sample is empty, not 1-D, or holds NaN or infinity.

    Example:
        >>> ks_test(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.5, 4.5])).statistic
        0.75
    """
    from scipy import stats

    ref, cur = _vector(reference, "reference"), _vector(current, "current")
    res = stats.ks_2samp(ref, cur)
    return TestResult(float(res.statistic), float(res.pvalue), len(ref), len(cur))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The KS distance D alone, in NumPy: the largest gap between the two empirical CDFs.

    The same number as ``scipy.stats.ks_2samp(...).statistic`` at a fraction of its cost, for calibration,
    which needs thousands of statistics and no p-values.
    """
    ref, cur = np.sort(_vector(reference, "reference")), np.sort(_vector(current, "current"))
    points = np.concatenate([ref, cur])  # the CDFs only jump at sample values
    gap = np.searchsorted(ref, points, side="right") / len(ref) - np.searchsorted(
        cur, points, side="right"
    ) / len(cur)
    return float(np.abs(gap).max())


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges at the reference's quantiles 1/bins, ..., (bins-1)/bins, duplicates removed.

    The outer bins are open (to -inf and +inf), so a window value outside the reference range still
    lands in a bin. A value equal to an edge goes to the bin on its right. Ties (a confidence stuck at
    1.0) merge bins, so there may be fewer than ``bins``.
    """
    if bins < 2:
        raise DataError(f"PSI needs at least 2 bins; got {bins}. Fix: pass bins >= 2 (default {PSI_BINS}).")
    ref = _vector(reference, "reference")
    return np.unique(np.quantile(ref, np.arange(1, bins) / bins))


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray, floor: float) -> float:
    p = np.maximum(ref_counts / ref_counts.sum(), floor)
    q = np.maximum(cur_counts / cur_counts.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(
    reference: np.ndarray, current: np.ndarray, *, bins: int = PSI_BINS, floor: float = PSI_FLOOR
) -> TestResult:
    """Population stability index over quantile bins of the reference: sum of (q - p) * ln(q / p).

    ``p`` and ``q`` are the fractions of the reference and the window in each bin; bins come from
    :func:`quantile_edges`, so each holds about 1/bins of the reference. A fraction below ``floor``
    counts as ``floor`` (see ``PSI_FLOOR``). Conventional reading: < 0.1 stable, 0.1-0.25 moderate,
    > 0.25 a significant shift.

    Args:
        reference: 1-D reference sample; it alone defines the bins.
        current: 1-D window sample.
        bins: number of quantile bins (fewer when the reference has ties).
        floor: the smallest fraction a bin counts for.

    Returns:
        PSI (>= 0) and no p-value.

    Example:
        >>> round(psi(np.arange(100.0), np.arange(25.0, 125.0), bins=2).statistic, 3)  # 25 % | 75 %
        0.275
    """
    ref, cur = _vector(reference, "reference"), _vector(current, "current")
    edges = quantile_edges(ref, bins)
    n_bins = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n_bins)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=n_bins)
    return TestResult(_psi_from_counts(ref_counts, cur_counts, floor), None, len(ref), len(cur))


def _class_counts(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) == 0 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(
            f"The {name} classes have dtype {a.dtype} and shape {a.shape}; expected a non-empty 1-D integer "
            f"array. Fix: pass the predicted class index of each item."
        )
    if a.min() < 0 or a.max() >= num_classes:
        raise DataError(
            f"The {name} classes range from {a.min()} to {a.max()}; expected 0..{num_classes - 1} "
            f"({num_classes} classes). Fix: pass class indices, and the model's number of classes."
        )
    return np.bincount(a, minlength=num_classes)


def chi2_test(reference: np.ndarray, current: np.ndarray, *, num_classes: int) -> TestResult:
    """Chi-square test of homogeneity of two samples of class indices (a 2 x k contingency table).

    Classes absent from both samples are left out (they carry no information and would divide by zero);
    a class absent from one sample only is kept, and counts towards the statistic. Degrees of freedom:
    the number of classes kept minus one. No continuity correction.

    Args:
        reference: int array of reference classes in ``0..num_classes-1``.
        current: int array of window classes.
        num_classes: the model's number of classes.

    Returns:
        The chi-square statistic and its p-value (1.0 when only one class occurs at all).

    Example:
        >>> r = chi2_test(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), num_classes=3)
        >>> round(r.statistic, 3), round(r.p_value, 3)
        (2.667, 0.102)
    """
    from scipy import stats

    counts = np.stack(
        [_class_counts(reference, num_classes, "reference"), _class_counts(current, num_classes, "current")]
    ).astype(np.float64)  # (2, k)
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[1] < 2:
        return TestResult(0.0, 1.0, int(counts[0].sum()), int(counts[1].sum()))
    expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / counts.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    p_value = float(stats.chi2.sf(statistic, counts.shape[1] - 1))
    return TestResult(statistic, p_value, int(counts[0].sum()), int(counts[1].sum()))


def class_psi(
    reference: np.ndarray, current: np.ndarray, *, num_classes: int, floor: float = PSI_FLOOR
) -> TestResult:
    """PSI over classes: each class is a bin; fractions below ``floor`` count as ``floor``.

    Example:
        >>> round(class_psi(np.array([0, 1]), np.array([0, 0]), num_classes=2).statistic, 3)
        4.604
    """
    ref_counts = _class_counts(reference, num_classes, "reference")
    cur_counts = _class_counts(current, num_classes, "current")
    stat = _psi_from_counts(ref_counts, cur_counts, floor)
    return TestResult(stat, None, len(reference), len(current))


def _matrix(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if t.ndim != 2 or len(t) < 2 or not bool(torch.isfinite(t).all()):
        raise DataError(
            f"The {name} embeddings have shape {tuple(t.shape)}; expected a 2-D array (items, dims) of "
            f"finite numbers with at least 2 rows. Fix: pass one embedding row per item."
        )
    return t


def median_bandwidth(reference: np.ndarray, *, max_items: int = 1000, seed: int = 0) -> float:
    """The median heuristic: the median pairwise Euclidean distance of (up to ``max_items``) reference rows.

    Computed from the reference alone, so a deployment's kernel stays fixed from window to window.
    """
    x = _matrix(reference, "reference")
    if len(x) > max_items:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_items]]
    d = torch.cdist(x, x)
    upper = d[torch.triu_indices(len(x), len(x), offset=1).unbind()]
    sigma = float(upper.median())
    return sigma if sigma > 0 else 1.0  # all rows equal: any width gives the same (zero) MMD


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``exp(-|x - y|² / (2 bandwidth²))``; (n, d), (m, d) -> (n, m)."""
    # |x|² + |y|² - 2 x·y in one product: 5x faster than cdist (a square root, then its square).
    d2 = torch.addmm(x.square().sum(1, keepdim=True), x, y.T, alpha=-2.0).add_(y.square().sum(1))  # (n, m)
    return d2.clamp_(min=0.0).mul_(-0.5 / (bandwidth * bandwidth)).exp_()


def mmd2_from_kernel(kernel: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² of the split(s) of a pooled sample given by ``member``.

    Args:
        kernel: (N, N) kernel of the pooled sample, ones on the diagonal (RBF).
        member: (N,) or (N, B) of 1.0 for the first sample and 0.0 for the second; B splits at once.

    Returns:
        () or (B,) MMD² estimates (U-statistics, so they can be slightly negative).
    """
    x = member.to(kernel.dtype)
    y = 1.0 - x
    n, m = x.sum(0), y.sum(0)
    kx = kernel @ x  # (N,) or (N, B)
    s_xx, s_xy = (x * kx).sum(0), (y * kx).sum(0)
    s_yy = kernel.sum() - 2.0 * s_xy - s_xx
    # The diagonal (k(z, z) = 1) is left out of the within-sample sums: n and m of them.
    return (s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1)) - 2.0 * s_xy / (n * m)


def _pair(reference: np.ndarray, current: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _matrix(reference, "reference"), _matrix(current, "current")
    if x.shape[1] != y.shape[1]:
        raise DataError(
            f"The reference embeddings have {x.shape[1]} dimensions and the current ones {y.shape[1]}; "
            f"expected the same. Fix: reduce both with the same projection (the reference profile's PCA)."
        )
    return x, y


def _pooled(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    # float32 is enough: matrix products sum blockwise, and the error (~1e-7 of a term) is far below any
    # MMD² worth seeing; float64 took 2-4x as long.
    pooled = torch.cat([x, y])
    member = (torch.arange(len(pooled)) < len(x)).float()  # (N,) 1 for the reference rows
    return rbf_kernel(pooled, pooled, bandwidth), member  # (N, N), (N,)


def mmd2(reference: np.ndarray, current: np.ndarray, *, bandwidth: float) -> float:
    """Unbiased MMD² (RBF kernel of the given width) without a p-value, for calibration."""
    x, y = _pair(reference, current)
    return float(mmd2_from_kernel(*_pooled(x, y, bandwidth)))


def mmd_test(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    bandwidth: float | None = None,
    permutations: int = 200,
    seed: int = 0,
) -> TestResult:
    """Maximum mean discrepancy (RBF kernel) with a permutation p-value.

    The p-value is ``(1 + #{permuted MMD² >= observed}) / (1 + permutations)``: the pooled sample is
    split at random ``permutations`` times (seeded), all of them in one matrix product. Cost: one
    (N, N) kernel and an (N, N) @ (N, permutations) product, N = n_ref + n_cur; about 50 ms for
    N = 700, d = 8 and 500 permutations on 2 busy CPU cores.

    Args:
        reference: (n_ref, d) reference embeddings.
        current: (n_cur, d) window embeddings.
        bandwidth: the kernel width; None takes :func:`median_bandwidth` of the reference.
        permutations: number of random splits; the smallest p-value is 1 / (permutations + 1).
        seed: seed of the splits.

    Returns:
        Unbiased MMD² and its permutation p-value.

    Raises:
        DataError: an array is not 2-D, has fewer than 2 rows, non-finite values, or the widths differ.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> mmd_test(rng.normal(size=(300, 4)), rng.normal(size=(100, 4)) + 1.0).p_value < 0.01
        True
    """
    x, y = _pair(reference, current)
    if permutations < 1:
        raise DataError(f"mmd_test needs permutations >= 1; got {permutations}. Fix: pass e.g. 200.")
    width = bandwidth if bandwidth is not None else median_bandwidth(reference, seed=seed)
    kernel, member = _pooled(x, y, width)
    observed = mmd2_from_kernel(kernel, member)
    null = mmd2_from_kernel(kernel, _splits(len(kernel), len(x), permutations, seed))  # (B,)
    p_value = (1 + int((null >= observed).sum())) / (1 + permutations)
    return TestResult(float(observed), p_value, len(x), len(y))


@functools.lru_cache(maxsize=4)
def _splits(total: int, n: int, permutations: int, seed: int) -> torch.Tensor:
    """(total, permutations) of 1.0 where item i is in the first sample of random split b.

    Cached: a watch loop tests windows of one size against one reference with one seed, so the same
    splits serve every check (and they cost more to draw than the test itself).
    """
    first = np.arange(total) < n
    splits = np.random.default_rng(seed).permuted(np.tile(first, (permutations, 1)), axis=1)  # (B, N)
    return torch.from_numpy(np.ascontiguousarray(splits.T)).float()


def classifier_auc(
    reference: np.ndarray, current: np.ndarray, *, seed: int = 0, steps: int = 100
) -> TestResult:
    """Domain classifier: how well a logistic regression tells window rows from reference rows.

    Each sample is split in halves (seeded); a logistic regression (L-BFGS, standardised inputs) is fit on
    one half of each and scored on the other. The statistic is the held-out ROC AUC (0.5: no difference);
    the p-value is the one-sided Mann-Whitney U test of AUC > 0.5 on the held-out scores.

    Args:
        reference: (n_ref, d) reference rows; current: (n_cur, d) window rows, both with >= 4 rows.
        seed: seed of the halves.
        steps: L-BFGS iterations.

    Returns:
        The held-out AUC and its p-value.
    """
    from scipy import stats

    x, y = _matrix(reference, "reference").double(), _matrix(current, "current").double()
    if len(x) < 4 or len(y) < 4 or x.shape[1] != y.shape[1]:
        raise DataError(
            f"classifier_auc got shapes {tuple(x.shape)} and {tuple(y.shape)}; expected at least 4 rows "
            f"each and equal widths. Fix: pass larger samples reduced with the same projection."
        )
    gen = torch.Generator().manual_seed(seed)
    px, py = torch.randperm(len(x), generator=gen), torch.randperm(len(y), generator=gen)
    hx, hy = len(x) // 2, len(y) // 2
    fit_x, test_x = x[px[:hx]], x[px[hx:]]
    fit_y, test_y = y[py[:hy]], y[py[hy:]]
    features = torch.cat([fit_x, fit_y])
    mean, std = features.mean(0), features.std(0).clamp_min(1e-8)
    target = torch.cat([torch.zeros(hx), torch.ones(hy)]).double()
    weight = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    # Classes are weighted to balance, so a small window is not drowned by a large reference.
    sample_weight = torch.where(target == 1, len(target) / (2 * hy), len(target) / (2 * hx))
    opt = torch.optim.LBFGS([weight], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (features - mean) / std @ weight[:-1] + weight[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=sample_weight)
        loss = loss + 1e-3 * weight[:-1].square().sum()  # a little L2, so separable data still converges
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        score_x = ((test_x - mean) / std @ weight[:-1]).numpy()
        score_y = ((test_y - mean) / std @ weight[:-1]).numpy()
    u = stats.mannwhitneyu(score_y, score_x, alternative="greater")
    auc = float(u.statistic) / (len(score_x) * len(score_y))
    return TestResult(auc, float(u.pvalue), len(x), len(y))


def bonferroni(alpha: float, tests: int) -> float:
    """The per-test level that keeps the chance of any false alarm among ``tests`` tests at most ``alpha``."""
    return alpha / max(tests, 1)


__all__ = [
    "PSI_BINS",
    "PSI_FLOOR",
    "TestResult",
    "bonferroni",
    "chi2_test",
    "class_psi",
    "classifier_auc",
    "ks_statistic",
    "ks_test",
    "median_bandwidth",
    "mmd2",
    "mmd2_from_kernel",
    "mmd_test",
    "psi",
    "quantile_edges",
    "rbf_kernel",
]
