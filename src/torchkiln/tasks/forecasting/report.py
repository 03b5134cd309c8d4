"""The self-contained HTML report of a forecasting evaluation: scores beside the baselines, and plots.

Same page shell, CSS and figure helpers as the classification report
(:mod:`torchkiln.components.classification_report`): inline CSS, base64 PNGs drawn on a
``matplotlib.figure.Figure`` with an Agg canvas, nothing external. The HTML is the Jinja2 template
``templates/report.html.j2`` beside this module (:mod:`torchkiln.components.html`); this module computes
the values it shows (formatted numbers, plots as ``data:`` URIs, tables as lists of dicts)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from torchkiln.components.classification_report import figure_png, plot_label
from torchkiln.components.html import render
from torchkiln.tasks.forecasting.data import SeriesFrame, iso_time

MAX_TARGETS = 4  # target columns that get their own series plots
PANELS = 3  # forecast windows drawn per target: the last one and evenly spaced earlier ones
NAMES = {"naive": "Naive", "seasonal_naive": "Seasonal naive", "ets": "ETS", "arima": "ARIMA"}
STYLE: dict[str, dict[str, Any]] = {
    "model": {"color": "#0969da", "lw": 2.0},
    "naive": {"color": "#8c959f", "lw": 1.2, "ls": ":"},
    "seasonal_naive": {"color": "#bf8700", "lw": 1.2, "ls": "--"},
    "ets": {"color": "#1a7f37", "lw": 1.2, "ls": "-."},
    "arima": {"color": "#cf222e", "lw": 1.2, "ls": (0, (5, 1))},
}
SPLIT_SHADE = {"train": "#eaeef2", "val": "#fff8c5", "test": "#dafbe1"}
COLUMNS = (  # metric key, table header
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("mape", "MAPE %"),
    ("smape", "sMAPE %"),
    ("mase", "MASE"),
    ("relative_mae", "MAE / seas. naive"),
)

Metrics = dict[str, dict[str, float]]
PerStep = dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class SplitForecasts:
    """The forecasts of every model on the same windows, in the data's units (what the report draws)."""

    frame: SeriesFrame
    bounds: dict[str, tuple[int, int]]
    lookback: int
    origins: np.ndarray  # (W,) row of each window's first forecast step
    target: np.ndarray  # (W, H, C)
    points: dict[str, np.ndarray]  # model -> (W, H, C) point forecasts; the network's is its median
    quantiles: np.ndarray  # (Q, W, H, C) the network's quantile forecasts
    levels: tuple[float, ...]  # the Q quantile levels, increasing
    baselines: dict[str, list[str]]
    notes: tuple[str, ...] = ()

    @property
    def interval(self) -> tuple[float, float] | None:
        return (self.levels[0], self.levels[-1]) if len(self.levels) > 1 else None


def render_report(
    fc: SplitForecasts,
    metrics: Metrics,
    per_step: PerStep,
    *,
    model_name: str,
    split: str,
    title: str,
    extra: dict[str, str],
) -> str:
    """The report page: headline cards, the model x metric table, the baselines' chosen models, the
    error per horizon step, and per target the whole series with forecasts from a few origins."""
    labels = {"model": f"{model_name} (network)", **NAMES}
    columns = fc.frame.target_names[:MAX_TARGETS]
    series = [
        {"uri": _series_png(fc, c, labels), "alt": f"{name}: series and forecasts"}
        for c, name in enumerate(columns)
    ]
    return render(
        "report.html.j2",
        package="torchkiln.tasks.forecasting",
        title=title,
        extra=extra,
        cards=_cards(fc, metrics),
        notes=_notes(fc),
        split=split,
        **_reading(fc),
        headers=[header for _, header in COLUMNS],
        scores=_score_rows(metrics, labels),
        baselines=_baseline_rows(fc),
        train_last=iso_time(fc.frame.time[fc.bounds["train"][1] - 1]),
        step_plots=_steps_pngs(per_step, labels, len(fc.origins)),
        series_plots=series,
    )


# ---- values for the template -----------------------------------------------------------------------
# Numbers arrive in the template formatted, names as plain text: the template escapes them.


def _num(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _cards(fc: SplitForecasts, metrics: Metrics) -> list[tuple[str, str]]:
    net = metrics["model"]
    cards = [("MASE", _num(net["mase"])), ("MAE / seasonal naive", _num(net["relative_mae"]))]
    classical = [m for m in ("ets", "arima") if m in metrics]
    if classical:
        best = min(classical, key=lambda m: metrics[m]["rmse"])
        ratio = net["rmse"] / metrics[best]["rmse"] if metrics[best]["rmse"] > 0 else math.nan
        cards.append((f"RMSE / {NAMES[best]} RMSE (the better)", _num(ratio)))
    else:
        cards.append(("RMSE / best of ETS, ARIMA", "—"))
    if fc.interval is not None:
        lo, hi = fc.interval
        label = f"inside the {100 * lo:g}-{100 * hi:g} % interval (nominal {round(100 * (hi - lo))} %)"
        cards.append((label, f"{100 * net['coverage']:.1f} %"))
    cards.append(("Windows x steps", f"{len(fc.origins)} x {fc.target.shape[1]}"))
    return cards


def _notes(fc: SplitForecasts) -> list[str]:
    notes = list(fc.notes)
    names = fc.frame.target_names
    if len(names) > 1:
        notes.append(
            f"The scores are averaged over the {len(names)} targets ({', '.join(names)}): MASE and the "
            "percentages compare across them, MAE and RMSE mix their units."
        )
    if len(names) > MAX_TARGETS:
        notes.append(f"The series plots show the first {MAX_TARGETS} of the {len(names)} targets.")
    if fc.interval is None:
        notes.append("The network predicts the median alone (task.quantiles = [0.5]), so it has no interval.")
    return notes


def _reading(fc: SplitForecasts) -> dict[str, Any]:
    """The numbers of the "How to read this" text."""
    interval = None
    if fc.interval is not None:
        lo, hi = fc.interval
        interval = {"low": f"{lo:g}", "high": f"{hi:g}", "nominal": round(100 * (hi - lo))}
    return {
        "windows": fc.target.shape[0],
        "horizon": fc.target.shape[1],
        "lookback": fc.lookback,
        "levels": [f"{q:g}" for q in fc.levels],
        "interval": interval,
        "train_end": fc.bounds["train"][1],
    }


def _score_rows(metrics: Metrics, labels: dict[str, str]) -> list[dict[str, Any]]:
    """One row per model: its label, a cell per column of ``COLUMNS`` (the best marked), its coverage."""
    best = {
        key: min((m[key] for m in metrics.values() if not math.isnan(m[key])), default=None)
        for key, _ in COLUMNS
    }
    return [
        {
            "label": labels[name],
            "cells": [{"value": _num(m[key]), "best": m[key] == best[key]} for key, _ in COLUMNS],
            "coverage": f"{100 * m['coverage']:.1f} %" if "coverage" in m else "—",
        }
        for name, m in metrics.items()
    ]


def _baseline_rows(fc: SplitForecasts) -> dict[str, str]:
    """Baseline -> the model it chose (per target when there are several)."""
    names = fc.frame.target_names
    return {
        NAMES[method]: models[0]
        if len(names) == 1
        else ", ".join(f"{n}: {m}" for n, m in zip(names, models, strict=True))
        for method, models in fc.baselines.items()
    }


# ---- plots -----------------------------------------------------------------------------------------


def _steps_pngs(per_step: PerStep, labels: dict[str, str], windows: int) -> list[dict[str, str]]:
    pngs = []
    for key, ylabel in (("mae", "MAE"), ("relative_mae", "MAE / seasonal naive's MAE")):
        fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
        ax = fig.subplots()
        for name, values in per_step.items():
            steps = np.arange(1, len(values[key]) + 1)
            ax.plot(steps, values[key], marker="o", ms=3, label=labels[name], **STYLE[name])
        if key == "relative_mae":
            ax.axhline(1.0, color="0.4", lw=0.8)
        if len(steps) <= 24:
            ax.set_xticks(steps)
        ax.set(xlabel="Horizon step", ylabel=ylabel, title=f"{ylabel} per step ({windows} windows)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        pngs.append({"uri": figure_png(fig), "alt": f"{ylabel} per horizon step"})
    return pngs


def _picks(windows: int) -> list[int]:
    """The last window and evenly spaced earlier ones, oldest first."""
    return sorted(set(np.linspace(0, windows - 1, min(PANELS, windows)).round().astype(int).tolist()))


def _series_png(fc: SplitForecasts, column: int, labels: dict[str, str]) -> str:
    picks = _picks(len(fc.origins))
    time, y, name = fc.frame.time, fc.frame.targets[:, column], plot_label(fc.frame.target_names[column], 40)
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, len(picks), height_ratios=(1.1, 1))
    top = fig.add_subplot(grid[0, :])
    for split, shade in SPLIT_SHADE.items():
        start, end = fc.bounds[split]
        if end > start:  # spans meet: each runs to the next split's first step
            top.axvspan(time[start], time[min(end, len(time) - 1)], color=shade, label=split)
    top.plot(time, y, color="#1f2328", lw=1.1)
    for i in picks:
        top.axvline(time[fc.origins[i]], color="#0969da", ls=":", lw=1)
    top.set(ylabel=name, title=f"{name}: the whole series, its splits and the origins drawn below (dotted)")
    top.legend(loc="upper left", fontsize="small")
    _date_axis(top, max_ticks=12)
    axes = [fig.add_subplot(grid[1, k]) for k in range(len(picks))]
    for ax, i in zip(axes, picks, strict=True):
        _window_panel(ax, fc, i, column, labels)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize="small")
    return figure_png(fig)


def _window_panel(ax: Axes, fc: SplitForecasts, i: int, column: int, labels: dict[str, str]) -> None:
    """History, actual values, the network's median and band, and each baseline, from origin ``i``."""
    o, horizon = int(fc.origins[i]), fc.target.shape[1]
    time, y = fc.frame.time, fc.frame.targets[:, column]
    future = time[o : o + horizon]
    ax.plot(
        time[max(0, o - fc.lookback) : o],
        y[max(0, o - fc.lookback) : o],
        color="#1f2328",
        lw=1.1,
        label="history",
    )
    ax.plot(
        time[o - 1 : o + horizon],
        y[o - 1 : o + horizon],
        color="#1f2328",
        marker="o",
        ms=2.5,
        lw=1.1,
        ls="--",
        label="actual",
    )
    if fc.interval is not None:
        lo, hi = fc.interval
        band = fc.quantiles[0, i, :, column], fc.quantiles[-1, i, :, column]
        ax.fill_between(
            future, *band, color=STYLE["model"]["color"], alpha=0.18, lw=0, label=f"network {lo:g}-{hi:g}"
        )
    for name, pred in fc.points.items():
        ax.plot(future, pred[i, :, column], label=labels[name], **STYLE[name])
    ax.set_title(f"from {iso_time(time[o])}", fontsize="medium")
    _date_axis(ax, max_ticks=5)
    ax.grid(alpha=0.3)


def _date_axis(ax: Axes, *, max_ticks: int) -> None:
    locator = AutoDateLocator(minticks=3, maxticks=max_ticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
