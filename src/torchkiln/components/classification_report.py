"""A self-contained HTML evaluation report: numbers, plots and the most confident mistakes.

The page embeds every image as a base64 PNG and uses no external CSS, JS or fonts, so it can be
mailed, archived with a run, or opened offline. Figures are built with ``matplotlib.figure.Figure``
and an explicit Agg canvas, never through pyplot: nothing is registered in pyplot's global figure
list (so nothing leaks or needs closing) and the user's backend, say inline in a notebook, is untouched.
The HTML is the Jinja2 template ``classification_report.html.j2`` (:mod:`torchkiln.components.html`): this
module computes the values (formatted numbers, plots as ``data:`` URIs, tables as lists of dicts) and the
template lays them out and escapes them.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from torchkiln.components.classification_metrics import (
    ECE_BINS,
    ClassificationMetrics,
    check_inputs,
    pr_curves,
    roc_curves,
)
from torchkiln.components.html import render
from torchkiln.core.errors import DataError, KilnError
from torchkiln.core.io import atomic_write_text

MANY_CLASSES = 20  # above this: no counts in the confusion matrix, short curve legends
HIGHLIGHTED = 5  # with many classes, only the worst curves get a colour and a legend entry
THUMB_MIN, THUMB_MAX = 96, 128  # thumbnail size in pixels
_CURVE_TEXT = {  # kind -> x label, y label, score in the legend, title
    "roc": ("False positive rate", "True positive rate", "AUC", "ROC (one-vs-rest)"),
    "pr": ("Recall", "Precision", "AP", "Precision-recall (one-vs-rest)"),
}

Curves = list[tuple[np.ndarray, np.ndarray]]  # per class: (x, y) of a curve
ImageFn = Callable[[int], np.ndarray]  # sample index -> uint8 (H, W) or (H, W, C)
_GAP_STYLE = {"facecolor": "none", "edgecolor": "#cf222e", "hatch": "///", "linewidth": 1.0}


def write_report(
    out_dir: Path,
    metrics: ClassificationMetrics,
    probs: Tensor,
    targets: Tensor,
    class_names: list[str],
    *,
    images: Callable[[int], np.ndarray] | None = None,
    texts: Callable[[int], str] | None = None,
    sources: Callable[[int], str] | None = None,
    mistakes: int = 24,
    title: str = "Evaluation report",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    The page shows the headline numbers, a per-class table, the confusion matrix, one-vs-rest ROC
    and precision-recall curves, a reliability diagram and the most confident mistakes, each named by
    its source. ``metrics.json`` holds the numbers and every wrong prediction (``mistakes``, most
    confident first, each with its ``source``). Both files are written atomically (temporary file in
    ``out_dir``, then ``os.replace``).

    Args:
        out_dir: folder to write into; created if missing.
        metrics: the result of :func:`classification_metrics` on the same ``probs`` and ``targets``.
        probs: ``(N, K)`` probabilities.
        targets: ``(N,)`` class indices.
        class_names: ``K`` names, in class-index order.
        images: ``images(i)`` returns sample ``i`` as a uint8 ``(H, W)`` or ``(H, W, C)`` array;
            ``None`` lists the mistakes without thumbnails.
        texts: ``texts(i)`` returns sample ``i`` as text (text tasks): the mistakes table shows it,
            and ``metrics.json`` lists it with each mistake.
        sources: ``sources(i)`` says where sample ``i`` comes from: its file path, a file and line
            (``reviews.csv:42``), or its place in an in-memory split (``test[159]``). ``None``: ``#i``.
        mistakes: how many wrong predictions the page shows, highest confidence first
            (``metrics.json`` lists them all).
        title: page title.
        extra: small key/value table shown under the title (model, bundle, split, ...).

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: if the inputs are inconsistent or ``images`` returns something that is not an image.
        KilnError: if ``mistakes`` is negative.

    Example:
        >>> metrics = classification_metrics(probs, targets, names)
        >>> write_report(Path("runs/exp1/eval"), metrics, probs, targets, names, extra={"split": "test"})
    """
    probs, targets = check_inputs(probs, targets, num_classes=len(class_names))
    if metrics.num_samples != len(targets) or len(metrics.per_class) != len(class_names):
        raise DataError(
            f"The metrics cover {metrics.num_samples} samples and {len(metrics.per_class)} classes, but "
            f"probs has {len(targets)} samples and there are {len(class_names)} class names. Compute the "
            "metrics with classification_metrics() on the same probs, targets and class names."
        )
    if mistakes < 0:
        raise KilnError(
            f"The 'mistakes' parameter of write_report must be an int >= 0. Got {mistakes} instead."
        )
    extra = {str(key): str(value) for key, value in (extra or {}).items()}
    wrong = _wrong(probs, targets, class_names, texts, sources)
    gallery = _gallery(wrong[:mistakes], images, texts is not None)  # a bad images() fails fast
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **metrics.to_dict(), "extra": extra, "mistakes": wrong}
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    page = render(
        "classification_report.html.j2",
        title=title,
        extra=extra,
        cards=_headline(metrics),
        notes=_notes(metrics),
        classes=_class_rows(metrics),
        plots=_plots(metrics, probs, targets),
        wrong=f"{len(wrong):,}",
        **gallery,
    )
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


# ---- values for the template -----------------------------------------------------------------------
# Numbers arrive in the template formatted, names and texts as plain text: the template escapes them.


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def _headline(m: ClassificationMetrics) -> list[tuple[str, str]]:
    """The headline cards: (label, formatted value) pairs."""
    cards = [
        ("Accuracy", _fmt(m.accuracy)),
        ("Macro precision", _fmt(m.macro_precision)),
        ("Macro recall", _fmt(m.macro_recall)),
        ("Macro F1", _fmt(m.macro_f1)),
        ("Macro AUC", _fmt(m.macro_auc)),
        (f"ECE ({ECE_BINS} bins)", _fmt(m.ece)),
        ("Samples", f"{m.num_samples:,}"),
    ]
    if m.binary is not None:
        b = m.binary
        cards[1:1] = [(f"F1 ('{b.positive}')", _fmt(b.f1)), (f"AUC ('{b.positive}')", _fmt(b.auc))]
    return cards


def _notes(m: ClassificationMetrics) -> dict[str, list[str]]:
    """Class names without samples, owning every sample, and never predicted (the template words them)."""
    predicted = np.asarray(m.confusion_matrix).sum(axis=0)  # (K,) how often each class was predicted
    return {
        "empty": [c.name for c in m.per_class if c.support == 0],
        "only": [c.name for c in m.per_class if c.support == m.num_samples],
        "never": [c.name for c, n in zip(m.per_class, predicted, strict=True) if n == 0],
    }


def _class_rows(m: ClassificationMetrics) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "precision": _fmt(c.precision),
            "recall": _fmt(c.recall),
            "f1": _fmt(c.f1),
            "support": f"{c.support:,}",
            "auc": _fmt(c.auc),
            "empty": c.support == 0,  # no samples: recall and AUC are undefined
        }
        for c in m.per_class
    ]


def _plots(m: ClassificationMetrics, probs: Tensor, targets: Tensor) -> dict[str, str]:
    """The confusion matrix, ROC and PR curves and reliability diagram as PNG ``data:`` URIs."""
    names = [c.name for c in m.per_class]
    support = [c.support for c in m.per_class]
    roc = [(fpr.numpy(), tpr.numpy()) for fpr, tpr in roc_curves(probs, targets)]
    pr = [(recall.numpy(), precision.numpy()) for precision, recall in pr_curves(probs, targets)]
    # Average precision: the area under the step-wise PR curve, as torchmetrics computes it.
    ap = [float(-np.sum((r[1:] - r[:-1]) * p[:-1])) for r, p in pr]
    auc = [c.auc for c in m.per_class]
    return {
        "confusion": _confusion_png(m),
        "roc": _curves_png(
            roc, names, auc, [c for c, s in enumerate(support) if 0 < s < len(targets)], "roc"
        ),
        "pr": _curves_png(pr, names, ap, [c for c, s in enumerate(support) if s > 0], "pr"),
        "reliability": _reliability_png(probs, targets, m.ece),
    }


def _wrong(
    probs: Tensor,
    targets: Tensor,
    names: list[str],
    texts: Callable[[int], str] | None,
    sources: Callable[[int], str] | None,
) -> list[dict[str, Any]]:
    """Every wrong prediction, most confident first, as ``metrics.json`` lists it."""
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    wrong = (pred != targets).nonzero().squeeze(1)
    order = wrong[conf[wrong].argsort(descending=True, stable=True)].tolist()
    rows = []
    for i in order:
        t, p = int(targets[i]), int(pred[i])
        row: dict[str, Any] = {
            "index": i,  # position in the evaluated split, the order the loader gave
            "source": sources(i) if sources is not None else f"#{i}",
            "true": names[t],
            "predicted": names[p],
            "confidence": round(float(conf[i]), 6),
            "p_true": round(float(probs[i, t]), 6),
        }
        if texts is not None:
            row["text"] = texts(i)
        rows.append(row)
    return rows


def _gallery(shown: list[dict[str, Any]], images: ImageFn | None, texts: bool) -> dict[str, Any]:
    """The mistakes the page shows, as template values: numbers formatted, thumbnails drawn here."""
    rows = []
    for m in shown:
        row = m | {"confidence": f"{m['confidence']:.3f}", "p_true": f"{m['p_true']:.3f}"}
        if images is not None:
            row["thumbnail"] = _thumbnail(images(m["index"]), m["index"])
        rows.append(row)
    return {"mistakes": rows, "thumbnails": images is not None, "texts": texts}


# ---- images and plots ------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(image: np.ndarray, index: int) -> str:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise DataError(
            f"images({index}) must return a uint8 array of shape (H, W) or (H, W, C) with C in 1, 3, 4. "
            f"Got {arr.dtype} of shape {arr.shape} instead. Return the raw image before normalization; "
            "a (C, H, W) tensor becomes x.permute(1, 2, 0).numpy()."
        )
    img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if max(img.size) < THUMB_MIN:  # tiny images (MNIST, CIFAR): enlarge with crisp pixels
        scale = math.ceil(THUMB_MIN / max(img.size))
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    img.thumbnail((THUMB_MAX, THUMB_MAX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _data_uri(buf.getvalue())


def figure_png(fig: Figure) -> str:
    """Render ``fig`` (a ``matplotlib.figure.Figure``, never pyplot) as a base64 PNG ``data:`` URI."""
    return _png(fig)


def _png(fig: Figure) -> str:  # tests stub this out (monkeypatch) to skip the slow drawing
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # attach an Agg canvas to this figure only; the global backend is untouched
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return _data_uri(buf.getvalue())


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


def _curves_png(curves: Curves, names: list[str], scores: list[float], shown: list[int], kind: str) -> str:
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
    top.set(ylim=(0, 1), ylabel="Accuracy", title=f"Reliability diagram (ECE {_fmt(ece)}, {ECE_BINS} bins)")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(centers, count, width=width, color="0.55", edgecolor="white")
    bottom.set(xlim=(0, 1), xlabel="Confidence (max probability)", ylabel="Samples")
    return _png(fig)
