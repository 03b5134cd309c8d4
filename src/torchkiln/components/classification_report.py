"""A self-contained HTML evaluation report: numbers, plots and the most confident mistakes.

The page embeds every image as a base64 PNG and uses no external CSS, JS or fonts, so it can be
mailed, archived with a run, or opened offline. The plots are drawn in
:mod:`torchkiln.components.classification_plots`, which also gives the other reports ``figure_png`` and
``plot_label`` (importable from here too). The HTML is the Jinja2 template
``classification_report.html.j2`` (:mod:`torchkiln.components.html`): this module computes the values
(formatted numbers, plots as ``data:`` URIs, tables as lists of dicts) and the template lays them out and
escapes them.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from torchkiln.components.classification_baseline import BaselineComparison, Difference
from torchkiln.components.classification_metrics import (
    ECE_BINS,
    BinaryMetrics,
    ClassificationMetrics,
    Rate,
    check_inputs,
    predictions,
)
from torchkiln.components.classification_plots import (
    data_uri,
    figure_png,
    format_score,
    plot_label,
    report_plots,
)
from torchkiln.components.classification_threshold import Decision
from torchkiln.components.gradcam import overlay
from torchkiln.components.html import render
from torchkiln.core.errors import DataError, KilnError
from torchkiln.core.io import atomic_write_text

__all__ = ["figure_png", "plot_label", "write_report"]  # the plot helpers other reports import from here

THUMB_MIN, THUMB_MAX = 96, 128  # thumbnail size in pixels
ImageFn = Callable[[int], np.ndarray]  # sample index -> uint8 (H, W) or (H, W, C)
HeatmapFn = Callable[[int, str], np.ndarray | None]  # (sample index, class name) -> (H, W) in [0, 1]


def write_report(
    out_dir: Path,
    metrics: ClassificationMetrics,
    probs: Tensor,
    targets: Tensor,
    class_names: list[str],
    *,
    images: Callable[[int], np.ndarray] | None = None,
    heatmaps: HeatmapFn | None = None,
    texts: Callable[[int], str] | None = None,
    sources: Callable[[int], str] | None = None,
    mistakes: int = 24,
    title: str = "Evaluation report",
    extra: dict[str, str] | None = None,
    chosen_by: str = "",
    baseline: BaselineComparison | None = None,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html``.

    The page shows the headline numbers, a per-class table, the confusion matrix, one-vs-rest ROC
    and precision-recall curves, a reliability diagram and the most confident mistakes, each named by
    its source. A two-class task also gets its operating point (``metrics.binary``: the threshold or
    argmax, sensitivity, specificity, PPV and NPV with 95 % Wilson intervals, the Brier score), marked on
    the ROC and PR curves; predictions and mistakes are taken at it. ``metrics.json`` holds the numbers
    and every wrong prediction (``mistakes``, most confident first, each with its ``source``). Both files
    are written atomically (temporary file in ``out_dir``, then ``os.replace``).

    Args:
        out_dir: folder to write into; created if missing.
        metrics: the result of :func:`classification_metrics` on the same ``probs`` and ``targets``.
        probs: ``(N, K)`` probabilities.
        targets: ``(N,)`` class indices.
        class_names: ``K`` names, in class-index order.
        images: ``images(i)`` returns sample ``i`` as a uint8 ``(H, W)`` or ``(H, W, C)`` array;
            ``None`` lists the mistakes without thumbnails.
        heatmaps: ``heatmaps(i, predicted)`` returns a ``(H, W)`` Grad-CAM heatmap in [0, 1] of sample ``i``
            for the class name ``predicted``, the size of ``images(i)``, or None; the gallery shows it
            over the image, under its thumbnail. ``None`` (text tasks, models that cannot explain): none.
        texts: ``texts(i)`` returns sample ``i`` as text (text tasks): the mistakes table shows it,
            and ``metrics.json`` lists it with each mistake.
        sources: ``sources(i)`` says where sample ``i`` comes from: its file path, a file and line
            (``reviews.csv:42``), or its place in an in-memory split (``test[159]``). ``None``: ``#i``.
        mistakes: how many wrong predictions the page shows, highest confidence first
            (``metrics.json`` lists them all).
        title: page title.
        extra: small key/value table shown under the title (model, bundle, split, ...).
        chosen_by: where a two-class task's threshold comes from (``recall >= 0.95 on val (val recall
            0.955)``), shown with the operating point and saved as ``binary.chosen_by``.
        baseline: the model beside a linear baseline on the same items
            (:func:`~torchkiln.components.classification_baseline.compare`): a section near the top, and
            ``baseline`` in ``metrics.json``; None: neither.

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
    preds = predictions(probs, _decision(metrics.binary, class_names))
    wrong = _wrong(probs, targets, preds, class_names, texts, sources)
    gallery = _gallery(wrong[:mistakes], images, texts is not None, heatmaps)  # a bad images() fails fast
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **metrics.to_dict(), "extra": extra, "mistakes": wrong}
    if payload["binary"] is not None:
        payload["binary"]["chosen_by"] = chosen_by or _rule(metrics.binary)
    if baseline is not None:
        payload["baseline"] = baseline.to_dict()
    atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    page = render(
        "classification_report.html.j2",
        title=title,
        extra=extra,
        cards=_headline(metrics),
        notes=_notes(metrics),
        classes=_class_rows(metrics),
        operating=_operating(metrics.binary, chosen_by),
        baseline=_baseline(baseline),
        plots=report_plots(metrics, probs, targets, _rule(metrics.binary)),
        wrong=f"{len(wrong):,}",
        **gallery,
    )
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


# ---- values for the template -----------------------------------------------------------------------
# Numbers arrive in the template formatted, names and texts as plain text: the template escapes them.


def _headline(m: ClassificationMetrics) -> list[tuple[str, str]]:
    """The headline cards: (label, formatted value) pairs."""
    cards = [
        ("Accuracy", format_score(m.accuracy)),
        ("Macro precision", format_score(m.macro_precision)),
        ("Macro recall", format_score(m.macro_recall)),
        ("Macro F1", format_score(m.macro_f1)),
        ("Macro AUC", format_score(m.macro_auc)),
        (f"ECE ({ECE_BINS} bins)", format_score(m.ece)),
        ("Samples", f"{m.num_samples:,}"),
    ]
    if m.binary is not None:
        b = m.binary
        cards[1:1] = [
            (f"F1 ('{b.positive}')", format_score(b.f1)),
            (f"AUC ('{b.positive}')", format_score(b.auc)),
        ]
    return cards


def _decision(b: BinaryMetrics | None, names: list[str]) -> Decision | None:
    return (
        Decision(names.index(b.positive), b.threshold) if b is not None and b.threshold is not None else None
    )


def _rule(b: BinaryMetrics | None) -> str:
    if b is None or b.threshold is None:
        return "argmax (no task.threshold)"
    return f"p('{b.positive}') >= {b.threshold:.4g}"


def _rate(r: Rate) -> dict[str, str]:
    interval = "—" if math.isnan(r.low) else f"{r.low:.3f} – {r.high:.3f}"
    return {"value": format_score(r.value), "interval": interval, "count": f"{r.hits:,} / {r.total:,}"}


def _operating(b: BinaryMetrics | None, chosen_by: str) -> dict[str, Any] | None:
    """A two-class task's operating point for the template: the rule, where it came from, the rates."""
    if b is None:
        return None
    rates = [
        ("Sensitivity (recall)", "TP / (TP + FN)", b.sensitivity),
        ("Specificity", "TN / (TN + FP)", b.specificity),
        ("PPV (precision)", "TP / (TP + FP)", b.ppv),
        ("NPV", "TN / (TN + FN)", b.npv),
    ]
    return {
        "rule": _rule(b),
        "chosen_by": chosen_by,
        "interval": b.interval,
        "rates": [{"name": n, "formula": f} | _rate(r) for n, f, r in rates],
        "counts": f"TP {b.tp:,}  FP {b.fp:,}  TN {b.tn:,}  FN {b.fn:,}",
        "brier": format_score(b.brier),
    }


def _baseline(c: BaselineComparison | None) -> dict[str, Any] | None:
    """The baseline section: both classifiers' scores, the differences with their intervals, the verdict."""
    if c is None:
        return None

    def diff(d: Difference) -> dict[str, str]:
        return {
            "value": f"{100 * d.value:+.2f}",
            "interval": f"{100 * d.low:+.2f} – {100 * d.high:+.2f}",
            "p": f"{d.p_not_better:.3f}",
        }

    return {
        "name": c.name,
        "detail": c.detail,
        "verdict": c.verdict,
        "line": c.line(),
        "resamples": f"{c.resamples:,}",
        "rows": [
            {
                "metric": "Accuracy",
                "model": format_score(c.model_accuracy),
                "baseline": format_score(c.accuracy),
            }
            | diff(c.accuracy_difference),
            {
                "metric": "Macro F1",
                "model": format_score(c.model_macro_f1),
                "baseline": format_score(c.macro_f1),
            }
            | diff(c.macro_f1_difference),
        ],
    }


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
            "precision": format_score(c.precision),
            "recall": format_score(c.recall),
            "f1": format_score(c.f1),
            "support": f"{c.support:,}",
            "auc": format_score(c.auc),
            "empty": c.support == 0,  # no samples: recall and AUC are undefined
        }
        for c in m.per_class
    ]


def _wrong(
    probs: Tensor,
    targets: Tensor,
    pred: Tensor,
    names: list[str],
    texts: Callable[[int], str] | None,
    sources: Callable[[int], str] | None,
) -> list[dict[str, Any]]:
    """Every wrong prediction (``pred``: (N,), argmax or at the operating point), most confident first, as
    ``metrics.json`` lists it; the confidence is the probability of the predicted class."""
    conf = probs.gather(1, pred[:, None]).squeeze(1)  # (N,)
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


def _gallery(
    shown: list[dict[str, Any]], images: ImageFn | None, texts: bool, heatmaps: HeatmapFn | None = None
) -> dict[str, Any]:
    """The mistakes the page shows, as template values: numbers formatted, thumbnails (and the predicted
    class's Grad-CAM heatmap over the image, when ``heatmaps`` draws one) drawn here."""
    rows = []
    for m in shown:
        row = m | {"confidence": f"{m['confidence']:.3f}", "p_true": f"{m['p_true']:.3f}"}
        if images is not None:
            image = images(m["index"])
            row["thumbnail"] = _thumbnail(image, m["index"])
            heat = heatmaps(m["index"], m["predicted"]) if heatmaps is not None else None
            if heat is not None:
                row["heatmap"] = _thumbnail(overlay(image, heat), m["index"])
        rows.append(row)
    shows_heat = any("heatmap" in row for row in rows)
    return {"mistakes": rows, "thumbnails": images is not None, "texts": texts, "heatmaps": shows_heat}


# ---- thumbnails ------------------------------------------------------------------------------------


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
    return data_uri(buf.getvalue())
