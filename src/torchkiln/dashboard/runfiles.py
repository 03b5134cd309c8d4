"""What the Runs page reads under ``runs_dir``: the run folders (:mod:`torchkiln.artifacts.runs`), their
per-epoch curves as uPlot chart specs, and the report files it may serve.

Only the report files the page lists can be opened through it: each run's evaluation and export reports,
and the ``kiln monitor report``/``watch`` reports (a ``report.html`` beside a monitor ``report.json``) up to
:data:`MONITOR_DEPTH` folders below ``runs_dir``. A path is looked up among those, never joined and
opened as given, and it must still lie inside ``runs_dir`` once symbolic links are resolved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkiln.artifacts.runs import RunReport, RunSummary, find_runs, read_history, run_reports

MONITOR_DEPTH = 4  # runs/<a>/<b>/<c>/report.json at the deepest
MAX_REPORT_JSON = 20_000_000  # bytes; a larger report.json is not read to list it
MAX_COMPARE = 8  # runs drawn side by side


@dataclass(frozen=True)
class RunRow:
    """A run folder as the page lists it: its summary, its path below runs_dir, its reports."""

    summary: RunSummary
    ref: str  # <name>/<time>, the run's id in URLs
    reports: list[tuple[RunReport, str]]  # each report and its path below runs_dir


@dataclass(frozen=True)
class MonitorReport:
    """A monitor report found under runs_dir: the model it watched, when, and which versions."""

    ref: str  # the report.html below runs_dir
    target: str
    created: str
    window: str
    versions: list[str]


def list_runs(root: Path) -> list[RunRow]:
    """Every run under ``root``, newest first, with the reports each holds."""
    rows = []
    for run in find_runs(root):
        reports = [(r, _ref(root, r.path)) for r in run_reports(run.path)]
        rows.append(RunRow(run, _ref(root, run.path), reports))
    return rows


def monitor_reports(root: Path) -> list[MonitorReport]:
    """The monitor reports (report.html beside a monitor report.json) under ``root``, newest first."""
    found = []
    for depth in range(MONITOR_DEPTH):
        for path in sorted(root.glob("*/" * depth + "report.json")):
            html = path.with_name("report.html")
            data = _small_json(path)
            if not html.is_file() or not isinstance(data.get("versions"), list) or "target" not in data:
                continue
            versions = [
                f"{v.get('version')}{' (shadow)' if v.get('shadow') else ''}"
                for v in data["versions"]
                if isinstance(v, dict)
            ]
            found.append(
                MonitorReport(
                    _ref(root, html),
                    str(data["target"]),
                    str(data.get("created", "")),
                    str(data.get("window", "")),
                    versions,
                )
            )
    return sorted(found, key=lambda m: m.created, reverse=True)


def report_file(root: Path, ref: str) -> Path | None:
    """The report file ``ref`` names when it is one the page lists and lies inside ``root``; else None."""
    known = {r for row in list_runs(root) for _, r in row.reports} | {m.ref for m in monitor_reports(root)}
    if ref not in known:
        return None
    path = (root / ref).resolve()
    return path if path.is_relative_to(root.resolve()) and path.is_file() else None


def curves(rows: list[RunRow]) -> list[dict[str, Any]]:
    """One chart per history figure (``train/loss``, ``val/accuracy``...), one series per run, by epoch.

    Returns:
        The ``data-series`` specs of ``drawCharts`` (static/dashboard.js); a run without the figure, or
        with fewer epochs, has nulls there.
    """
    histories = {row.ref: read_history(row.summary.path) for row in rows}
    longest = max((len(h) for h in histories.values()), default=0)
    keys = {k for h in histories.values() for entry in h for k in entry if k != "epoch"}
    charts = []
    for key in sorted(keys, key=_figure_order):
        series = []
        for ref, history in histories.items():
            values: list[float | None] = [None] * longest
            for i, entry in enumerate(history):
                values[i] = entry.get(key)
            series.append({"label": ref, "values": values})
        metric = key.rpartition("/")[2]
        x = list(range(1, longest + 1))
        charts.append(
            {"x": x, "time": False, "whole_x": True, "title": key, "ylabel": metric, "series": series}
        )
    return charts


def _figure_order(key: str) -> tuple[bool, str, str]:
    """Losses first, then the other metrics by name; train before val within each."""
    split, _, metric = key.rpartition("/")
    return (metric != "loss", metric, split)


def _ref(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _small_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_REPORT_JSON:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
