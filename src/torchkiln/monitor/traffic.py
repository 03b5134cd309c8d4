"""A window of logged traffic, per model version, as the :class:`~torchkiln.monitor.signals.Signals` a drift
check compares with the bundle's reference profile.

The prediction log (``serve/predlog_db.py``) has one row per request: the model and version that answered,
whether it was a shadow answer, and per input an input summary (``task.summarize_inputs``) and an output.
A window is the last N *inputs* of a version, or those logged within a span of now (``"500"``, ``"1h"``:
the same grammar as ``live_performance``). Shadow answers form groups of their own (``shadow=True``), so
a challenger in shadow is never mixed into the champion's window.

Signals of a window:

- **inputs**: the summary columns of the reference (``summary_table(rows, columns=...)``); a column that
  a logged summary lacks or holds a non-number for (NaN) is left out of both sides;
- **predicted class and confidence**: the server's logged live signals of the input when the row has
  them; otherwise derived from the answer (``label`` -> its index in the bundle's labels, ``score``);
- **outputs**: the reference's other output signals (a forecaster's ``forecast_level`` and
  ``forecast_spread``, in the model's scaled units), from the logged live signals only: the answer holds
  the forecast in the data's units, so they cannot be derived from it;
- **embedding**: the logged live signals only (the server projects the penultimate features with the
  reference's PCA); a window without them is compared on the other signals.

Live signals are read tolerantly: a ``signals`` column of the row (one object per input), or a
``"signals"`` object inside each input's summary or output, with ``predicted``, ``confidence``,
``embedding`` and the output signals' keys. Anything else is ignored. A signal that one input of the window
lacks (a log written before live signals, a batch whose signals failed) is left out of the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from torchkiln.artifacts.profile import Reference
from torchkiln.components.profile import summary_table
from torchkiln.core.errors import ServeError
from torchkiln.monitor.signals import Signals
from torchkiln.serve.performance import Window, parse_window
from torchkiln.serve.predlog_db import open_existing, reason, shown, utc

__all__ = ["Traffic", "read_traffic", "reference_signals", "traffic_of", "window_signals"]

# The output signals of a classifier's reference: they become Signals.classes and Signals.confidence; any
# other output signal (``task.output_signals``) is a continuous one of Signals.outputs.
CLASS_SIGNALS = ("predicted", "confidence")


@dataclass(frozen=True)
class Traffic:
    """The logged inputs of one model version in a window, oldest first; one entry per input.

    Attributes:
        model, version: as the server logged them (a registry version number, or a bundle's
            weights_sha256[:12] when served from a folder).
        shadow: True for a shadow arm's answers (mirrored, never returned).
        times: (N,) seconds since the epoch (UTC) of each input's request.
        summaries, outputs: the logged input summary and answer of each input.
        live: the logged live signals of each input, or None where there are none.
    """

    model: str
    version: str
    shadow: bool
    times: np.ndarray
    summaries: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    live: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return len(self.times)

    def tail(self, n: int) -> Traffic:
        """The last ``n`` inputs."""
        s = slice(max(0, len(self) - n), None)
        return Traffic(self.model, self.version, self.shadow, self.times[s], self.summaries[s],
                       self.outputs[s], self.live[s])  # fmt: skip


def read_traffic(
    url: str,
    *,
    window: str | Window,
    model: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> list[Traffic]:
    """The window of logged traffic of every (model, version, shadow) group that matches.

    Args:
        url: the prediction log's database URL (``kiln serve``'s ``log_url``).
        window: ``"N"`` (the last N inputs of each group) or ``"30m"``, ``"1h"``, ``"7d"``.
        model, version: only this model / version (None: all).
        now: the end of a time window (default: now).

    Returns:
        One :class:`Traffic` per group, sorted by model, shadow, version; groups with no input are left out,
        and so is the shadow group of a version that also answered (the same traffic, mirrored).

    Raises:
        ServeError: the window is invalid, or the log cannot be read.
    """
    win = parse_window(window) if isinstance(window, str) else window
    engine, parsed = open_existing(url, check="--log-url")
    try:
        with engine.connect() as conn:
            table = sa.Table("predictions", sa.MetaData(), autoload_with=conn)  # any column it has
            return _read(conn, table, win, model, version, now)
    except sa.exc.SQLAlchemyError as exc:  # unreachable, or no 'predictions' table
        raise ServeError(
            f"Cannot read the prediction log {shown(parsed)} ({reason(exc)}). Expected a reachable database "
            "written by `kiln serve`; check --log-url and that the database is up."
        ) from exc
    finally:
        engine.dispose()


def _read(
    conn: sa.Connection,
    t: sa.Table,
    win: Window,
    model: str | None,
    version: str | None,
    now: datetime | None,
) -> list[Traffic]:
    c = t.c
    where = []
    if model is not None:
        where.append(c.model == model)
    if version is not None:
        where.append(c.version == version)
    if win.span is not None:
        where.append(c.time >= utc(now or datetime.now(UTC)) - win.span)
    groups = conn.execute(sa.select(c.model, c.version, c.shadow).where(*where).distinct()).all()
    # A shadow arm serving the champion's own version (between retrains) mirrors the same traffic: its
    # group would repeat the champion's check and send a second alert for one incident.
    served = {(g[0], g[1]) for g in groups if not g[2]}
    groups = [g for g in groups if not (g[2] and (g[0], g[1]) in served)]
    columns = [c.time, c.outputs, c.input_summary] + ([c.signals] if "signals" in c else [])
    out = []
    for g_model, g_version, g_shadow in sorted(groups, key=lambda g: (g[0], bool(g[2]), g[1])):
        query = sa.select(*columns).where(
            *where, c.model == g_model, c.version == g_version, c.shadow == g_shadow
        )
        # Each request holds at least one input: the last N requests hold the last N inputs.
        query = query.order_by(c.time.desc(), c.id.desc()).limit(win.last)
        rows = list(reversed(conn.execute(query).mappings().all()))
        traffic = traffic_of(g_model, g_version, bool(g_shadow), rows)
        traffic = traffic.tail(win.last) if win.last is not None else traffic
        if len(traffic):
            out.append(traffic)
    return out


def traffic_of(model: str, version: str, shadow: bool, rows: Sequence[Mapping[str, Any]]) -> Traffic:
    """One group's logged rows, oldest first, as :class:`Traffic` (one entry per input).

    Each row is a mapping with ``time``, ``outputs``, ``input_summary`` and, when the log has the column,
    ``signals``: what :func:`read_traffic` selects, and what the dashboard reads in its own bounded
    queries.
    """
    times, summaries, outputs, live = [], [], [], []
    for row in rows:
        summ, outs = _as_list(row["input_summary"]), _as_list(row["outputs"])
        column = _as_list(row.get("signals"))
        t = utc(row["time"]).timestamp() if isinstance(row["time"], datetime) else float("nan")
        for i in range(max(len(summ), len(outs))):
            s = summ[i] if i < len(summ) and isinstance(summ[i], dict) else {}
            o = outs[i] if i < len(outs) and isinstance(outs[i], dict) else {}
            found = column[i] if i < len(column) else s.get("signals", o.get("signals"))
            times.append(t)
            summaries.append(s)
            outputs.append(o)
            live.append(found if isinstance(found, dict) else None)
    return Traffic(model, version, shadow, np.asarray(times, np.float64), summaries, outputs, live)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def reference_signals(reference: Reference, labels: Sequence[str]) -> Signals:
    """The reference profile's signals: summary columns, output signals (predicted class and confidence, or
    continuous ones such as a forecast's level and spread), embeddings."""
    a = reference.arrays
    columns = list(reference.meta.get("summary_columns", []))
    summary = np.asarray(a["summary"], np.float64)
    inputs = {name: summary[:, j] for j, name in enumerate(columns) if np.isfinite(summary[:, j]).all()}
    outputs = {n: np.asarray(a[n], np.float64) for n in reference.meta.get("signals", [])}
    outputs = {n: v for n, v in outputs.items() if n not in CLASS_SIGNALS and np.isfinite(v).all()}
    classes = np.asarray(a["predicted"], np.int64) if "predicted" in a and labels else None
    confidence = np.asarray(a["confidence"], np.float64) if "confidence" in a else None
    return Signals(
        inputs=inputs,
        outputs=outputs,
        classes=classes,
        num_classes=len(labels) if classes is not None else None,
        confidence=confidence,
        embeddings=np.asarray(a["embedding"], np.float64),
    )


def window_signals(
    traffic: Traffic, reference: Signals, columns: Sequence[str], labels: Sequence[str]
) -> Signals:
    """The window's signals that the reference also has (see the module docstring for where each comes from).

    Args:
        traffic: the window (at least one input).
        reference: :func:`reference_signals` of the version's bundle.
        columns: the reference's summary columns, in order.
        labels: the bundle's class labels (empty for a task without classes).
    """
    _, table = summary_table(traffic.summaries, columns=list(columns))
    inputs = {
        name: table[:, j]
        for j, name in enumerate(columns)
        if name in reference.inputs and np.isfinite(table[:, j]).all()
    }
    # Output signals come from the live signals only: the answer's forecast is in the data's units.
    outputs = {name: _column(traffic, name, lambda _: None, np.float64) for name in reference.outputs}
    index = {label: i for i, label in enumerate(labels)}
    classes = confidence = embeddings = None
    if reference.classes is not None:
        classes = _column(traffic, "predicted", lambda o: index.get(str(o.get("label"))), np.int64)
    if reference.confidence is not None:
        confidence = _column(traffic, "confidence", lambda o: o.get("score"), np.float64)
    if reference.embeddings is not None:
        embeddings = _embeddings(traffic, reference.embeddings.shape[1])
    return Signals(
        inputs=inputs,
        outputs={name: v for name, v in outputs.items() if v is not None},
        classes=classes,
        num_classes=reference.num_classes if classes is not None else None,
        confidence=confidence,
        embeddings=embeddings,
    )


def _column(traffic: Traffic, key: str, from_output: Any, dtype: type) -> np.ndarray | None:
    """One number per input: the logged live signal, else derived from the answer; None if one lacks it."""
    values = []
    for live, out in zip(traffic.live, traffic.outputs, strict=True):
        v = live.get(key) if live is not None else None
        v = from_output(out) if v is None else v
        if not isinstance(v, int | float) or isinstance(v, bool) or not np.isfinite(v):
            return None
        values.append(v)
    return np.asarray(values, dtype)


def _embeddings(traffic: Traffic, dims: int) -> np.ndarray | None:
    rows = [live.get("embedding") if live is not None else None for live in traffic.live]
    if not rows or any(not isinstance(r, list) or len(r) != dims for r in rows):
        return None
    try:
        emb = np.asarray(rows, np.float64)
    except (TypeError, ValueError):
        return None
    return emb if np.isfinite(emb).all() else None
