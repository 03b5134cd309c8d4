"""The figures of the Overview and Drift pages: time buckets over a bounded sample, and uPlot chart specs.

A page fetches a bounded set of rows (never the whole log), turns their times into seconds, and folds them
into :class:`Buckets` with numpy. A :class:`Chart` becomes the JSON of a ``<div class="chart"
data-series='...'>`` that ``static/dashboard.js`` draws with uPlot: x in Unix seconds, one list of values
per series, ``None`` for a gap (a bucket with no data). Bucketed values are drawn as steps
(:meth:`Chart.steps`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

# The colours dashboard.js gives series 0, 1, ... : a reference line is drawn in the colour of its class.
PALETTE = ("#0b5cad", "#b42318", "#067647", "#6941c6", "#b54708", "#0e7090", "#c11574", "#475467")
# Bucket widths in seconds, from fine to coarse; a chart uses the finest that gives at most MAX_BUCKETS.
WIDTHS_S = (10, 30, 60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_BUCKETS = 100


@dataclass(frozen=True)
class Series:
    label: str
    values: list[float | None]
    color: str | None = None
    dash: bool = False


@dataclass(frozen=True)
class Chart:
    """One uPlot chart: ``x`` in Unix seconds, each series one value (or None) per x."""

    title: str
    ylabel: str
    x: list[float]
    series: list[Series] = field(default_factory=list)

    @classmethod
    def steps(
        cls, title: str, ylabel: str, spans: Sequence[tuple[float, float]], series: Sequence[Series]
    ) -> Chart:
        """A step chart: each value held over its span ``(start, end)`` in seconds (a bucket, a window).

        dashboard.js draws lines without points, so a value alone between gaps (one busy minute, one
        window) would not show as a point would; as a step it is a short flat line. Each span gives two x
        values, kept strictly increasing (a span that starts where the last ended starts 1 ms later).
        """
        x: list[float] = []
        for start, end in spans:
            start = max(start, x[-1] + 0.001) if x else start
            x += [round(start, 3), round(max(end, start + 0.001), 3)]
        doubled = [Series(s.label, [v for v in s.values for _ in (0, 1)], s.color, s.dash) for s in series]
        return cls(title, ylabel, x, doubled)

    def spec(self) -> str:
        """The JSON of the ``data-series`` attribute (the template escapes it)."""
        series = []
        for s in self.series:
            item: dict[str, Any] = {"label": s.label, "values": s.values}
            if s.color:
                item["color"] = s.color
            if s.dash:
                item["dash"] = True
            series.append(item)
        return json.dumps({"title": self.title, "ylabel": self.ylabel, "x": self.x, "series": series})


def seconds(times: Sequence[Any]) -> np.ndarray:
    """Logged times as Unix seconds, ``(N,)`` float64.

    SQLite hands back the stored text (``2026-12-05 10:00:00.123456``, UTC), which numpy parses in one
    call; PostgreSQL hands back aware datetimes.
    """
    if not len(times):
        return np.zeros(0, np.float64)
    if isinstance(times[0], str):
        return np.asarray(times, dtype="datetime64[us]").astype(np.int64) / 1e6
    return np.asarray([t.timestamp() if isinstance(t, datetime) else math.nan for t in times], np.float64)


@dataclass(frozen=True)
class Buckets:
    """``count`` buckets of ``width`` seconds from ``start`` (a multiple of ``width``)."""

    start: float
    width: int
    count: int

    @classmethod
    def cover(cls, start: float, end: float) -> Buckets:
        """The finest buckets of :data:`WIDTHS_S` that cover ``[start, end]`` in at most MAX_BUCKETS."""
        span = max(end - start, 1.0)
        width = next((w for w in WIDTHS_S if span / w <= MAX_BUCKETS), WIDTHS_S[-1])
        first = math.floor(start / width) * width
        return cls(float(first), width, max(1, math.ceil((end - first) / width)))

    @property
    def x(self) -> list[float]:
        return [self.start + i * self.width for i in range(self.count)]

    @property
    def spans(self) -> list[tuple[float, float]]:
        return [(t, t + self.width) for t in self.x]

    @property
    def label(self) -> str:
        w = self.width
        return f"{w // 3600} h" if w >= 3600 else f"{w // 60} min" if w >= 60 else f"{w} s"

    def index(self, t: np.ndarray) -> np.ndarray:
        """The bucket of each time, ``(N,)`` int64; -1 outside the buckets."""
        i = np.floor((t - self.start) / self.width).astype(np.int64)
        return np.where((i >= 0) & (i < self.count), i, -1)

    def counts(self, t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """How many (or the sum of ``weights``) per bucket, ``(count,)``."""
        i = self.index(t)
        keep = i >= 0
        w = None if weights is None else weights[keep]
        return np.bincount(i[keep], weights=w, minlength=self.count)[: self.count]

    def percentiles(self, t: np.ndarray, values: np.ndarray, qs: Sequence[float]) -> np.ndarray:
        """The ``qs`` percentiles of ``values`` per bucket, ``(len(qs), count)``; NaN for an empty one."""
        i = self.index(t)
        out = np.full((len(qs), self.count), np.nan)
        order = np.argsort(i, kind="stable")
        i, values = i[order], values[order]
        bounds = np.searchsorted(i, np.arange(-1, self.count + 1))
        for b in range(self.count):
            lo, hi = bounds[b + 1], bounds[b + 2]
            if hi > lo:
                out[:, b] = np.percentile(values[lo:hi], qs)
        return out


def values(a: np.ndarray | Sequence[float], digits: int = 4) -> list[float | None]:
    """Numbers ready for JSON: rounded, NaN and infinities as None (a gap in the line)."""
    return [round(float(v), digits) if math.isfinite(v) else None for v in np.asarray(a, np.float64)]


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` per bucket; NaN where ``den`` is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)
