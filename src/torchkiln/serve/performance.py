"""Live accuracy, precision and recall per model version, from the feedback labels in the prediction log.

:func:`live_performance` reads a window of labelled inputs (the last N, or those predicted in the last
hour) and scores, per version, what it predicted against the label. Each rate comes with a 95 % Wilson
score interval: unlike the normal approximation it stays inside [0, 1] and keeps a sensible width at
0 %, 100 % and small counts, which is where live labels usually are. A version that answered in shadow
(its answers never returned) is scored on the same labelled inputs, in a row of its own.

Nothing here imports torch or the server: ``kiln monitor`` can call it on a log URL.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.serve.predlog_db import feedback, open_existing, predictions, reason, shown, utc

__all__ = [
    "ClassPerformance",
    "Estimate",
    "Performance",
    "VersionPerformance",
    "Window",
    "live_performance",
    "parse_window",
    "performance",
    "wilson",
]

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054
WINDOW_PATTERN = r"^([1-9][0-9]{0,6}|[1-9][0-9]{0,5}[smhd])$"
DEFAULT_WINDOW = "1000"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}  # seconds per unit of "30s", "5m", "1h", "7d"


@dataclass(frozen=True)
class Estimate:
    """A rate ``k / n`` and its 95 % Wilson score interval [low, high]."""

    value: float
    low: float
    high: float
    successes: int
    total: int


@dataclass(frozen=True)
class ClassPerformance:
    label: str
    support: int  # labelled inputs of this class
    predicted: int  # labelled inputs predicted as this class
    precision: Estimate | None  # None when nothing was predicted as it
    recall: Estimate | None  # None when no input of it was labelled


@dataclass(frozen=True)
class VersionPerformance:
    version: str
    shadow: bool  # True: its answers were logged, never returned (a challenger in shadow)
    labelled: int
    accuracy: Estimate
    classes: list[ClassPerformance]


@dataclass(frozen=True)
class Performance:
    model: str
    window: str
    since: datetime | None  # the start of a time window; None for a count window
    labelled: int  # labelled inputs in the window
    versions: list[VersionPerformance]


@dataclass(frozen=True)
class Window:
    """The last ``last`` labelled inputs, or those predicted within ``span`` of now."""

    text: str
    last: int | None = None
    span: timedelta | None = None


def wilson(successes: int, total: int, z: float = Z95) -> Estimate | None:
    """The Wilson score interval of ``successes / total`` (None when ``total`` is 0).

    Example:
        >>> e = wilson(8, 10); round(e.low, 4), round(e.high, 4)
        (0.4902, 0.9433)
    """
    if total == 0:
        return None
    p, n, z2 = successes / total, total, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, center - half), min(1.0, center + half), successes, total)


def parse_window(text: str) -> Window:
    """``"500"``: the last 500 labelled inputs; ``"90s"``, ``"30m"``, ``"1h"``, ``"7d"``: by prediction time.

    Raises:
        ServeError: Neither form.
    """
    text = text.strip()
    if not re.fullmatch(WINDOW_PATTERN, text):
        raise ServeError(
            f"The window '{text[:40]}' is neither a count nor a duration. Expected N (the last N labelled "
            "inputs, 1 to 9999999) or N followed by s, m, h or d (predicted in the last N seconds, minutes, "
            "hours or days), e.g. 1000 or 1h."
        )
    if text[-1].isdigit():
        return Window(text, last=int(text))
    return Window(text, span=timedelta(seconds=int(text[:-1]) * DURATION_UNITS[text[-1]]))


def performance(engine: sa.Engine, model: str, window: Window, *, now: datetime | None = None) -> Performance:
    """:func:`live_performance` on an open engine (the server's); raises SQLAlchemy's errors."""
    f, p = feedback.c, predictions.c
    since = None if window.span is None else utc(now or datetime.now(UTC)) - window.span
    query = sa.select(f.id, f.request_id, f.item, f.version, f.predicted, f.label).where(f.model == model)
    if since is not None:
        query = query.where(f.predicted_at >= since)
    else:
        query = query.order_by(f.predicted_at.desc(), f.id.desc()).limit(window.last)
    labelled = query.subquery()
    shadowed = sa.select(labelled.c.id, labelled.c.item, labelled.c.label, p.version, p.outputs).join(
        predictions, sa.and_(p.request_id == labelled.c.request_id, p.model == model, p.shadow == sa.true())
    )
    with engine.connect() as conn:
        answered = conn.execute(sa.select(labelled)).all()
        mirrored = conn.execute(shadowed).all()
    pairs: dict[tuple[str, bool], dict[int, tuple[str, str | None]]] = {}
    for row in answered:
        pairs.setdefault((row.version, False), {})[row.id] = (row.label, row.predicted)
    for row in mirrored:  # keyed by the feedback row: a shadow answer counts once per labelled input
        pairs.setdefault((row.version, True), {})[row.id] = (row.label, _top_label(row.outputs, row.item))
    versions = [
        _score(version, shadow, list(scored.values()))
        for (version, shadow), scored in sorted(pairs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    return Performance(model, window.text, since, len(answered), versions)


def live_performance(
    url: str, model: str, *, window: str = DEFAULT_WINDOW, now: datetime | None = None
) -> Performance:
    """Accuracy, per-class precision and recall, with 95 % Wilson intervals, per version of ``model``.

    Args:
        url: The prediction log's database URL (the server's ``log_url``).
        model: The served model name.
        window: ``"N"`` for the last N labelled inputs (by prediction time), or ``"30m"``, ``"1h"``,
            ``"7d"`` for the inputs predicted since then.
        now: The end of a time window; default: now.

    Returns:
        The scores, one :class:`VersionPerformance` per version that answered (and per shadow version).

    Raises:
        ServeError: The window is invalid, or the log cannot be read.

    Example:
        >>> perf = live_performance("sqlite:///runs/serve/predictions.db", "fashion", window="1h")
        >>> [(v.version, v.accuracy.value, v.accuracy.low) for v in perf.versions]
    """
    parsed = parse_window(window)
    engine, parsed_url = open_existing(url)
    try:
        return performance(engine, model, parsed, now=now)
    except sa.exc.DBAPIError as exc:  # unreachable, or a log from before feedback (no 'feedback' table)
        raise ServeError(
            f"Cannot read feedback from the prediction log {shown(parsed_url)} ({reason(exc)}). Expected a "
            "reachable database written by `kiln serve` (which adds the feedback table when it starts)."
        ) from exc
    finally:
        engine.dispose()


def _top_label(outputs: Any, item: int) -> str | None:
    if isinstance(outputs, list) and 0 <= item < len(outputs) and isinstance(outputs[item], dict):
        label = outputs[item].get("label")
        return None if label is None else str(label)
    return None


def _score(version: str, shadow: bool, pairs: list[tuple[str, str | None]]) -> VersionPerformance:
    """Score (label, predicted) pairs: accuracy, and precision and recall of every class seen."""
    n = len(pairs)
    hits = Counter(label for label, predicted in pairs if label == predicted)
    support = Counter(label for label, _ in pairs)
    predicted = Counter(pred for _, pred in pairs if pred is not None)
    classes = [
        ClassPerformance(
            label=c,
            support=support[c],
            predicted=predicted[c],
            precision=wilson(hits[c], predicted[c]),
            recall=wilson(hits[c], support[c]),
        )
        for c in sorted(support.keys() | predicted.keys())
    ]
    accuracy = wilson(sum(hits.values()), n)
    assert accuracy is not None  # a version is only listed with at least one labelled input
    return VersionPerformance(version, shadow, n, accuracy, classes)
