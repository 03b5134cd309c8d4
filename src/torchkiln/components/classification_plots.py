"""The evaluation report's plots: confusion matrix, ROC and PR curves, reliability diagram.

Figures are built with ``matplotlib.figure.Figure`` and an explicit Agg canvas, never through pyplot:
nothing is registered in pyplot's global figure list (so nothing leaks or needs closing) and the user's
backend, say inline in a notebook, is untouched. Each comes back as a base64 PNG ``data:`` URI for a
self-contained page (:mod:`torchkiln.components.classification_report`).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import Tensor

from torchkiln.components.classification_metrics import ECE_BINS, ClassificationMetrics, pr_curves, roc_curves

MANY_CLASSES = 20  # above this: no counts in the confusion matrix, short curve legends
HIGHLIGHTED = 5  # with many classes, only the worst curves get a colour and a legend entry
_CURVE_TEXT = {  # kind -> x label, y label, score in the legend, title
    "roc": ("False positive rate", "True positive rate", "AUC", "ROC (one-vs-rest)"),
    "pr": ("Recall", "Precision", "AP", "Precision-recall (one-vs-rest)"),
}

Curves = list[tuple[np.ndarray, np.ndarray]]  # per class: (x, y) of a curve
_GAP_STYLE = {"facecolor": "none", "edgecolor": "#cf222e", "hatch": "///", "linewidth": 1.0}


def format_score(value: float) -> str:
    """A score as the report shows it: three decimals, a dash when undefined (``nan``)."""
    return "—" if math.isnan(value) else f"{value:.3f}"


def report_plots(m: ClassificationMetrics, probs: Tensor, targets: Tensor, rule: str) -> dict[str, str]:
    """The confusion matrix, ROC and PR curves and reliability diagram as PNG ``data:`` URIs; a two-class
    task's operating point (``m.binary``, described by ``rule``) is marked on its ROC and PR curves."""
    names = [c.name for c in m.per_class]
    support = [c.support for c in m.per_class]
    roc = [(fpr.numpy(), tpr.numpy()) for fpr, tpr in roc_curves(probs, targets)]
    pr = [(recall.numpy(), precision.numpy()) for precision, recall in pr_curves(probs, targets)]
    # Average precision: the area under the step-wise PR curve, as torchmetrics computes it.
    ap = [float(-np.sum((r[1:] - r[:-1]) * p[:-1])) for r, p in pr]
    auc = [c.auc for c in m.per_class]
    b = m.binary
    pos = names.index(b.positive) if b is not None else -1
    # The operating point on the positive class's curves: (FPR, TPR) on the ROC, (recall, precision) on PR.
    roc_point = Point(pos, 1 - b.specificity.value, b.sensitivity.value, rule) if b else None
    pr_point = Point(pos, b.sensitivity.value, b.ppv.value, rule) if b else None
    return {
        "confusion": _confusion_png(m),
        "roc": _curves_png(
            roc, names, auc, [c for c, s in enumerate(support) if 0 < s < len(targets)], "roc", roc_point
        ),
        "pr": _curves_png(pr, names, ap, [c for c, s in enumerate(support) if s > 0], "pr", pr_point),
        "reliability": _reliability_png(probs, targets, m.ece),
    }


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure) -> str:
    """Render ``fig`` (a ``matplotlib.figure.Figure``, never pyplot) as a base64 PNG ``data:`` URI."""
    return _png(fig)


def _png(fig: Figure) -> str:  # tests stub this out (monkeypatch) to skip the slow drawing
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # attach an Agg canvas to this figure only; the global backend is untouched
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return data_uri(buf.getvalue())


def plot_label(name: str, width: int = 20) -> str:
    """``name`` for a plot: cut to ``width`` characters, ``$`` escaped."""
    # Truncate long names; escape "$" so matplotlib does not read a class name as mathtext.
    short = name if len(name) <= width else name[: width - 1] + "…"
    return short.replace("$", r"\$")


def _confusion_png(m: ClassificationMetrics) -> str:
    cm = np.asarray(m.confusion_matrix, dtype=np.int64)  # (K, K), rows = true class
    k = len(cm)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)  # colour = share of the true class
    side = min(3.0 + 0.45 * k, 12.0)
    fig = Figure(figsize=(side + 1.6, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if k <= 60:
        labels = [plot_label(c.name) for c in m.per_class]
        small = "small" if k <= MANY_CLASSES else 6
        ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=small)
        ax.set_yticks(range(k), labels, fontsize=small)
    if k <= MANY_CLASSES:
        size = "medium" if k <= 10 else "small"
        for (i, j), count in np.ndenumerate(cm):
            color = "white" if frac[i, j] > 0.5 else "#1f2328"
            ax.text(j, i, f"{count:,}", ha="center", va="center", color=color, fontsize=size)
    ax.set(
        xlabel="Predicted class", ylabel="True class", title="Confusion matrix (counts; colour = row share)"
    )
    return _png(fig)


@dataclass(frozen=True)
class Point:
    """A two-class task's operating point on the curve of class ``cls``."""

    cls: int
    x: float
    y: float
    label: str


def _curves_png(
    curves: Curves, names: list[str], scores: list[float], shown: list[int], kind: str, point: Point | None
) -> str:
    """Draw ``(x, y)`` curves; with many classes only the ``HIGHLIGHTED`` lowest-scoring get colour."""
    xlabel, ylabel, score_name, title = _CURVE_TEXT[kind]
    many = len(shown) > MANY_CLASSES
    colored = sorted(shown, key=lambda c: scores[c])[:HIGHLIGHTED] if many else shown
    fig = Figure(figsize=(6.4, 5.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    if many:
        others = [np.column_stack(curves[c]) for c in shown if c not in set(colored)]  # (P, 2) each
        ax.add_collection(LineCollection(others, colors="0.78", linewidths=0.6))
        ax.plot([], [], color="0.78", label=f"{len(shown) - len(colored)} other classes")
    palette = matplotlib.colormaps["tab10" if len(colored) <= 10 else "tab20"]
    for n, c in enumerate(colored):
        label = f"{plot_label(names[c])} ({score_name} {scores[c]:.3f})"
        ax.plot(curves[c][0], curves[c][1], color=palette(n), lw=1.5, label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    if point is not None and point.cls in shown and not (math.isnan(point.x) or math.isnan(point.y)):
        ax.plot(
            point.x,
            point.y,
            "o",
            ms=9,
            mfc="none",
            mec="#cf222e",
            mew=2,
            clip_on=False,
            zorder=5,
            label=f"at {point.label}",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(
            loc="lower right" if kind == "roc" else "best",  # PR curves have no reliably empty corner
            fontsize="small",
            title=f"lowest {len(colored)} by {score_name}" if many else None,
        )
    return _png(fig)


def _reliability_png(probs: Tensor, targets: Tensor, ece: float) -> str:
    conf, pred = probs.max(dim=1)  # (N,)
    correct = (pred == targets).double()
    edges = torch.linspace(0, 1, ECE_BINS + 1)
    # The same bins as the ECE; a confidence of exactly 1 goes into the last bin.
    bins = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS).double()
    acc = (torch.bincount(bins, weights=correct, minlength=ECE_BINS) / count.clamp(min=1)).numpy()
    mean_conf = (torch.bincount(bins, weights=conf.double(), minlength=ECE_BINS) / count.clamp(min=1)).numpy()
    count, filled = count.numpy(), count.numpy() > 0
    centers, width = (edges[:-1] + edges[1:]).numpy() / 2, 1.0 / ECE_BINS
    fig = Figure(figsize=(6.4, 5.4), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centers[filled], acc[filled], width=width, color="#4c8bf5", edgecolor="white", label="accuracy")
    gap = (mean_conf - acc)[filled]
    top.bar(centers[filled], gap, bottom=acc[filled], width=width, label="gap to confidence", **_GAP_STYLE)
    top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    top.set(
        ylim=(0, 1),
        ylabel="Accuracy",
        title=f"Reliability diagram (ECE {format_score(ece)}, {ECE_BINS} bins)",
    )
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(centers, count, width=width, color="0.55", edgecolor="white")
    bottom.set(xlim=(0, 1), xlabel="Confidence (max probability)", ylabel="Samples")
    return _png(fig)
