"""Conformalized quantile regression (Romano, Patterson & Candès, 2019): calibrate quantile intervals.

A network trained with the pinball loss predicts intervals that are often too narrow on data it has not
seen, most of all on short series where it fits the train windows closely. CQR measures, on a held-out
calibration split, how far each target falls outside its interval,
``E = max(lower - y, y - upper)``, and widens the interval by the ``ceil((n + 1) * nominal) / n``
empirical quantile of ``E``. With exchangeable windows, the calibrated interval covers a new target
with probability at least ``nominal``.

Two departures from the paper:

- An interval is only ever widened. CQR would also narrow an interval that covers too much, but a
  narrowed lower quantile can pass the median, and then the point forecast changes. A too-wide interval
  is left as the network predicted it.
- Forecast windows that overlap are not exchangeable, so the guarantee is approximate here. The
  correction is per horizon step and target, because errors grow with the step.

Example:
    >>> offsets, report = conformal_offsets(quantiles, targets, [0.1, 0.5, 0.9])
    >>> report.coverage_before, report.coverage_after  # on the calibration windows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ConformalReport:
    """What calibration found, for the bundle's metadata.

    Attributes:
        windows: calibration windows (``n``).
        nominal: the outermost interval's nominal coverage, e.g. 0.8 for the 0.1-0.9 interval.
        coverage_before / coverage_after: the share of calibration targets inside that interval.
        mean_offset: the outermost interval's mean half-widening, in the units of the inputs (0: it
            covered enough already).
        capped: True when ``n`` is too small for the exact rank and the largest score was used instead.
    """

    windows: int
    nominal: float
    coverage_before: float
    coverage_after: float
    mean_offset: float
    capped: bool

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return {"method": "conformalized quantile regression", **asdict(self)}


def interval_pairs(levels: Sequence[float]) -> list[tuple[int, int]]:
    """The indices of the intervals among ``levels``, outermost first: a level paired from the outside in
    (first with last, ...) while the lower one is below 0.5 and the upper one above it.

    Example:
        >>> interval_pairs([0.05, 0.25, 0.5, 0.75, 0.95]), interval_pairs([0.5, 0.7, 0.9])
        ([(0, 4), (1, 3)], [])
    """
    pairs = [(k, len(levels) - 1 - k) for k in range(len(levels) // 2)]
    return [(lo, hi) for lo, hi in pairs if levels[lo] < 0.5 < levels[hi]]


def conformal_offsets(
    quantiles: np.ndarray, targets: np.ndarray, levels: Sequence[float]
) -> tuple[np.ndarray, ConformalReport]:
    """Offsets that calibrate every symmetric pair of quantile levels on these windows.

    Args:
        quantiles: ``(W, H, C, Q)`` predicted quantiles, increasing along the last axis.
        targets: ``(W, H, C)`` what happened, in the same units.
        levels: the ``Q`` quantile levels, increasing, paired by :func:`interval_pairs`; the median and
            any unpaired level keep offset 0.

    Returns:
        ``(offsets, report)``: ``offsets`` ``(H, C, Q)`` to add to the quantiles (at most 0 for a lower
        level, the same amount at least 0 for its upper partner, 0 for the median; an outer pair moves
        at least as far as the pairs inside it, so sorted quantiles stay sorted), and a
        :class:`ConformalReport` of the outermost pair.

    Raises:
        ValueError: the shapes disagree, there are no windows, or no pair of levels straddles 0.5.

    Example:
        >>> q = np.array([[[[0.0, 1.0, 2.0]]]] * 4)            # 4 windows, 1 step, 1 target
        >>> y = np.array([[[3.0]], [[1.0]], [[-2.0]], [[1.5]]])
        >>> offsets, _ = conformal_offsets(q, y, [0.25, 0.5, 0.75])  # rank ceil(5 * 0.5) = 3 of 4 scores
        >>> offsets[0, 0]                          # scores sorted -1, -0.5, 1, 2 -> 1 (+ TOLERANCE)
        array([-1.0001,  0.    ,  1.0001])
    """
    q = np.asarray(quantiles, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if q.ndim != 4 or q.shape[:3] != y.shape or q.shape[-1] != len(levels):
        raise ValueError(
            f"quantiles {q.shape} and targets {y.shape} do not match: expected (W, H, C, Q) and (W, H, C) "
            f"with Q = {len(levels)} levels."
        )
    n = q.shape[0]
    pairs = interval_pairs(levels)
    if n == 0 or not pairs:
        raise ValueError(
            f"Cannot calibrate intervals from {n} windows and levels {list(levels)}: expected at least one "
            "window and a pair of levels below and above 0.5, e.g. [0.1, 0.5, 0.9]."
        )
    offsets = np.zeros(q.shape[1:])
    capped = False
    correction = np.zeros(q.shape[1:3])  # (H, C); never negative: an interval is never narrowed
    for lo, hi in reversed(pairs):  # inside out: an outer pair is widened at least as much as the inner
        nominal = levels[hi] - levels[lo]
        scores = np.sort(np.maximum(q[..., lo] - y, y - q[..., hi]), axis=0)  # (W, H, C)
        rank = math.ceil((n + 1) * nominal)  # 1-based
        capped |= rank > n
        correction = np.maximum(scores[min(rank, n) - 1], correction)
        offsets[..., lo], offsets[..., hi] = -correction, correction
    # The target that sets a correction lies exactly on the widened bound; float32 rounding in the model
    # must not put it outside. TOLERANCE is a ten-thousandth of the inputs' unit (a window's spread).
    offsets += np.sign(offsets) * TOLERANCE
    lo, hi = pairs[0]
    after = q + offsets

    def inside(bands: np.ndarray) -> float:
        return float(((y >= bands[..., lo]) & (y <= bands[..., hi])).mean())

    report = ConformalReport(
        windows=n,
        nominal=round(levels[hi] - levels[lo], 6),
        coverage_before=inside(q),
        coverage_after=inside(after),
        mean_offset=float(offsets[..., hi].mean()),
        capped=capped,
    )
    return offsets, report
