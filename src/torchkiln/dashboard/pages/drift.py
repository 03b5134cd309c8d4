"""Drift: the monitor's signals over consecutive windows of each logged version, with their thresholds,
the rows that fired, and the alerts ``kiln monitor watch`` would have raised.

Each window holds at least ``window`` inputs (whole requests) of one version (a shadow arm's answers
apart), checked against the version's reference profile with the monitor's fixed thresholds: a signal's
score is 1.0 at its threshold (``monitor.report.row_score``). The windows and their checks are kept by
:mod:`torchkiln.dashboard.drift_history`, so a re-render checks only the windows completed since.
Alerts: an :class:`~torchkiln.monitor.alerts.AlertState` with the default policy, fed one window at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from torchkiln.dashboard.app import DashboardDep, Nav, PageError
from torchkiln.dashboard.charts import PALETTE, Chart, Series, values
from torchkiln.dashboard.drift_history import WINDOWS, AlertEvent, GroupHistory, HistoryDep, replay
from torchkiln.dashboard.pages.overview import pick_model
from torchkiln.monitor.alerts import AlertPolicy, AlertState
from torchkiln.monitor.drift import MIN_WINDOW
from torchkiln.monitor.report import row_score

router = APIRouter()
NAV = Nav("Drift", "/drift", 30)

DEFAULT_WINDOW = 1000  # inputs per window: kiln monitor's default --window
MAX_WINDOW = 10_000
POLICY = AlertPolicy()  # kiln monitor watch's defaults


@dataclass(frozen=True)
class Fired:
    key: str  # signal/feature/method
    score: float
    statistic: float
    p_value: float | None
    threshold: float


@dataclass(frozen=True)
class WindowView:
    start: str
    end: str
    items: int
    verdict: str
    fired: list[Fired]  # highest score first


@dataclass(frozen=True)
class GroupView:
    group: GroupHistory
    name: str  # "3", or "3 (shadow)"
    chart: Chart | None
    windows: list[WindowView]  # newest first
    events: list[tuple[str, AlertEvent]]  # (time, event), oldest first
    state: AlertState


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _group_view(g: GroupHistory) -> GroupView:
    name = f"{g.version} (shadow)" if g.shadow else g.version
    signals = sorted({s for w in g.windows for s in w.scores})
    chart = None
    if g.windows:
        # Each window's scores from the end of the one before (its own start for the first) to its end.
        ends = [w.end for w in g.windows]
        spans = list(zip([g.windows[0].start, *ends[:-1]], ends, strict=True))
        series = [
            Series(s, values([w.scores.get(s, math.nan) for w in g.windows]), PALETTE[i % len(PALETTE)])
            for i, s in enumerate(signals)
        ]
        series.append(Series("threshold", [1.0] * len(spans), "#1b1f24", dash=True))
        chart = Chart.steps(f"Drift scores of version {name} (1 = threshold)", "score", spans, series)
    windows = [
        WindowView(
            _when(w.start),
            _when(w.end),
            w.items,
            w.report.verdict,
            sorted(
                (
                    Fired(r.key, row_score(r), r.statistic, r.p_value, r.threshold)
                    for r in w.report.rows
                    if r.drifted
                ),
                key=lambda f: -f.score,
            ),
        )
        for w in reversed(g.windows)
    ]
    events, state = replay(g.windows, POLICY)
    return GroupView(g, name, chart, windows, [(_when(e.time), e) for e in events], state)


def _size(window: str) -> int:
    try:
        size = int(window)
    except ValueError:
        size = -1
    if not MIN_WINDOW <= size <= MAX_WINDOW:
        raise PageError(
            422,
            "Invalid window",
            f"The window must be a number of inputs from {MIN_WINDOW} to {MAX_WINDOW:,}, like 1000 (a "
            f"smaller window is not enough data for a drift check); got '{window[:20]}'.",
        )
    return size


@router.get("/drift", include_in_schema=False)
async def drift(
    request: Request, dash: DashboardDep, history: HistoryDep, model: str = "", window: str = ""
) -> Response:
    size = _size(window or str(DEFAULT_WINDOW))
    model, models = await run_in_threadpool(pick_model, dash.log, model)
    groups = await run_in_threadpool(history.history, model, size)
    return dash.render(
        request,
        "drift.html.j2",
        model=model,
        models=models,
        size=size,
        groups=[_group_view(g) for g in groups],
        shown=WINDOWS,
        policy=POLICY,
    )
