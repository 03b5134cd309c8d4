"""Drift over time for the dashboard: consecutive windows of each logged version, checked once and kept.

The monitor (``kiln monitor report``/``watch``) checks one window, the newest. The Drift page shows how
the signals moved: it cuts each (version, shadow) group's traffic into consecutive windows of at least
``size`` inputs (whole requests, oldest first) and checks each window against the version's reference
profile with the monitor's own functions (``window_signals``, ``measure``, ``judge``). A window is checked
once: its result is kept under its bounds (first and last row id), and a later render reads only the rows
logged since the last one (``id > last``), so re-rendering costs one small query.

Bounds. The first read of a model takes its newest ``min(WINDOWS * size, MAX_ROWS)`` rows (the model
index walked backwards: enough for WINDOWS windows of a version that answers alone, fewer when versions
share the traffic); windows start at the oldest of them, so they stay put as traffic arrives. A render
that finds that many new rows or more starts again from the newest ones.

References. A logged version's bundle is found the way ``kiln monitor`` finds it
(:class:`~torchkiln.monitor.sources.Bundles`): a bundle under ``runs_dir`` whose weights_sha256[:12] is
the version (what a server logs for a folder), else the registry's ``models:/MODEL/VERSION``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydantic_core
import sqlalchemy as sa
from fastapi import Depends, Request

from torchkiln.core.errors import KilnError, ServeError
from torchkiln.dashboard.log import LogReader
from torchkiln.monitor.alerts import AlertPolicy, AlertState, Event
from torchkiln.monitor.drift import (
    DriftReport,
    DriftSettings,
    Thresholds,
    embedding_reference,
    judge,
    measure,
)
from torchkiln.monitor.report import signal_scores
from torchkiln.monitor.signals import Signals
from torchkiln.monitor.sources import Bundles
from torchkiln.monitor.traffic import reference_signals, traffic_of, window_signals
from torchkiln.serve.predlog_db import predictions, present_columns, reason, shown
from torchkiln.serve.registry import registry_uri

WINDOWS = 12  # windows a page shows per group
KEEP = 48  # windows kept per group
MAX_ROWS = 50_000  # rows one read may fetch
MAX_MODELS = 8  # (model, size) histories kept; the least recently shown is dropped
RETRY_S = 120.0  # a version whose reference was not found is looked up again after this
JSON_COLUMNS = ("outputs", "input_summary", "signals")  # what traffic_of reads
BUNDLE_GLOBS = ("bundle.json", "*/bundle.json", "*/*/bundle.json", "*/*/*/bundle.json", "*/*/*/*/bundle.json")


@dataclass(frozen=True)
class ReferenceInfo:
    """What a version's drift checks compare with: its bundle's reference profile, read once."""

    bundle: Path
    labels: list[str]
    columns: list[str]  # the reference's summary columns
    signals: Signals
    embedding_ref: tuple[np.ndarray, float] | None

    def class_shares(self) -> dict[str, float]:
        """Each class's share of the reference's predictions ({} for a model without classes)."""
        if self.signals.classes is None or not self.labels:
            return {}
        counts = np.bincount(self.signals.classes, minlength=len(self.labels))[: len(self.labels)]
        total = max(1, int(counts.sum()))
        return {label: float(c) / total for label, c in zip(self.labels, counts, strict=True)}


class References:
    """Each logged version's reference profile, or the message that says why it has none (retried later)."""

    def __init__(self, runs_dir: Path, tracking_uri: str, settings: DriftSettings) -> None:
        self.runs_dir, self.tracking_uri, self.settings = runs_dir, tracking_uri, settings
        self._found: dict[tuple[str, str], ReferenceInfo | tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: str) -> ReferenceInfo | str:
        key = (model, version)
        with self._lock:
            found = self._found.get(key)
            if isinstance(found, ReferenceInfo):
                return found
            if found is not None and time.monotonic() - found[1] < RETRY_S:
                return found[0]
            try:
                info: ReferenceInfo | tuple[str, float] = self._read(model, version)
            except KilnError as exc:
                info = (str(exc), time.monotonic())
            self._found[key] = info
            return info if isinstance(info, ReferenceInfo) else info[0]

    def _read(self, model: str, version: str) -> ReferenceInfo:
        given = [p for p in self._bundle_folders() if _logged_version(p) == version][:1]
        if not given and version.isdigit():
            self._registry_exists(model, version)
        try:
            bundle = Bundles.from_paths(given, tracking_uri=self.tracking_uri).find(model, version)
        except ServeError as exc:
            if version.isdigit():
                raise
            raise ServeError(
                f"Version {version} of '{model}' was served from a bundle folder (its id is the weights' "
                f"SHA-256 prefix), and no bundle under {self.runs_dir} has it. Expected the run folders that "
                f"hold it: start the dashboard with --runs-dir set to them."
            ) from exc
        reference = bundle.reference()  # BundleError without one: the message gives kiln monitor profile
        labels = [str(label) for label in bundle.meta.get("labels") or []]
        signals = reference_signals(reference, labels)
        return ReferenceInfo(
            bundle=bundle.path,
            labels=labels,
            columns=list(reference.meta.get("summary_columns", [])),
            signals=signals,
            embedding_ref=embedding_reference(signals, self.settings),
        )

    def _registry_exists(self, model: str, version: str) -> None:
        """Refuse a SQLite registry that is not there: MLflow would create it, and the dashboard writes
        nothing (the registry is kiln train's and kiln registry's)."""
        url = sa.make_url(self.tracking_uri) if self.tracking_uri.startswith("sqlite:") else None
        if url is not None and not Path(url.database or "").is_file():
            raise ServeError(
                f"Version {version} of '{model}' is a registry version, and there is no registry at "
                f"{url.database}. Expected the MLflow registry the server loaded it from: start the "
                f"dashboard with --tracking-uri (or --runs-dir, whose mlflow.db is the default)."
            )

    def _bundle_folders(self) -> list[Path]:
        root = Path(self.runs_dir)
        return (
            sorted({f.parent for pattern in BUNDLE_GLOBS for f in root.glob(pattern)})
            if root.is_dir()
            else []
        )


def _logged_version(folder: Path) -> str | None:
    """The version id a server logs for this bundle folder (``monitor.sources.bundle_version``), read from
    bundle.json alone: loading every bundle under runs_dir to compare ids would rebuild every model."""
    try:
        meta = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(meta.get("weights_sha256") or "unknown")[:12] if isinstance(meta, dict) else None


@dataclass(frozen=True)
class WindowCheck:
    """One checked window: its rows (ids ``first`` to ``last``), times (Unix seconds) and drift report."""

    first: int
    last: int
    start: float
    end: float
    items: int
    report: DriftReport
    scores: dict[str, float]


@dataclass(frozen=True)
class AlertEvent:
    time: float  # the window's end
    event: Event
    window: WindowCheck


@dataclass(frozen=True)
class GroupHistory:
    """What the page shows of one (version, shadow) group."""

    version: str
    shadow: bool
    windows: list[WindowCheck]  # the last WINDOWS, oldest first
    pending: int  # inputs logged since the last complete window
    problem: str | None  # why its windows cannot be checked (no reference profile, no bundle ...)
    bundle: Path | None


@dataclass
class _Group:
    rows: list[Mapping[str, Any]] = field(default_factory=list)  # not yet in a window, oldest first
    pending: int = 0  # their inputs
    windows: list[WindowCheck] = field(default_factory=list)
    problem: str | None = None
    bundle: Path | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(row)
        self.pending += int(row["items"])

    def take(self, size: int) -> list[Mapping[str, Any]]:
        """The oldest rows that hold at least ``size`` inputs (whole requests), removed."""
        taken, n = 0, 0
        while taken < size:
            taken += int(self.rows[n]["items"])
            n += 1
        part, self.rows = self.rows[:n], self.rows[n:]
        self.pending -= taken
        return part

    def keep_last(self, inputs: int) -> None:
        """Drop the oldest waiting rows beyond ``inputs`` inputs (a group that cannot be checked yet)."""
        drop = 0
        while drop < len(self.rows) and self.pending - int(self.rows[drop]["items"]) >= inputs:
            self.pending -= int(self.rows[drop]["items"])
            drop += 1
        del self.rows[:drop]


@dataclass
class _Model:
    last_id: int = 0
    groups: dict[tuple[str, bool], _Group] = field(default_factory=dict)


class DriftHistory:
    """Windows of each model's logged traffic, checked once; one per dashboard, safe across threads."""

    def __init__(
        self,
        log: LogReader,
        references: References,
        *,
        thresholds: Thresholds | None = None,
        settings: DriftSettings | None = None,
    ) -> None:
        self.log, self.references = log, references
        self.thresholds = thresholds or Thresholds()
        self.settings = settings or DriftSettings()
        self._models: OrderedDict[tuple[str, int], _Model] = OrderedDict()
        self._lock = threading.Lock()
        self._columns: list[Any] | None = None

    def history(self, model: str, size: int) -> list[GroupHistory]:
        """Each group's last WINDOWS windows of ``size`` inputs of ``model``, checking the new ones.

        Raises:
            ServeError: the log cannot be read.
        """
        with self._lock:
            state = self._models.pop((model, size), None) or _Model()
            self._models[(model, size)] = state
            while len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)
            self._update(model, size, state)
            return [
                GroupHistory(v, s, g.windows[-WINDOWS:], g.pending, g.problem, g.bundle)
                for (v, s), g in sorted(state.groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            ]

    def _update(self, model: str, size: int, state: _Model) -> None:
        limit = min(WINDOWS * size, MAX_ROWS)
        rows = self._read(model, after=state.last_id, limit=limit)
        if not rows:
            return
        if len(rows) == limit and state.last_id:  # more new rows than one read: start from the newest
            for g in state.groups.values():
                g.rows, g.pending = [], 0
        state.last_id = int(rows[-1]["id"])
        served = {r["version"] for r in rows if not r["shadow"]} | {v for v, s in state.groups if not s}
        for r in rows:
            # A shadow arm serving the champion's own version mirrors the same traffic (as in read_traffic).
            if r["shadow"] and r["version"] in served:
                continue
            state.groups.setdefault((str(r["version"]), bool(r["shadow"])), _Group()).add(r)
        for (version, shadow), g in state.groups.items():
            self._check(model, version, shadow, g, size)

    def _check(self, model: str, version: str, shadow: bool, g: _Group, size: int) -> None:
        if g.pending < size:
            return
        ref = self.references.get(model, version)
        if isinstance(ref, str):
            g.problem = ref
            g.keep_last(WINDOWS * size)
            return
        g.problem, g.bundle = None, ref.bundle
        while g.pending >= size:
            part = g.take(size)
            traffic = traffic_of(model, version, shadow, part)
            try:
                window = window_signals(traffic, ref.signals, ref.columns, ref.labels)
                found = measure(ref.signals, window, settings=self.settings, embedding_ref=ref.embedding_ref)
                report = judge(found, self.thresholds)
            except KilnError as exc:  # the reference is too small, or shares no signal with the log
                g.problem = str(exc)
                return
            first, last = int(part[0]["id"]), int(part[-1]["id"])
            start, end = float(traffic.times[0]), float(traffic.times[-1])
            g.windows.append(
                WindowCheck(first, last, start, end, len(traffic), report, signal_scores(report))
            )
            del g.windows[:-KEEP]

    def _read(self, model: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        """``model``'s newest rows with an id above ``after`` (at most ``limit``), oldest first."""
        p = predictions.c
        if self._columns is None:
            present = present_columns(self.log.engine)
            self._columns = [p.id, p.time, p.version, p.shadow, p["items"]] + [
                # The JSON as text: pydantic-core parses it about twice as fast as the json module.
                sa.type_coerce(p[name], sa.String).label(name)
                for name in JSON_COLUMNS
                if name in present
            ]
        query = (
            sa.select(*self._columns).where(p.model == model, p.id > after).order_by(p.id.desc()).limit(limit)
        )
        try:
            with self.log.engine.connect() as conn:
                found = conn.execute(query).mappings().all()
        except sa.exc.SQLAlchemyError as exc:
            where = shown(self.log.parsed)
            raise ServeError(f"Cannot read the prediction log {where} ({reason(exc)}).") from exc
        return [{k: _json(v) if k in JSON_COLUMNS else v for k, v in r.items()} for r in reversed(found)]


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite gives its text; PostgreSQL's driver has parsed it already."""
    return pydantic_core.from_json(value) if isinstance(value, str | bytes) else value


def replay(windows: list[WindowCheck], policy: AlertPolicy) -> tuple[list[AlertEvent], AlertState]:
    """The alerts ``kiln monitor watch`` would have raised checking once per window, from state "ok".

    Example:
        >>> events, state = replay(history.windows, AlertPolicy())
        >>> [(e.event, e.window.last) for e in events]
        [('alert', 5120)]
    """
    state, events = AlertState(), []
    for w in windows:
        state, event = state.update(w.report.drifted, now=w.end, policy=policy)
        if event is not None:
            events.append(AlertEvent(w.end, event, w))
    return events, state


async def get_history(request: Request) -> DriftHistory:
    """The dashboard's one :class:`DriftHistory`, made on first use (on the event loop: made once)."""
    state = request.app.state
    if getattr(state, "drift_history", None) is None:
        settings = state.dashboard.settings
        tracking = registry_uri(settings.tracking_uri, runs_dir=settings.runs_dir)
        drift = DriftSettings()
        state.drift_history = DriftHistory(
            state.dashboard.log, References(settings.runs_dir, tracking, drift), settings=drift
        )
    return state.drift_history  # type: ignore[no-any-return]


HistoryDep = Annotated[DriftHistory, Depends(get_history)]
