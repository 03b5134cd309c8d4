"""The offline HTML page of ``kiln monitor report``: the Jinja2 template ``monitor_report.html.j2`` and
matplotlib plots embedded as PNG ``data:`` URIs (no CDN, no external file).

Per version: the drift rows, the live performance, one plot per feature (the reference's histogram beside
the window's: input statistics, output signals, confidence, predicted classes, the embedding's first
component) and the drift score of each signal over the sub-windows of the window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from torchkiln.components.classification_report import figure_png, plot_label
from torchkiln.components.html import render
from torchkiln.core.io import atomic_write_text
from torchkiln.monitor.report import MonitorReport, VersionCheck
from torchkiln.monitor.signals import Signals

NOT_ENOUGH = "not enough data"


def render_report(report: MonitorReport) -> str:
    """The report as one self-contained HTML page."""
    return render(
        "monitor_report.html.j2",
        title=f"Monitoring report: {report.target}",
        report=report,
        versions=[_version(v) for v in report.versions],
    )


def _version(v: VersionCheck) -> dict[str, Any]:
    perf = v.performance
    accuracy = (
        "no feedback labels"
        if perf is None
        else f"{perf.accuracy.value:.3f} [{perf.accuracy.low:.3f}, {perf.accuracy.high:.3f}] "
        f"on {perf.labelled} labels"
    )
    return {
        "title": f"{v.model} version {v.version}{' (shadow)' if v.shadow else ''}",
        "cards": [
            ("verdict", v.verdict),
            ("inputs", str(v.items)),
            ("live accuracy", accuracy),
        ],
        "facts": {
            "bundle": v.bundle,
            "from": v.start,
            "to": v.end,
            "minimum window": str(v.drift.min_window),
        },
        "rows": [
            {
                "key": r.key,
                "statistic": f"{r.statistic:.4g}",
                "p_value": "" if r.p_value is None else f"{r.p_value:.3g}",
                "threshold": f"{'p < ' if r.rule == 'p_value' else '> '}{r.threshold:.3g}",
                "drifted": "drift" if r.drifted else "",
            }
            for r in v.drift.rows
        ],
        "classes": [] if perf is None else _classes(perf),
        "plots": [] if v.verdict == NOT_ENOUGH else _feature_plots(v.reference, v.window),
        "timeline": _timeline_plot(v) if v.timeline else None,
    }


def _classes(perf: Any) -> list[dict[str, str]]:
    def est(e: Any) -> str:
        return "" if e is None else f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"

    return [
        {"label": c.label, "support": str(c.support), "precision": est(c.precision), "recall": est(c.recall)}
        for c in perf.classes
    ]


def _feature_plots(ref: Signals, cur: Signals) -> list[tuple[str, str]]:
    named = (("input", ref.inputs, cur.inputs), ("output", ref.outputs, cur.outputs))
    plots = [(f"{kind} {name}", _hist(r[name], c[name], name)) for kind, r, c in named for name in sorted(c)]
    if ref.confidence is not None and cur.confidence is not None:
        plots.append(("confidence", _hist(ref.confidence, cur.confidence, "confidence")))
    if ref.classes is not None and cur.classes is not None and ref.num_classes:
        plots.append(("predicted class", _bars(ref.classes, cur.classes, ref.num_classes)))
    if ref.embeddings is not None and cur.embeddings is not None:
        plots.append(
            ("embedding", _hist(ref.embeddings[:, 0], cur.embeddings[:, 0], "embedding, component 1"))
        )
    return plots


def _figure() -> Figure:
    return Figure(figsize=(4.2, 2.6), dpi=100, layout="constrained")


def _hist(ref: np.ndarray, cur: np.ndarray, name: str) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    both = np.concatenate([ref, cur])
    lo, hi = float(both.min()), float(both.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    ax.hist(ref, bins=edges, density=True, alpha=0.5, label=f"reference ({len(ref)})")
    ax.hist(cur, bins=edges, density=True, alpha=0.5, label=f"window ({len(cur)})")
    ax.set_xlabel(plot_label(name, 40))
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return figure_png(fig)


def _bars(ref: np.ndarray, cur: np.ndarray, k: int) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x - 0.2, np.bincount(ref, minlength=k) / max(1, len(ref)), 0.4, label="reference")
    ax.bar(x + 0.2, np.bincount(cur, minlength=k) / max(1, len(cur)), 0.4, label="window")
    ax.set_xlabel("predicted class index")
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    return figure_png(fig)


def _timeline_plot(v: VersionCheck) -> str:
    fig = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(1, len(v.timeline) + 1)
    names = sorted({name for s in v.timeline for name in s.scores})
    for name in names:
        ax.plot(x, [s.scores.get(name, np.nan) for s in v.timeline], marker="o", label=plot_label(name, 30))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xticks(x, [s.end[11:16] for s in v.timeline])
    ax.set_xlabel("sub-window (end time, UTC)")
    ax.set_ylabel("drift score")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7, ncols=2)
    return figure_png(fig)


def write_report(report: MonitorReport, out_dir: str | Path, *, html: bool = True) -> list[Path]:
    """Write ``report.json`` (and ``report.html``, offline, with plots) into ``out_dir``; atomic writes.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json"]
    atomic_write_text(files[0], json.dumps(report.to_dict(), indent=2) + "\n")
    if html:
        files.append(out / "report.html")
        atomic_write_text(files[1], render_report(report))
    return files
