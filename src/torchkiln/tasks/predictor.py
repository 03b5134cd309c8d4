"""Predict from a bundle with exactly the training preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchkiln.tasks.bundle import Bundle, load_bundle


class Predictor:
    """Wraps a loaded bundle; ``predict`` takes raw inputs (for images: paths, bytes, arrays, PIL).

    Example:
        >>> p = Predictor(load_bundle("runs/x/bundle"))
        >>> p.predict(["boot.png"], top_k=3)[0]["label"]
        'Ankle boot'
    """

    def __init__(self, bundle: Bundle, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.batch_size = batch_size

    @property
    def labels(self) -> list[str]:
        return list(self.bundle.meta.get("labels") or [])

    @torch.inference_mode()
    def predict(self, inputs: Sequence[Any], *, top_k: int | None = None) -> list[dict[str, Any]]:
        """Preprocess, run the model in batches, and return one answer per input.

        ``top_k`` defaults to the config's ``task.top_k``.
        """
        cfg, task = self.bundle.config, self.bundle.task
        top_k = top_k or cfg.task.top_k
        out: list[dict[str, Any]] = []
        for start in range(0, len(inputs), self.batch_size) if inputs else [0]:
            chunk = inputs[start : start + self.batch_size]
            x = task.preprocess(cfg, chunk).to(self.device)
            out += task.postprocess(cfg, self.model(x), top_k=top_k)
        return out


def load_predictor(path: str | Path, *, device: str = "cpu") -> Predictor:
    """Load a bundle (or a run directory holding ``bundle/``) for prediction.

    Raises:
        BundleError: the bundle is incomplete, from another version, or corrupt.
    """
    return Predictor(load_bundle(path), device=device)
