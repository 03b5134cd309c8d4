"""A self-contained HTML evaluation report: numbers, plots and the most confident mistakes.

The page embeds every image as a base64 PNG and uses no external CSS, JS or fonts, so it can be
mailed, archived with a run, or opened offline. Figures are built with ``matplotlib.figure.Figure``
and an explicit Agg canvas, never through pyplot: nothing is registered in pyplot's global figure
list (so nothing leaks or needs closing) and the user's backend, say inline in a notebook, is untouched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from torchkiln.errors import DataError, KilnError
from torchkiln.evaluation.metrics import ECE_BINS, ClassificationMetrics, check_inputs, pr_curves, roc_curves
from torchkiln.io import atomic_write_text

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

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0}
body{background:#f6f8fa}main{max-width:1120px;margin:0 auto;padding:24px}h1{margin:0 0 12px;font-size:26px}
h2{margin:32px 0 10px;font-size:19px;border-bottom:1px solid #d0d7de}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#59636e;font-size:12px;text-transform:uppercase}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de}tr.empty td{color:#8c959f}
th,td{padding:4px 12px;border-bottom:1px solid #eaeef2;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}table.kv td{text-align:left}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;margin:8px 0}
.good{color:#1a7f37}.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:16px}
.plots img,.wide img{max-width:100%;background:#fff;border:1px solid #d0d7de;border-radius:6px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.mistake{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px;width:150px}
figure.mistake img{display:block;margin:0 auto 6px;max-width:128px;image-rendering:pixelated}
figcaption{font-size:12px;word-wrap:break-word}.bad{color:#cf222e}.muted{color:#59636e}
"""


def write_report(
    out_dir: Path,
    metrics: ClassificationMetrics,
    probs: Tensor,
    targets: Tensor,
    class_names: list[str],
    *,
    images: Callable[[int], np.ndarray] | None = None,
    texts: Callable[[int], str] | None = None,
    mistakes: int = 24,
    title: str = "Evaluation report",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    The page shows the headline numbers, a per-class table, the confusion matrix, one-vs-rest ROC
    and precision-recall curves, a reliability diagram and the most confident mistakes. Both files
    are written atomically (temporary file in ``out_dir``, then ``os.replace``).

    Args:
        out_dir: folder to write into; created if missing.
        metrics: the result of :func:`classification_metrics` on the same ``probs`` and ``targets``.
        probs: ``(N, K)`` probabilities.
        targets: ``(N,)`` class indices.
        class_names: ``K`` names, in class-index order.
        images: ``images(i)`` returns sample ``i`` as a uint8 ``(H, W)`` or ``(H, W, C)`` array;
            ``None`` lists the mistakes without thumbnails.
        texts: ``texts(i)`` returns sample ``i`` as text (text tasks): the mistakes table shows it.
        mistakes: how many wrong predictions to show, highest confidence first.
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
    gallery = _gallery(probs, targets, class_names, images, texts, mistakes)  # a bad images() fails fast
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **metrics.to_dict(), "extra": extra}
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    body = [
        f"<h1>{esc(title)}</h1>",
        kv_table(extra),
        _headline(metrics),
        _notes(metrics),
        "<h2>Per-class metrics</h2>",
        _class_table(metrics),
        "<h2>Confusion matrix</h2>",
        f'<div class="wide">{img_tag(_confusion_png(metrics), "confusion matrix")}</div>',
        "<h2>Curves and calibration</h2>",
        _curves_section(metrics, probs, targets),
        gallery,
    ]
    path = out_dir / "report.html"
    atomic_write_text(path, html_page(title, body))
    return path


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained report page (inline CSS, no external assets) around HTML ``parts``."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(part for part in parts if part)
        + '\n<p class="muted">Generated by torchkiln.</p>\n</main></body></html>\n'
    )


# ---- HTML pieces ---------------------------------------------------------------------------------


# The pieces below are shared with the forecasting report (forecast_report.py).


def esc(value: object) -> str:
    """``value`` as HTML text, quotes escaped."""
    return html.escape(str(value), quote=True)


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def img_tag(data_uri: str, alt: str) -> str:
    """An ``<img>`` of a ``data:`` URI (from :func:`figure_png`)."""
    return f'<img src="{data_uri}" alt="{esc(alt)}">'


def kv_table(extra: dict[str, str]) -> str:
    """A two-column key/value table; empty string when there is nothing to show."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in extra.items())
    return f'<table class="kv">{rows}</table>' if rows else ""


def _headline(m: ClassificationMetrics) -> str:
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
    return headline_cards(cards)


def headline_cards(cards: Sequence[tuple[str, str]]) -> str:
    """A row of cards, each a label (escaped) over a value (HTML, already formatted)."""
    inner = "".join(f'<div class="card"><span>{esc(k)}</span><b>{v}</b></div>' for k, v in cards)
    return f'<div class="cards">{inner}</div>'


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"'{esc(n)}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _notes(m: ClassificationMetrics) -> str:
    empty = [c.name for c in m.per_class if c.support == 0]
    only = [c.name for c in m.per_class if c.support == m.num_samples]
    predicted = np.asarray(m.confusion_matrix).sum(axis=0)  # (K,) how often each class was predicted
    never = [c.name for c, n in zip(m.per_class, predicted, strict=True) if n == 0]
    notes = []
    if empty:
        notes.append(
            f"No samples of {_name_list(empty)}: recall and AUC are undefined for "
            "these classes (AUC shown as —, left out of the macro AUC)."
        )
    if only:
        notes.append(f"Every sample belongs to {_name_list(only)}, so its one-vs-rest AUC is undefined.")
    if never:
        notes.append(f"Never predicted: {_name_list(never)}.")
    return "".join(f'<p class="note">{note}</p>' for note in notes)


def _class_table(m: ClassificationMetrics) -> str:
    head = "<tr><th>Class</th><th>Precision</th><th>Recall</th><th>F1</th><th>Support</th><th>AUC</th></tr>"
    rows = []
    for c in m.per_class:
        attr = ' class="empty"' if c.support == 0 else ""  # no samples: recall and AUC are undefined
        rows.append(
            f"<tr{attr}><td>{esc(c.name)}</td><td>{_fmt(c.precision)}</td><td>{_fmt(c.recall)}</td>"
            f"<td>{_fmt(c.f1)}</td><td>{c.support:,}</td><td>{_fmt(c.auc)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _curves_section(m: ClassificationMetrics, probs: Tensor, targets: Tensor) -> str:
    names = [c.name for c in m.per_class]
    support = [c.support for c in m.per_class]
    roc = [(fpr.numpy(), tpr.numpy()) for fpr, tpr in roc_curves(probs, targets)]
    pr = [(recall.numpy(), precision.numpy()) for precision, recall in pr_curves(probs, targets)]
    # Average precision: the area under the step-wise PR curve, as torchmetrics computes it.
    ap = [float(-np.sum((r[1:] - r[:-1]) * p[:-1])) for r, p in pr]
    auc = [c.auc for c in m.per_class]
    roc_png = _curves_png(roc, names, auc, [c for c, s in enumerate(support) if 0 < s < len(targets)], "roc")
    pr_png = _curves_png(pr, names, ap, [c for c, s in enumerate(support) if s > 0], "pr")
    images = (
        img_tag(roc_png, "ROC curves"),
        img_tag(pr_png, "PR curves"),
        img_tag(_reliability_png(probs, targets, m.ece), "reliability diagram"),
    )
    return f'<div class="plots">{"".join(images)}</div>'


def _gallery(
    probs: Tensor,
    targets: Tensor,
    names: list[str],
    images: ImageFn | None,
    texts: Callable[[int], str] | None,
    limit: int,
) -> str:
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    wrong = (pred != targets).nonzero().squeeze(1)
    picked = wrong[conf[wrong].argsort(descending=True, stable=True)[:limit]].tolist()
    head = (
        f'<h2>Most confident mistakes</h2><p class="muted">The {len(picked)} most confident of '
        f"{len(wrong):,} wrong predictions.</p>"
    )
    if not picked:
        return head

    def cells(i: int) -> tuple[str, str, str, str]:
        t, p = int(targets[i]), int(pred[i])
        return esc(names[t]), esc(names[p]), f"{float(conf[i]):.3f}", f"{float(probs[i, t]):.3f}"

    if images is None:
        text = (lambda i: f"<td>{esc(texts(i))}</td>") if texts is not None else (lambda i: "")
        rows = "".join(
            f'<tr class="mistake"><td>#{i}</td>{text(i)}'
            + "".join(f"<td>{c}</td>" for c in cells(i))
            + "</tr>"
            for i in picked
        )
        return (
            f"{head}<table><tr><th>Sample</th>{'<th>Text</th>' if texts is not None else ''}<th>True</th>"
            f"<th>Predicted</th><th>Confidence</th><th>p(true)</th></tr>{rows}</table>"
        )
    figures = []
    for i in picked:
        true, predicted, confidence, p_true = cells(i)
        figures.append(
            f'<figure class="mistake">{img_tag(_thumbnail(images(i), i), f"sample {i}")}<figcaption>'
            f"<b>#{i}</b> · conf {confidence}<br>true: {true}<br>"
            f'<span class="bad">pred: {predicted}</span><br><span class="muted">p(true) {p_true}</span>'
            "</figcaption></figure>"
        )
    return f'{head}<div class="gallery">{"".join(figures)}</div>'


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
