"""``kiln monitor report``: drift and live performance of the logged traffic of a model, per version.

:func:`check` reads the window of logged traffic (``monitor.traffic``), finds each version's bundle
(``monitor.sources``), runs :func:`~torchkiln.monitor.drift.detect` against the bundle's reference profile,
splits the window into sub-windows for a drift-over-time view, and adds the live accuracy of the feedback
labels (``serve.performance.live_performance``). ``monitor.html.write_report`` writes ``report.json`` and
an offline ``report.html``.

**Drift score.** Each row of a drift check is scored so that 1.0 is its threshold and higher is more
drifted: a p-value row ``log10(p) / log10(threshold)``, a statistic row ``statistic / threshold``. A
signal's score (``input/mean``, ``output/forecast_level``, ``prediction``, ``confidence``, ``embedding``)
is the largest of its rows'.
The watch loop exports it as ``kiln_drift_score{model,version,signal}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.errors import KilnError
from torchkiln.monitor.drift import (
    DriftReport,
    DriftRow,
    DriftSettings,
    Thresholds,
    embedding_reference,
    judge,
    measure,
)
from torchkiln.monitor.signals import Signals
from torchkiln.monitor.sources import Bundles, bundle_version, is_bundle_path
from torchkiln.monitor.traffic import Traffic, read_traffic, reference_signals, window_signals
from torchkiln.serve.performance import VersionPerformance, live_performance
from torchkiln.serve.predlog_db import make_engine, shown

__all__ = [
    "MonitorReport",
    "SubWindow",
    "VersionCheck",
    "check",
    "row_score",
    "signal_scores",
]

MAX_SUB_WINDOWS = 6  # drift over time: the window in at most this many sub-windows of min_window items


@dataclass(frozen=True)
class SubWindow:
    """One slice of the window, in time order, with its verdict and signal scores."""

    start: str
    end: str
    items: int
    verdict: str
    scores: dict[str, float]


@dataclass(frozen=True)
class VersionCheck:
    """The drift check and live performance of one (model, version, shadow) group.

    ``reference`` and ``window`` (the signals compared) are kept for the plots, not written to JSON.
    """

    model: str
    version: str
    shadow: bool
    bundle: str
    items: int
    start: str
    end: str
    drift: DriftReport
    scores: dict[str, float]
    timeline: list[SubWindow]
    performance: VersionPerformance | None
    reference: Signals = field(repr=False, compare=False)
    window: Signals = field(repr=False, compare=False)

    @property
    def verdict(self) -> str:
        return self.drift.verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "shadow": self.shadow,
            "bundle": self.bundle,
            "items": self.items,
            "start": self.start,
            "end": self.end,
            "verdict": self.drift.verdict,
            "scores": self.scores,
            "drift": self.drift.to_dict(),
            "timeline": [asdict(s) for s in self.timeline],
            "performance": None if self.performance is None else asdict(self.performance),
        }


@dataclass(frozen=True)
class MonitorReport:
    """What ``kiln monitor report`` writes: one :class:`VersionCheck` per logged version in the window."""

    target: str
    log_url: str  # without its password
    window: str
    created: str
    thresholds: dict[str, Any]
    settings: dict[str, Any]
    versions: list[VersionCheck]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self) | {"versions": [v.to_dict() for v in self.versions]}
        return json.loads(json.dumps(out, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-ready: {type(value).__name__}")


def row_score(row: DriftRow) -> float:
    """1.0 at the row's threshold, higher is more drifted (see the module docstring)."""
    if row.rule == "p_value":
        p = max(float(row.p_value if row.p_value is not None else 1.0), 1e-300)
        return round(math.log10(p) / math.log10(row.threshold), 4)
    return round(row.statistic / row.threshold, 4) if row.threshold > 0 else math.inf


# Signals of several named features: each feature is a signal of its own in the scores and the gauges.
NAMED_SIGNALS = ("input", "output")


def signal_name(row: DriftRow) -> str:
    """``input/<statistic>`` for an input statistic, ``output/<name>`` for an output signal (a forecast's
    ``output/forecast_level``), else the signal: the ``signal`` label of the gauge."""
    return f"{row.signal}/{row.feature}" if row.signal in NAMED_SIGNALS else row.signal


def signal_scores(report: DriftReport) -> dict[str, float]:
    """Each signal's score: the largest of its rows' (empty for "not enough data")."""
    scores: dict[str, float] = {}
    for row in report.rows:
        name = signal_name(row)
        scores[name] = max(scores.get(name, -math.inf), row_score(row))
    return scores


def check(
    target: str,
    *,
    log_url: str,
    window: str = "1000",
    version: str | None = None,
    bundles: Sequence[str | Path] = (),
    tracking_uri: str | None = None,
    shadow: bool = True,
    thresholds: Thresholds | None = None,
    settings: DriftSettings | None = None,
    now: datetime | None = None,
) -> MonitorReport:
    """Drift and live performance of the logged traffic of ``target``, per version.

    Args:
        target: a served model name, or a bundle folder (then the versions logged with its id, or
            ``version``, are checked against it).
        log_url: the prediction log's database URL.
        window: ``"N"`` (the last N inputs of each version) or ``"30m"``, ``"1h"``, ``"7d"``.
        version: only this logged version.
        bundles: bundle folders for versions served from folders (see ``monitor.sources``).
        tracking_uri: the registry for versions served from ``models:/`` URIs.
        shadow: also check shadow answers (each shadow version in its own row); False leaves them out.
        thresholds: calibrated thresholds, or None for the fixed defaults.
        settings: the drift tests; None for the defaults (a window under 50 inputs: "not enough data").
        now: the end of a time window (default: now).

    Returns:
        The report; ``versions`` is empty (with a note) when the window holds no traffic.

    Raises:
        ServeError: the log cannot be read, or a version's bundle cannot be found.
        BundleError: a bundle is broken or has no reference profile (the message gives the command).

    Example:
        >>> r = check("fashion", log_url="sqlite:///runs/serve/predictions.db", window="1h")
        >>> [(v.version, v.verdict) for v in r.versions]
        [('3', 'no drift')]
    """
    settings, thresholds = settings or DriftSettings(), thresholds or Thresholds()
    source = Bundles.from_paths(bundles, tracking_uri=tracking_uri)
    model = None
    if is_bundle_path(target):
        (b,) = Bundles.from_paths([target]).given
        version = version or bundle_version(b)
        source.pinned[version] = b
    else:
        model = target
    traffic = [t for t in read_traffic(log_url, window=window, model=model, version=version, now=now)
               if shadow or not t.shadow]  # fmt: skip
    notes = [] if traffic else [_no_traffic(target, model, version, window)]
    performance = _performance(log_url, {t.model for t in traffic}, window, now, notes)
    versions = [
        _check_version(t, source, thresholds, settings, performance.get((t.model, t.version, t.shadow)))
        for t in traffic
    ]
    return MonitorReport(
        target=target,
        log_url=shown(make_engine(log_url)[1]),
        window=window,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        thresholds=thresholds.to_dict(),
        settings=asdict(settings),
        versions=versions,
        notes=notes,
    )


def _no_traffic(target: str, model: str | None, version: str | None, window: str) -> str:
    who = f"model '{model}'" if model else f"bundle {target}"
    return (
        f"The prediction log holds no traffic of {who}{f' version {version}' if version else ''} in the "
        f"window {window}: nothing to check."
    )


def _performance(
    url: str, models: set[str], window: str, now: datetime | None, notes: list[str]
) -> dict[tuple[str, str, bool], VersionPerformance]:
    out = {}
    for model in sorted(models):
        try:
            perf = live_performance(url, model, window=window, now=now)
        except KilnError as exc:  # e.g. a log written before feedback labels: drift is still worth reporting
            notes.append(f"No live performance for '{model}': {exc}")
            continue
        out |= {(model, v.version, v.shadow): v for v in perf.versions}
    return out


def _check_version(
    t: Traffic,
    source: Bundles,
    thresholds: Thresholds,
    settings: DriftSettings,
    performance: VersionPerformance | None,
) -> VersionCheck:
    bundle = source.find(t.model, t.version)
    ref_meta = bundle.reference()
    labels = list(bundle.meta.get("labels") or [])
    reference = reference_signals(ref_meta, labels)
    window = window_signals(t, reference, ref_meta.meta.get("summary_columns", []), labels)
    emb_ref = embedding_reference(reference, settings)
    drift = judge(measure(reference, window, settings=settings, embedding_ref=emb_ref), thresholds)
    return VersionCheck(
        model=t.model,
        version=t.version,
        shadow=t.shadow,
        bundle=str(bundle.path),
        items=len(t),
        start=_iso(t.times[0]),
        end=_iso(t.times[-1]),
        drift=drift,
        scores=signal_scores(drift),
        timeline=_timeline(t, reference, window, thresholds, settings, emb_ref),
        performance=performance,
        reference=reference,
        window=window,
    )


def _timeline(
    t: Traffic,
    reference: Signals,
    window: Signals,
    thresholds: Thresholds,
    settings: DriftSettings,
    emb_ref: tuple[np.ndarray, float] | None,
) -> list[SubWindow]:
    """The window in time order, cut into at most MAX_SUB_WINDOWS slices of at least min_window inputs."""
    k = min(MAX_SUB_WINDOWS, len(t) // settings.min_window)
    if k < 2:
        return []
    out = []
    for idx in np.array_split(np.arange(len(t)), k):
        part = judge(
            measure(reference, window.take(idx), settings=settings, embedding_ref=emb_ref), thresholds
        )
        out.append(SubWindow(_iso(t.times[idx[0]]), _iso(t.times[idx[-1]]), len(idx), part.verdict,
                             signal_scores(part)))  # fmt: skip
    return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(float(seconds), UTC).isoformat(timespec="seconds")
