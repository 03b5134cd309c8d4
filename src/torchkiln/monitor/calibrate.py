"""Thresholds calibrated per deployment: how far apart a *clean* window and the reference usually are.

Each round splits the reference at random (seeded) into a window of ``window_size`` items and the rest,
and computes every row's statistic of that window against the rest, as :func:`~.drift.detect` would
against the whole reference. The rounds give each row's statistic under "no drift" for this model,
this data and this window size, with no distributional assumption: the tests' own p-values assume
independent items, and PSI has none.

The rows' thresholds are then chosen together: each row's threshold is the (k+1)-th largest of its
``rounds`` clean statistics, with the largest k such that at most ``target_false_alarm`` of the clean
windows exceed a threshold on *any* row. Rows that move together (an image's mean and std) share their
false alarms, so this is less strict than Bonferroni and still holds the window-level rate.

Calibration is slightly conservative: its rounds compare the window with ``n_ref - window_size`` items,
a little noisier than the whole reference that :func:`~.drift.detect` uses.
"""

from __future__ import annotations

import math

import numpy as np

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.monitor.drift import DriftSettings, Signals, Thresholds, embedding_reference, statistics

# The thresholds are read off the tail of the clean rounds: with fewer than this many rounds expected above
# them the tail is a handful of draws and the thresholds too low by chance (with 2, a 1 % target gave
# 6 % false alarms on Fashion-MNIST test traffic), so calibrate refuses rounds * target below it.
MIN_EXCEEDANCES = 5


def null_statistics(
    reference: Signals, window_size: int, *, rounds: int, settings: DriftSettings
) -> tuple[list[str], np.ndarray]:
    """Every row's statistic on ``rounds`` clean windows drawn from the reference.

    Returns:
        The row keys and a (rounds, rows) array of statistics.
    """
    rng = np.random.default_rng(settings.seed)
    # The kernel width is the deployment's, from the whole reference, as detect() will use it.
    full = embedding_reference(reference, settings)
    width = None if full is None else full[1]
    keys: list[str] = []
    table = []
    for _ in range(rounds):
        order = rng.permutation(len(reference))
        window, rest = reference.take(order[:window_size]), reference.take(order[window_size:])
        emb_ref = embedding_reference(rest, settings, bandwidth=width)
        found = statistics(rest, window, settings=settings, embedding_ref=emb_ref, p_values=False)
        keys = [s.key for s in found]
        table.append([s.result.statistic for s in found])
    return keys, np.asarray(table, dtype=np.float64)


def joint_thresholds(null: np.ndarray, target_false_alarm: float) -> tuple[np.ndarray, float]:
    """Per-column thresholds such that at most ``target_false_alarm`` of the rows exceed any of them.

    Args:
        null: (rounds, rows) statistics of clean windows.
        target_false_alarm: the largest share of clean windows allowed to alarm.

    Returns:
        The (rows,) thresholds and the share of ``null``'s rounds that exceed one of them.

    Example:
        >>> null = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])  # two rows, in step
        >>> joint_thresholds(null, 0.25)
        (array([3., 3.]), 0.25)
    """
    ordered = np.sort(null, axis=0)[::-1]  # (rounds, rows), largest first
    best = ordered[0], 0.0  # k = 0: the maxima, nothing exceeds them
    for k in range(1, math.floor(target_false_alarm * len(null)) + 1):
        rate = float(np.mean(np.any(null > ordered[k], axis=1)))
        if rate > target_false_alarm:
            break  # the rate only grows with k
        best = ordered[k], rate
    return best


def calibrate(
    reference: Signals,
    window_size: int,
    *,
    target_false_alarm: float = 0.05,
    rounds: int = 500,
    settings: DriftSettings | None = None,
) -> Thresholds:
    """Thresholds for this deployment: a clean window alarms at most ``target_false_alarm`` of the time.

    Args:
        reference: the reference profile's signals; at least twice ``window_size`` items.
        window_size: the number of items in each window the detector will see.
        target_false_alarm: the share of clean windows allowed to alarm, in (0, 1).
        rounds: clean windows to draw; ``rounds * target_false_alarm`` must be at least 5 (500 rounds
            for a target of 0.01); more rounds make the thresholds steadier (on Fashion-MNIST, 1,000
            rounds at a target of 0.01 gave 2 % false alarms on test traffic, 500 rounds 4 %).
        settings: the same settings :func:`~.drift.detect` will use.

    Returns:
        :class:`~.drift.Thresholds` with one threshold per row, and how they were obtained.

    Raises:
        ConfigError: the target or the rounds are out of range.
        DataError: the reference is smaller than twice the window, or the window under the minimum.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = Signals(inputs={"mean": rng.normal(size=1000)})
        >>> t = calibrate(ref, 100, target_false_alarm=0.05, rounds=100)  # 5 clean windows may alarm
        >>> sorted(t.calibrated)
        ['input/mean/ks', 'input/mean/psi']
    """
    settings = settings or DriftSettings()
    if not 0 < target_false_alarm < 1:
        raise ConfigError(
            f"The 'target_false_alarm' parameter of calibrate must be a float in (0, 1). Got "
            f"{target_false_alarm} instead. Fix: pass e.g. 0.05 (one clean window in 20 alarms)."
        )
    if rounds * target_false_alarm < MIN_EXCEEDANCES:
        raise ConfigError(
            f"calibrate got rounds={rounds} for target_false_alarm={target_false_alarm}, so fewer than "
            f"{MIN_EXCEEDANCES} clean windows may alarm; expected rounds >= "
            f"{math.ceil(MIN_EXCEEDANCES / target_false_alarm)}. Fix: pass more rounds."
        )
    if window_size < settings.min_window or len(reference) < 2 * window_size:
        raise DataError(
            f"calibrate got a reference of {len(reference)} items and window_size={window_size}; expected "
            f"window_size >= min_window={settings.min_window} and a reference at least twice the window. "
            f"Fix: build the reference profile from more held-out data, or calibrate smaller windows."
        )
    keys, null = null_statistics(reference, window_size, rounds=rounds, settings=settings)
    chosen, rate = joint_thresholds(null, target_false_alarm)
    return Thresholds(
        calibrated={k: float(t) for k, t in zip(keys, chosen, strict=True)},
        target_false_alarm=target_false_alarm,
        window_size=window_size,
        rounds=rounds,
        measured_false_alarm=rate,
    )
