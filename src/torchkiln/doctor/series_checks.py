"""A time series' checks: its order (sorted, unique, regular, complete) and copies of training stretches in
the val and test targets.

Training refuses an unsorted series, a repeated or off-grid timestamp, and (with ``data.fill: raise``) a
missing timestamp or value; these checks count every such row where that refusal names the first. Val and
test windows read their inputs back into train by design (the history known at forecast time), so only
their targets are compared.
"""

from __future__ import annotations

import numpy as np

from torchkiln.components.doctor_data import SeriesView
from torchkiln.components.duplicates import repeated_windows
from torchkiln.doctor.findings import ITEMS, Finding, plural, share
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import Subject


def _series(s: Subject) -> SeriesView | None:
    return s.view.series if s.view is not None else None


def iso(t: np.datetime64) -> str:
    """ISO 8601 to the second; a date alone at midnight."""
    return str(np.datetime64(t, "s")).removesuffix("T00:00:00")


def _s(n: int, verb: str) -> str:
    """``verb`` agreeing with a count: 1 timestamp comes, 2 timestamps come."""
    return verb + ("es" if verb.endswith("s") else "s") if n == 1 else verb


def _runs(mask: np.ndarray) -> tuple[int, int]:
    """(runs of consecutive True, the longest) in a 1-d bool array."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return 0, 0
    breaks = np.flatnonzero(np.diff(idx) > 1)
    lengths = np.diff(np.r_[0, breaks + 1, len(idx)])
    return len(lengths), int(lengths.max())


def _order(v: SeriesView) -> list[Finding]:
    out = []
    back = np.flatnonzero(np.diff(v.time) < np.timedelta64(0)) + 1
    if len(back):
        i = int(back[0])
        out.append(
            Finding(
                "series-order",
                "error",
                f"{plural(len(back), 'timestamp')} {_s(len(back), 'come')} before the row above, e.g. "
                f"{v.where(i)}: {iso(v.time[i])} after {iso(v.time[i - 1])}. Training reads the rows in file "
                "order.",
                "Sort the file by time (pandas: df.sort_values(time_column)).",
                count=len(back),
                items=tuple(v.where(int(i)) for i in back[:ITEMS]),
            )
        )
    stamps, first, counts = np.unique(v.time, return_index=True, return_counts=True)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated):
        j = int(repeated[0])
        out.append(
            Finding(
                "series-order",
                "error",
                f"{plural(len(repeated), 'timestamp')} {_s(len(repeated), 'appear')} more than once "
                f"({int(counts[repeated].sum()):,} rows), e.g. {iso(stamps[j])} at {v.where(int(first[j]))}: "
                f"one step cannot have two values.",
                "Aggregate each timestamp's rows (e.g. average them) or drop the copies.",
                count=len(repeated),
                items=tuple(iso(t) for t in stamps[repeated[:ITEMS]]),
            )
        )
    return out


def _grid(v: SeriesView) -> list[Finding]:
    if v.grid is None:
        return []
    out = []
    stamps = np.unique(v.time)
    off = stamps[~np.isin(stamps, v.grid)]
    if len(off):
        out.append(
            Finding(
                "series-order",
                "error",
                f"{plural(len(off), 'timestamp')} {_s(len(off), 'fall')} between the steps of the {v.freq} "
                f"grid from {iso(v.grid[0])}, e.g. {iso(off[0])}: the steps are irregular.",
                f"Set data.freq to the series' frequency (it is {v.freq} now), or move those rows onto it.",
                count=len(off),
                items=tuple(iso(t) for t in off[:ITEMS]),
            )
        )
    missing = ~np.isin(v.grid, stamps)
    if missing.any():
        gaps, longest = _runs(missing)
        first = iso(v.grid[np.flatnonzero(missing)[0]])
        refused = v.fill == "raise"
        out.append(
            Finding(
                "series-order",
                "error" if refused else "info",
                f"{share(int(missing.sum()), len(v.grid))} timestamps at {v.freq} are missing, in "
                f"{plural(gaps, 'gap')} (the longest {plural(longest, 'step')}), the first {first}"
                + ("." if refused else f"; data.fill: {v.fill} fills them for training."),
                "Add the rows, or set data.fill: interpolate (or ffill)."
                if refused
                else "Check that filling suits these gaps: a long gap filled in is not data.",
                count=int(missing.sum()),
            )
        )
    return out


def _empty(v: SeriesView) -> list[Finding]:
    out = []
    for j, column in enumerate(v.columns):
        rows = np.flatnonzero(np.isnan(v.values[:, j]))
        if not len(rows):
            continue
        refused = v.fill == "raise"
        out.append(
            Finding(
                "series-order",
                "error" if refused else "info",
                f"column '{column}': {share(len(rows), len(v.values))} values are empty, e.g. "
                f"{v.where(int(rows[0]))}" + ("." if refused else f"; data.fill: {v.fill} fills them."),
                "Fill the cells in, or set data.fill: interpolate (or ffill)." if refused else "",
                count=len(rows),
                items=tuple(v.where(int(i)) for i in rows[:ITEMS]),
            )
        )
    return out


def _filled_targets(v: SeriesView) -> list[Finding]:
    if v.filled is None:
        return []
    out = []
    for split in ("val", "test"):
        lo, hi = v.bounds.get(split, (0, 0))
        k = int(v.filled[lo:hi].sum())
        if k:
            out.append(
                Finding(
                    "series-order",
                    "warning",
                    f"{split}: {share(k, hi - lo)} target steps are filled in ({v.fill}), not observed: the "
                    f"{split} score partly grades the filling.",
                    "End the series before the gaps (data.end), or fill them from a real source.",
                    count=k,
                )
            )
    return out


@check("series-order")
def series_order(s: Subject) -> list[Finding]:
    """A series' timestamps increase, none repeats, all sit on one frequency's grid, nothing is missing."""
    v = _series(s)
    if v is None:
        return []
    return _order(v) + _grid(v) + _empty(v) + _filled_targets(v)


@check("series-overlap")
def series_overlap(s: Subject) -> list[Finding]:
    """No val or test forecast target repeats a stretch of the train series value for value (copied rows)."""
    v = _series(s)
    if v is None or v.targets is None or "train" not in v.bounds:
        return []
    out = []
    for split in ("val", "test"):
        lo, hi = v.bounds.get(split, (0, 0))
        starts, sources = repeated_windows(v.targets, v.bounds["train"], (lo, hi), v.horizon)
        if not len(starts):
            continue
        when = (lambda r: iso(v.grid[r])) if v.grid is not None else (lambda r: f"row {r}")
        items = tuple(f"{when(a)} = {when(b)}" for a, b in zip(starts[:ITEMS], sources[:ITEMS], strict=True))
        out.append(
            Finding(
                "series-overlap",
                "warning",
                f"{split}: {share(len(starts), max(hi - lo - v.horizon + 1, 1))} forecast windows repeat a "
                f"train stretch value for value, e.g. the {v.horizon} steps from {when(starts[0])} equal "
                f"those from {when(sources[0])}: copied rows hand the model answers it has seen.",
                "Remove the copied rows (a year pasted twice, a file appended to itself).",
                count=len(starts),
                items=items,
            )
        )
    return out
