"""The reference profile of held-out data, built through the serving path (``bundle/reference.safetensors``).

At the end of training (``evaluate.reference``) and for ``kiln monitor profile``, a seeded sample of at most
``evaluate.reference.items`` items of a split goes through what a served request goes through: the task's
raw inputs, ``preprocess``, ``summarize_inputs`` (the numbers the prediction log records), then one
forward pass that gives the outputs (``output_signals``: classes and confidence, or a forecast's level
and spread) and the penultimate features (``forward_features``), which a PCA fitted on the sample reduces
to at most ``evaluate.reference.dims`` dimensions. Drift monitoring compares live traffic with it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.profile import (
    Reference,
    fit_projection,
    project,
    read_profile,
    read_reference,
    replace_reference,
)
from torchkiln.components.profile import spread, summary_table
from torchkiln.components.splits import SPLITS
from torchkiln.core._version import __version__
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import BundleError, DataError
from torchkiln.engine.precision import resolve_device
from torchkiln.tasks.base import ReferenceProfiler, Task

log = logging.getLogger("torchkiln.train")


def build_reference(
    cfg: RunConfig,
    task: Task,
    data: Any,
    model: nn.Module,
    *,
    split: str,
    state: Any,
    device: torch.device,
) -> Reference:
    """Profile a seeded sample of ``split`` with ``model``; the sizes come from ``cfg.evaluate.reference``.

    Args:
        cfg: the resolved config (the bundle's).
        task: its task.
        data: ``task.prepare``'s data, holding ``split``.
        model: the serving module (put in eval mode for the passes, then back).
        split: the split to profile.
        state: the fitted preprocessing, as the bundle holds it (``task.load_state``).
        device: where the forward passes run.

    Returns:
        The :class:`~torchkiln.artifacts.profile.Reference`; ``save_bundle`` or ``replace_reference`` adds
        the model's weights hash when writing it.

    Raises:
        DataError: ``split`` has no items.

    Example:
        >>> ref = build_reference(cfg, task, data, model, split="val", state=None, device=cpu)
        >>> ref.arrays["embedding"].shape
        (2000, 16)
    """
    settings = cfg.evaluate.reference
    inputs = task.reference_inputs(cfg, data, split)
    total = len(inputs)
    if not total:
        raise DataError(
            f"The {split} split has no items to profile; expected at least one. Profile another split "
            f"(kiln monitor profile BUNDLE --split test), or give the data a {split} split."
        )
    rng = np.random.default_rng(cfg.seed)
    index = (
        np.sort(rng.choice(total, settings.items, replace=False))
        if total > settings.items
        else np.arange(total)
    )
    summaries, signals, features = _passes(cfg, task, model, inputs, index, state, device)
    columns, table = summary_table(
        [{k: v for k, v in s.items() if k not in task.request_only_fields} for s in summaries]
    )
    feats = torch.cat(features).numpy()  # (N, D)
    mean, components, explained = fit_projection(feats, settings.dims)
    arrays: dict[str, np.ndarray] = {
        "summary": table.astype(np.float32),
        **{name: torch.cat(parts).numpy() for name, parts in signals.items()},
        "embedding": project(torch.from_numpy(feats), mean, components).numpy(),  # as Predictor.embed does
        "pca_mean": mean,
        "pca_components": components,
        "index": index.astype(np.int64),
    }
    meta = {
        "split": split,
        "items": len(index),
        "split_items": total,
        "seed": cfg.seed,
        "max_items": settings.items,
        "summary_columns": columns,
        "signals": list(signals),
        "signal_summary": {name: _describe(arrays[name]) for name in signals},
        "embedding": {
            "features": int(feats.shape[1]),
            "dims": int(components.shape[0]),
            "projection": "identity" if feats.shape[1] <= settings.dims else "pca",
            "explained_variance": explained,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torchkiln_version": __version__,
    }
    return Reference(meta, arrays)


@torch.inference_mode()
def _passes(
    cfg: RunConfig,
    task: Task,
    model: nn.Module,
    inputs: Any,
    index: np.ndarray,
    state: Any,
    device: torch.device,
) -> tuple[list[dict[str, Any]], dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """The sample in batches of ``evaluate.batch_size``, as the server runs a batch (fp32, eval mode)."""
    was_training = model.training
    model.eval()
    summaries: list[dict[str, Any]] = []
    signals: dict[str, list[torch.Tensor]] = {}
    features: list[torch.Tensor] = []
    try:
        for start in range(0, len(index), cfg.evaluate.batch_size):
            raw = [inputs[int(i)] for i in index[start : start + cfg.evaluate.batch_size]]
            x = task.preprocess(cfg, raw, state)
            summaries += task.summarize_inputs(cfg, raw, x)
            outputs, feats = task.forward_features(model, x.to(device))
            for name, values in task.output_signals(cfg, outputs).items():
                signals.setdefault(name, []).append(values.cpu())
            features.append(feats.float().cpu())
    finally:
        model.train(was_training)
    return summaries, signals, features


def _describe(values: np.ndarray) -> dict[str, Any]:
    """A signal at a glance, for profile.json: counts of an integer signal, the spread of a float one."""
    if np.issubdtype(values.dtype, np.integer):
        return {str(k): n for k, n in sorted(Counter(values.tolist()).items())}
    return spread(values.tolist())


def training_reference(
    cfg: RunConfig, task: Task, data: Any, model: nn.Module, device: torch.device
) -> Reference | None:
    """The reference a new bundle gets: ``evaluate.reference.split`` profiled, or None (with a log line) when
    it is ``none``, the task lacks the reference members, or the split is empty."""
    split = cfg.evaluate.reference.split
    if split == "none":
        return None
    if not isinstance(task, ReferenceProfiler):
        log.warning(
            "The %s task has no reference_inputs/forward_features/output_signals (tasks.base.Task): the "
            "bundle gets no reference profile, and drift monitoring has nothing to compare with.",
            task.kind,
        )
        return None
    if not len(data.splits[split]):
        log.warning(
            "The %s split is empty: the bundle gets no reference profile. Build one from another split with "
            "kiln monitor profile BUNDLE --split test, or set evaluate.reference.split.",
            split,
        )
        return None
    state = task.load_state(cfg, task.state_files(data))  # as the bundle will hold it
    return build_reference(cfg, task, data, model, split=split, state=state, device=device)


@dataclass(frozen=True)
class Profiled:
    """What :func:`profile_bundle` wrote: the bundle folder, and its reference as profile.json holds it."""

    bundle: Path
    reference: Reference


def profile_bundle(
    path: str | Path, *, split: str = "val", overwrite: bool = False, device: str = "auto"
) -> Profiled:
    """Build (or rebuild) the reference profile of an existing bundle, from the data its config names.

    Args:
        path: a trained (torch) bundle or its run directory.
        split: the split to profile: ``train``, ``val`` or ``test``.
        overwrite: replace a reference the bundle already has.
        device: where the forward passes run: ``auto``, ``cpu``, ``cuda``...

    Returns:
        The bundle folder and the reference written (its metadata as profile.json now holds it).

    Raises:
        BundleError: an exported (ONNX) bundle, or one that has a reference already (without ``overwrite``).
        DataError: the data is gone or changed, or the split is unknown or empty.

    Example:
        >>> profile_bundle("runs/digits-cnn/20261124-021040", split="val").reference.meta["items"]
        180
    """
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'. Expected one of {', '.join(SPLITS)}.")
    bundle = load_bundle(path)
    runtime = bundle.meta.get("runtime", "torch")
    if runtime != "torch":
        source = bundle.meta.get("variant", {}).get("source", "RUN_DIR/bundle")
        raise BundleError(
            f"Bundle '{bundle.path}' is an exported {runtime} variant: its model gives outputs only, not the "
            f"penultimate features a reference needs. Profile the trained bundle it came from "
            f"(kiln monitor profile {source} --split {split}), then export again to carry the profile over."
        )
    existing = bundle.profile.get("reference")
    if existing and not overwrite:
        raise BundleError(
            f"Bundle '{bundle.path}' already has a reference profile ({existing.get('items')} items of the "
            f"{existing.get('split')} split, made {existing.get('created')}). Pass --overwrite to replace it."
        )
    task, cfg = bundle.task, bundle.config
    _, data = task.prepare(cfg, splits={split}, state=bundle.state)
    dev = resolve_device(device, setting="--device")
    reference = build_reference(
        cfg, task, data, bundle.model.to(dev), split=split, state=bundle.state, device=dev
    )
    replace_reference(bundle.path, reference, weights_sha256=str(bundle.meta.get("weights_sha256", "")))
    return Profiled(bundle.path, read_reference(bundle.path, read_profile(bundle.path).get("reference")))
