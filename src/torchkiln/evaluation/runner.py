"""Run a bundle over a data split and write the evaluation report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchkiln.data.splits import SPLITS
from torchkiln.errors import DataError
from torchkiln.evaluation.forecast import ForecastEvalResult, evaluate_forecast
from torchkiln.evaluation.metrics import ClassificationMetrics, classification_metrics
from torchkiln.evaluation.report import write_report
from torchkiln.tasks.bundle import Bundle, without_pretrained


@dataclass(frozen=True)
class EvalResult:
    metrics: ClassificationMetrics
    report: Path
    metrics_file: Path
    split: str


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


def evaluate_bundle(
    bundle: Bundle, *, split: str, out_dir: Path, device: torch.device | None = None
) -> EvalResult | ForecastEvalResult:
    """Evaluate ``bundle`` on ``split`` of the data its config names; writes metrics.json and report.html.

    Classifiers get an :class:`EvalResult`; forecasters a
    :class:`~torchkiln.evaluation.forecast.ForecastEvalResult` (beside the baselines, same windows).

    Raises:
        DataError: the split is unknown or empty.
    """
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'. Expected one of {', '.join(SPLITS)}.")
    cfg, task = bundle.config, bundle.task
    if task.kind == "forecasting":
        return evaluate_forecast(bundle, split=split, out_dir=out_dir, device=device)
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
