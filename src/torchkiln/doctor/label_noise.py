"""Label noise: training items whose given label a short fit of the task's own model confidently contradicts.

Out-of-sample probabilities come from a k-fold fit (2 folds by default): each fold of train is predicted
by the task's model trained, through the engine, on the other folds only. Confident learning
(:mod:`~torchkiln.components.confident_learning`) then flags the items whose label is below its class's
self-confidence while another class is above its own. Not cheap: it trains ``folds`` models, so it runs
only when asked for (``kiln doctor --label-noise``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkiln.components.confident_learning import label_issues
from torchkiln.components.splits import stratified_split
from torchkiln.core.config import RunConfig
from torchkiln.doctor.findings import EXAMPLES, ITEMS, Finding, share
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import Subject
from torchkiln.tasks.base import validate
from torchkiln.tasks.training import train_task

NOISY = 0.01  # share of train flagged from which the labels deserve a review before training on them


def fold_config(cfg: RunConfig, *, epochs: int, runs_dir: Path) -> RunConfig:
    """``cfg`` for one fold's fit: ``epochs`` epochs, no tracking, and the last epoch kept: the best epoch by
    train loss, since choosing it on the held-out fold would let that fold's labels pick the model."""
    raw = cfg.model_dump(mode="json")
    raw["train"] |= {
        "epochs": min(epochs, cfg.train.epochs),
        "monitor": "train/loss",
        "monitor_mode": "min",
        "early_stopping": {"patience": None},
        "log_epochs": 0,
        "checkpoint_every": 0,
    }
    raw["tracking"] = {**raw["tracking"], "tensorboard": False, "mlflow": False}
    raw["evaluate"]["reference"]["split"] = "none"
    raw["runs_dir"] = str(runs_dir)
    return validate(raw)


@torch.inference_mode()
def _predict(
    s: Subject, cfg: RunConfig, data: Any, model: torch.nn.Module, device: torch.device
) -> np.ndarray:
    """Class probabilities ``(N, K)`` of the val split of ``data`` (the held-out fold), in item order."""
    model.eval()
    out = []
    for batch in s.task.loader(cfg, data, "val", train=False):
        x, _ = s.task.to_device(batch, device, channels_last=False)
        out.append(model(x).float().softmax(dim=1).cpu())
    return torch.cat(out).numpy()


def out_of_sample(s: Subject, labels: np.ndarray) -> np.ndarray:
    """Each train item's class probabilities from a model that did not train on it (``(N, K)``)."""
    assert s.resolved is not None and s.view is not None and s.view.fold is not None
    folds, probs = s.options.noise_folds, np.zeros((len(labels), len(s.view.classes)))
    # Stratified folds: fold f takes its share of each class (stratified_split cut in turn).
    fold_of = np.zeros(len(labels), dtype=np.int64)
    rest = np.arange(len(labels))
    for f in range(folds - 1):
        cut = stratified_split(labels[rest], val=0.0, test=1 / (folds - f), seed=s.resolved.seed + f)
        fold_of[rest[cut == "test"]] = f
        rest = rest[cut != "test"]
    fold_of[rest] = folds - 1
    with tempfile.TemporaryDirectory(prefix="kiln-doctor-") as tmp:
        for f in range(folds):
            fit, held = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
            run_dir = Path(tmp) / f"fold{f}"
            run_dir.mkdir()
            cfg = fold_config(s.resolved, epochs=s.options.noise_epochs, runs_dir=Path(tmp))
            data = s.view.fold(fit, held)
            result = train_task(cfg, s.task, data, run_dir, bundle=False)
            model = result.modules[s.task.train_module(cfg).serves]
            probs[held] = _predict(s, cfg, data, model, result.device)
    return probs


@check("label-noise", cheap=False, opt_in=True)
def label_noise(s: Subject) -> list[Finding]:
    """Training items whose given label a short k-fold fit confidently contradicts (confident learning)."""
    part = s.items("train")
    if part is None or part.labels is None or s.view is None or s.resolved is None:
        return []
    if s.view.fold is None:
        return [
            Finding(
                "label-noise",
                "info",
                f"The {s.task.kind} task cannot be trained on part of its train split, so its labels were "
                f"not checked for noise.",
            )
        ]
    start = time.perf_counter()
    issues = label_issues(out_of_sample(s, part.labels), part.labels)
    seconds = time.perf_counter() - start
    classes = list(s.view.classes)
    items = tuple(
        f"{part.name(int(i))}: labelled '{classes[g]}' ({pg:.2f}), looks like '{classes[c]}' ({pc:.2f})"
        for i, g, c, pg, pc in zip(
            issues.index[:ITEMS],
            issues.given[:ITEMS],
            issues.suggested[:ITEMS],
            issues.given_prob[:ITEMS],
            issues.suggested_prob[:ITEMS],
            strict=True,
        )
    )
    how = (
        f"{s.options.noise_folds} folds of {min(s.options.noise_epochs, s.resolved.train.epochs)} epoch(s), "
        f"{seconds:.0f} s"
    )
    if not items:
        return [Finding("label-noise", "info", f"No training label is confidently contradicted ({how}).")]
    return [
        Finding(
            "label-noise",
            "warning" if len(items) >= NOISY * len(part) else "info",
            f"{share(len(issues), len(part))} training labels are confidently contradicted by a model that "
            f"did not train on them ({how}); the most certain: " + "; ".join(items[:EXAMPLES]) + ".",
            "Review them, most certain first (kiln doctor --label-noise --json lists them all); relabel or "
            "remove the wrong ones. Some are hard cases, not mistakes: look before deleting.",
            count=len(issues),
            items=items,
        )
    ]
