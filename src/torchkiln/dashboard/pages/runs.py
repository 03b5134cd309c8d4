"""Runs: the training runs under ``runs_dir`` with their curves side by side, their metrics, and their
evaluation, export and monitor reports (:mod:`torchkiln.dashboard.runfiles` reads them).

Ticking a run's box redraws the curves in place (htmx asks ``/runs/curves`` and the answer pushes the
matching ``/runs?run=...`` URL, so the view can be linked); the Compare button does the same without
JavaScript. Reports open read-only through ``/runs/report?path=...``, which serves only the report files
the page lists, under a policy that lets them run no script.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from torchkiln.artifacts.runs import headline
from torchkiln.dashboard.app import Dashboard, DashboardDep, Nav, PageError
from torchkiln.dashboard.figures import fmt
from torchkiln.dashboard.runfiles import (
    MAX_COMPARE,
    RunRow,
    curves,
    list_runs,
    monitor_reports,
    report_file,
)

router = APIRouter()
NAV = Nav("Runs", "/runs", 50)
# A report is self-contained HTML (inline CSS, data: images): it may load nothing and run nothing.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
RunsQuery = Annotated[list[str] | None, Query(alias="run")]


def _chosen(rows: list[RunRow], picked: list[str], explicit: bool) -> tuple[list[RunRow], list[str]]:
    """The runs to draw (the newest when none was asked for) and the asked-for ones that are not runs."""
    by_ref = {r.ref: r for r in rows}
    wanted = list(dict.fromkeys(picked))
    chosen = [by_ref[p] for p in wanted if p in by_ref]
    if not wanted and not explicit:
        chosen = rows[:1]
    return chosen, [p for p in wanted if p not in by_ref]


def _comparison(chosen: list[RunRow]) -> list[tuple[str, list[str]]]:
    """``kiln runs compare`` as rows: each figure and its value per chosen run."""
    figures = [r.summary.figures() for r in chosen]
    keys = list(dict.fromkeys(k for f in figures for k in f))
    return [(k, [fmt(f.get(k)) for f in figures]) for k in keys]


async def _curves_context(dash: Dashboard, run: list[str] | None, picked: str) -> dict[str, object]:
    rows = await run_in_threadpool(list_runs, dash.settings.runs_dir)
    chosen, unknown = _chosen(rows, run or [], explicit=bool(picked))
    drawn = chosen[:MAX_COMPARE]
    charts = await run_in_threadpool(curves, drawn)
    return {
        "rows": rows,
        "chosen": drawn,
        "chosen_refs": {r.ref for r in drawn},
        "left_out": len(chosen) - len(drawn),
        "unknown": unknown,
        "charts": charts,
        "comparison": _comparison(drawn),
        "max_compare": MAX_COMPARE,
    }


@router.get("/runs", include_in_schema=False)
async def runs(request: Request, dash: DashboardDep, run: RunsQuery = None, picked: str = "") -> Response:
    context = await _curves_context(dash, run, picked)
    monitors = await run_in_threadpool(monitor_reports, dash.settings.runs_dir)
    return dash.render(request, "runs.html.j2", monitors=monitors, headline=headline, fmt=fmt, **context)


@router.get("/runs/curves", include_in_schema=False)
async def compare(request: Request, dash: DashboardDep, run: RunsQuery = None, picked: str = "") -> Response:
    """The curves and the comparison of the ticked runs (the part htmx swaps), with the page's URL."""
    context = await _curves_context(dash, run, picked)
    page = dash.render(request, "runs_curves.html.j2", fmt=fmt, **context)
    page.headers["HX-Push-Url"] = "/runs?" + urlencode([("picked", "1")] + [("run", r) for r in run or []])
    return page


@router.get("/runs/report", include_in_schema=False)
async def report(dash: DashboardDep, path: str = "") -> Response:
    """A report file the Runs page lists, read-only; anything else is a 404, whatever the path says."""
    found = await run_in_threadpool(report_file, dash.settings.runs_dir, path)
    if found is None:
        raise PageError(
            404,
            "No such report",
            f"'{path[:200]}' is not a report file under the runs folder {dash.settings.runs_dir}. Open "
            "reports from the Runs page, which links every one it can show.",
        )
    headers = {"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"}
    return FileResponse(found, media_type="text/html; charset=utf-8", headers=headers)
