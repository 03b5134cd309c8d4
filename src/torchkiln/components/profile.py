"""The spread of a number over the training inputs, and when a served input's number is far from it.

A family's input profile (what ``bundle/profile.json`` records of its training inputs, read at predict
time) describes sizes and lengths with :func:`spread`; :func:`far_outside` is the one rule of "far" that
every family's check uses, so ``kiln predict`` and the server flag the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# An input is far when its number is below min / FAR_FACTOR or above max * FAR_FACTOR of the training
# inputs. The range is the whole training range, not a quantile band, so a value that occurred in training
# is never flagged; the factor 2 leaves room for ordinary variation (a 28-pixel model shown 40-pixel
# scans), and past it the preprocessing resamples by more than twice what training did (an image) or
# truncates what training never did (a text), so the model sees something it was not trained on.
FAR_FACTOR = 2.0
QUANTILES = {"p05": 5, "p50": 50, "p95": 95}


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "p05", "p50", "p95", "max"}`` of ``values`` (integers stay integers); ``{}`` if empty.

    Example:
        >>> spread([8, 8, 9, 7])
        {'min': 7, 'p05': 7, 'p50': 8, 'p95': 9, 'max': 9}
    """
    if not len(values):
        return {}
    a = np.asarray(values, dtype=np.float64)
    integral = bool(np.all(a == np.round(a)))
    method = "nearest" if integral else "linear"  # nearest: a quantile of sizes is a size that occurred
    out = {
        "min": a.min(),
        **{k: np.percentile(a, q, method=method) for k, q in QUANTILES.items()},
        "max": a.max(),
    }
    return {k: int(v) if integral else round(float(v), 4) for k, v in out.items()}


def far_outside(value: float, known: Mapping[str, float]) -> bool:
    """Whether ``value`` is below ``known["min"] / FAR_FACTOR`` or above ``known["max"] * FAR_FACTOR``.

    A spread without min and max (an empty or foreign profile) flags nothing.
    """
    lo, hi = known.get("min"), known.get("max")
    if not isinstance(lo, int | float) or not isinstance(hi, int | float):
        return False
    return value < lo / FAR_FACTOR or value > hi * FAR_FACTOR


def span(known: Mapping[str, float]) -> str:
    """``"8"`` when min == max, else ``"20-40"``: how a warning quotes the training range."""
    lo, hi = known.get("min"), known.get("max")
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def summary_table(
    summaries: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """The numeric fields of ``task.summarize_inputs`` results as one float64 table ``(N, S)``.

    A number is one column (a bool is 0 or 1), a list of numbers one column per element (``channel_means[0]``,
    ``channel_means[1]``...); text (a SHA-256, a timestamp) is left out. Without ``columns``, the columns are
    those every summary has, in the first one's order; with ``columns`` (a reference's), those, NaN where a
    summary lacks one, so logged traffic lines up with the reference it is compared to.

    Example:
        >>> summary_table([{"mean": 0.5, "channel_means": [1, 2], "sha256": "ab"}])
        (['mean', 'channel_means[0]', 'channel_means[1]'], array([[0.5, 1. , 2. ]]))
    """
    rows = [_numeric_fields(s) for s in summaries]
    if columns is None:
        columns = [c for c in rows[0] if all(c in r for r in rows[1:])] if rows else []
    table = np.array([[r.get(c, np.nan) for c in columns] for r in rows], dtype=np.float64)
    return list(columns), table.reshape(len(rows), len(columns))


def _numeric_fields(summary: Mapping[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, bool | int | float):
            out[key] = float(value)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
            out |= {f"{key}[{i}]": float(v) for i, v in enumerate(value)}
    return out
