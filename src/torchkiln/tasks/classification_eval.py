"""Evaluate a classifier bundle (image or text) on a data split: metrics.json and the HTML report.

Shared by the classification families; ``Task.evaluate`` of each calls :func:`evaluate_classifier`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkiln.artifacts.bundle import Bundle, without_pretrained
from torchkiln.components.classification_metrics import ClassificationMetrics, classification_metrics
from torchkiln.components.classification_report import write_report
from torchkiln.core.errors import DataError


@dataclass(frozen=True)
class EvalResult:
    """What ``kiln evaluate`` measured on a classifier; ``metrics_file`` holds all of it."""

    metrics: ClassificationMetrics
    report: Path
    metrics_file: Path
    split: str
    notes: tuple[str, ...] = ()

    def summary(self) -> list[Any]:
        m = self.metrics
        # An undefined AUC is null in metrics.json; here it says so, and why, rather than printing nan.
        auc = "n/a" if math.isnan(m.macro_auc) else f"{m.macro_auc:.4f}"
        lines = [
            f"{self.split}: accuracy {m.accuracy:.4f}  macro-F1 {m.macro_f1:.4f}  "
            f"macro-AUC {auc}  ECE {m.ece:.4f}  (n={m.num_samples})"
        ]
        undefined = [c.name for c in m.per_class if math.isnan(c.auc)]
        if undefined:
            absent = [c.name for c in m.per_class if c.support == 0]
            why = (
                f"{', '.join(repr(n) for n in absent)} {'is' if len(absent) == 1 else 'are'} absent from the "
                f"{self.split} split"
                if absent
                else f"the {self.split} split holds only one class"
            )
            lines.append(
                f"ROC AUC is undefined (null in metrics.json) for {', '.join(repr(n) for n in undefined)}: "
                f"{why}. Macro-AUC averages the other classes."
                if len(undefined) < len(m.per_class)
                else f"ROC AUC is undefined (null in metrics.json) for every class: {why}."
            )
        return lines


def item_sources(part: Any, split: str, data_path: str) -> Callable[[int], str]:
    """Where item ``i`` of a split comes from, for the report and metrics.json.

    An image read from a file: its path. A text from a CSV/TSV/JSONL file: ``file:line``. An item of
    an in-memory catalog set has no file: ``test[159]``, its place in the split.
    """
    paths = getattr(part, "paths", None)  # image splits read from files
    if paths is not None:
        return lambda i: str(paths[i])
    rows = getattr(part, "rows", None)  # text splits: the line of each text in its file
    if rows is not None and Path(data_path).is_file():
        return lambda i: f"{data_path}:{rows[i]}"
    return lambda i: f"{split}[{i}]"


@torch.inference_mode()
def collect_probs(
    bundle: Bundle, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, K)`` and targets ``(N,)`` for every item of ``loader``, in order."""
    model = bundle.model.to(device).eval()
    probs, targets = [], []
    for batch in loader:
        x, y = bundle.task.to_device(batch, device, channels_last=False)
        probs.append(model(x).float().softmax(dim=1).cpu())
        targets.append(y.cpu())
    return torch.cat(probs), torch.cat(targets)


def evaluate_classifier(
    bundle: Bundle, *, split: str, out_dir: Path, device: torch.device | None = None
) -> EvalResult:
    """Evaluate ``bundle`` on ``split`` of the data its config names; writes metrics.json and report.html.

    Raises:
        DataError: the split is empty.
    """
    cfg, task = bundle.config, bundle.task
    # Resolved already: channels, stats; the bundle's own state (a tokenizer) is reused, not refit.
    _, data = task.prepare(without_pretrained(cfg), splits={split}, state=bundle.state)
    part = data.splits[split]
    if len(part) == 0:
        raise DataError(
            f"The {split} split of '{cfg.data.path}' is empty, so there is nothing to evaluate. "
            f"Use --split val, or give the data a {split} split (data.split.{split} > 0)."
        )
    loader = task.loader(cfg, data, split, train=False)
    probs, targets = collect_probs(bundle, loader, device or torch.device("cpu"))

    def image(i: int) -> np.ndarray:
        img = part.images[i] if part.images is not None else task.preprocess(cfg, [part.paths[i]])[0]  # type: ignore[index]
        arr = img.numpy()
        return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)  # (H, W) or (H, W, 3)

    texts = getattr(part, "texts", None)  # text tasks keep the texts for the report
    metrics = classification_metrics(probs, targets, list(cfg.data.classes or []))
    report = write_report(
        out_dir,
        metrics,
        probs,
        targets,
        list(cfg.data.classes or []),
        images=None if texts is not None else image,
        texts=texts.__getitem__ if texts is not None else None,
        sources=item_sources(part, split, cfg.data.path),
        mistakes=cfg.evaluate.mistakes,
        title=f"{cfg.run_name}: {split} split",
        extra={
            "bundle": str(bundle.path),
            "model": cfg.model.name,
            "data": cfg.data.path,
            "split": split,
            "trained": str(bundle.meta.get("trained", {}).get("epochs", "?")) + " epochs",
        },
    )
    return EvalResult(metrics, report, out_dir / "metrics.json", split)
