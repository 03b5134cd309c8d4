"""Evaluate a classifier bundle (image or text) on a data split: metrics.json and the HTML report; and
choose a two-class classifier's operating point on the val split after training.

Shared by the classification families: ``Task.evaluate`` of each calls :func:`evaluate_classifier`, its
``calibrate`` :func:`choose_operating_point` and its ``calibrated_config`` :func:`with_operating_point`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchkiln.artifacts.bundle import Bundle, without_pretrained
from torchkiln.components.classification_baseline import BaselineComparison
from torchkiln.components.classification_metrics import (
    BinaryMetrics,
    ClassificationMetrics,
    classification_metrics,
    predictions,
)
from torchkiln.components.classification_report import write_report
from torchkiln.components.classification_threshold import choose_threshold, decision_of, positive_index
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError, PredictError
from torchkiln.tasks.base import Explainer, Task, validate
from torchkiln.tasks.classification_baseline import compare_on_split, wanted

log = logging.getLogger("torchkiln.train")


@dataclass(frozen=True)
class EvalResult:
    """What ``kiln evaluate`` measured on a classifier; ``metrics_file`` holds all of it."""

    metrics: ClassificationMetrics
    report: Path
    metrics_file: Path
    split: str
    notes: tuple[str, ...] = ()
    chosen_by: str = ""  # where a two-class task's threshold came from
    baseline: BaselineComparison | None = None  # the linear baseline on the same split (evaluate.baseline)

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
        if m.binary is not None:
            lines += operating_lines(m.binary, self.chosen_by)
        if self.baseline is not None:
            lines.append(self.baseline.line())
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


def operating_lines(b: BinaryMetrics, chosen_by: str) -> list[str]:
    """``kiln evaluate``'s lines on a two-class task's operating point: the rule, then the four rates."""

    def rate(name: str, r: Any) -> str:
        if math.isnan(r.value):
            return f"{name} n/a (0 items)"
        return f"{name} {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] ({r.hits}/{r.total})"

    rule = f"threshold {b.threshold:.4g} on p('{b.positive}')" if b.threshold is not None else "argmax"
    why = f", chosen for {chosen_by}" if chosen_by else ""
    rates = ", ".join(
        rate(n, r)
        for n, r in (
            ("sensitivity", b.sensitivity),
            ("specificity", b.specificity),
            ("PPV", b.ppv),
            ("NPV", b.npv),
        )
    )
    return [f"at the operating point ({rule}{why}): {rates}; Brier {b.brier:.4f}; 95% Wilson intervals"]


@torch.inference_mode()
def collect_probs(
    model: nn.Module, task: Task, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, K)`` and targets ``(N,)`` for every item of ``loader``, in order."""
    model = model.to(device).eval()
    probs, targets = [], []
    for batch in loader:
        x, y = task.to_device(batch, device, channels_last=False)
        probs.append(model(x).float().softmax(dim=1).cpu())
        targets.append(y.cpu())
    return torch.cat(probs), torch.cat(targets)


def choose_operating_point(
    cfg: RunConfig,
    task: Task,
    model: nn.Module,
    loader: torch.utils.data.DataLoader | None,
    device: torch.device,
) -> dict[str, Any]:
    """After training: the threshold ``task.threshold`` asks for, chosen on the val split (``loader``).

    Returns:
        ``{"threshold": ...}`` (:class:`~torchkiln.components.classification_threshold.ThresholdChoice` as a
        dict, plus the positive class) for ``bundle.json``; ``{}`` without ``task.threshold``. A fixed
        value is measured on val when there is one.

    Raises:
        DataError: the val split cannot measure the target (``prepare`` refuses that before training).
    """
    t = getattr(cfg.task, "threshold", None)
    if t is None:
        return {}
    classes = list(cfg.data.classes or [])
    positive = classes[positive_index(classes, getattr(cfg.task, "positive_class", None))]
    if loader is None:
        if t.value is None:
            raise DataError(
                f"task.threshold asks for {t.describe()}, but the run has no val split to choose it on. "
                f"Expected val items: raise data.split.val, or give a fixed threshold "
                f"(task.threshold: {{value: 0.5}})."
            )
        return {"threshold": {"chosen": t.value, "target": "value", "positive_class": positive}}
    probs, targets = collect_probs(model, task, loader, device)
    pos = classes.index(positive)
    choice = choose_threshold(probs[:, pos], targets == pos, t)
    if not choice.met:
        best = getattr(choice, choice.target)
        log.warning(
            "task.threshold asks for %s; the best the model reaches on val is %.3f, at threshold %.4g, which "
            "the bundle uses. Train longer or on more data, or lower the target.",
            t.describe(),
            best,
            choice.chosen,
        )
    return {"threshold": {**choice.as_dict(), "positive_class": positive}}


def with_operating_point(cfg: RunConfig, calibration: Mapping[str, Any]) -> RunConfig:
    """The config a bundle is saved with: ``task.threshold.chosen`` and ``task.positive_class`` filled in
    from what :func:`choose_operating_point` found, so every answer of the bundle uses that threshold."""
    found = calibration.get("threshold")
    if not found:
        return cfg
    raw = cfg.model_dump(mode="json")
    raw["task"]["threshold"]["chosen"] = found["chosen"]
    raw["task"]["positive_class"] = found["positive_class"]
    return validate(raw)


def chosen_by(bundle: Bundle) -> str:
    """Where the bundle's threshold comes from, with what it measured on val when bundle.json has it."""
    t = getattr(bundle.config.task, "threshold", None)
    if t is None:
        return ""
    found = bundle.meta.get("calibration", {}).get("threshold") or {}
    target = found.get("target")
    if target not in ("recall", "precision", "specificity") or found.get(target) is None:
        return t.describe()
    missed = "" if found.get("met", True) else "; not met, the closest val reached"
    return f"{t.describe()} (val {target} {found[target]:.3f}, {found.get('positives')} positives{missed})"


def mistake_heatmaps(
    bundle: Bundle, image: Callable[[int], np.ndarray], device: torch.device | None
) -> Callable[[int, str], np.ndarray | None] | None:
    """The report gallery's Grad-CAM heatmaps: sample ``i``'s for class ``predicted``, the size of image(i).

    None when the bundle cannot explain (a task without ``explain``, an exported variant); a model without
    convolutions gets None per sample, and its gallery shows the images alone.
    """
    task, cfg = bundle.task, bundle.config
    if not isinstance(task, Explainer) or bundle.meta.get("runtime", "torch") != "torch":
        return None
    classes, refused = list(cfg.data.classes or []), []

    def heatmap(i: int, predicted: str) -> np.ndarray | None:
        if refused:
            return None
        img = image(i)  # (H, W) or (H, W, 3) uint8, as the model saw it
        x = torch.from_numpy(img[:, :, None] if img.ndim == 2 else img).permute(2, 0, 1)[None]  # (1, C, H, W)
        try:
            target = classes.index(predicted)
            cams = task.explain(cfg, bundle.model, x.to(device or torch.device("cpu")), target=target)
        except PredictError:  # no convolutional layer
            refused.append(i)
            return None
        return cams.heatmaps[0].numpy()

    return heatmap


def evaluate_classifier(
    bundle: Bundle, *, split: str, out_dir: Path, device: torch.device | None = None
) -> EvalResult:
    """Evaluate ``bundle`` on ``split`` of the data its config names; writes metrics.json and report.html.

    Raises:
        DataError: the split is empty.
    """
    cfg, task = bundle.config, bundle.task
    # The baseline is fit on train (C chosen on val): those splits are read too when it is wanted.
    splits = {split, "train", "val"} if wanted(cfg, task) else {split}
    # Resolved already: channels, stats; the bundle's own state (a tokenizer) is reused, not refit.
    _, data = task.prepare(without_pretrained(cfg), splits=splits, state=bundle.state)
    part = data.splits[split]
    if len(part) == 0:
        raise DataError(
            f"The {split} split of '{cfg.data.path}' is empty, so there is nothing to evaluate. "
            f"Use --split val, or give the data a {split} split (data.split.{split} > 0)."
        )
    loader = task.loader(cfg, data, split, train=False)
    probs, targets = collect_probs(bundle.model, task, loader, device or torch.device("cpu"))

    def image(i: int) -> np.ndarray:
        img = part.images[i] if part.images is not None else task.preprocess(cfg, [part.paths[i]])[0]  # type: ignore[index]
        arr = img.numpy()
        return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)  # (H, W) or (H, W, 3)

    texts = getattr(part, "texts", None)  # text tasks keep the texts for the report
    classes = list(cfg.data.classes or [])
    positive = positive_index(classes, getattr(cfg.task, "positive_class", None))
    decision = decision_of(cfg.task, classes)
    metrics = classification_metrics(probs, targets, classes, decision=decision, positive=positive)
    baseline = compare_on_split(cfg, task, data, split, predictions(probs, decision).numpy(), targets.numpy())
    why = chosen_by(bundle)
    report = write_report(
        out_dir,
        metrics,
        probs,
        targets,
        list(cfg.data.classes or []),
        images=None if texts is not None else image,
        heatmaps=None if texts is not None else mistake_heatmaps(bundle, image, device),
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
        chosen_by=why,
        baseline=baseline,
    )
    return EvalResult(metrics, report, out_dir / "metrics.json", split, chosen_by=why, baseline=baseline)
