"""Deterministic, stratified train/val/test splits."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, *, val: float, test: float, seed: int) -> np.ndarray:
    """Assign each item to train/val/test, per class, with a fixed seed.

    Each class is shuffled on its own and cut by the fractions, so class balance is kept and the
    result does not depend on the order of other classes. A class always keeps at least one
    training item.

    Args:
        labels: ``(N,)`` int class indices.
        val, test: fractions of each class for validation and test.
        seed: the run seed.

    Returns:
        A ``(N,)`` array of ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> stratified_split(np.array([0, 0, 1, 1]), val=0.0, test=0.5, seed=0)
    """
    out = np.full(len(labels), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = round(test * len(idx))
        n_val = round(val * len(idx))
        if n_test + n_val >= len(idx):  # tiny class: keep one item for training
            n_test = min(n_test, len(idx) - 1)
            n_val = max(0, len(idx) - 1 - n_test)
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
    return out.astype(str)


def carve_val(labels: np.ndarray, splits: np.ndarray, *, val: float, seed: int) -> np.ndarray:
    """Move a stratified ``val`` fraction of the train items to ``"val"`` (data had train/test only)."""
    train = np.flatnonzero(splits == "train")
    sub = stratified_split(labels[train], val=0.0, test=val, seed=seed)
    out = splits.astype(object).copy()
    out[train[sub == "test"]] = "val"
    return out.astype(str)


def limit_per_class(labels: np.ndarray, splits: np.ndarray, *, limit: int, seed: int) -> np.ndarray:
    """Keep at most ``limit`` training items per class (the rest leave the run); returns a keep mask."""
    keep = np.ones(len(labels), dtype=bool)
    rng = np.random.default_rng(seed + 1)
    for cls in np.unique(labels):
        idx = np.flatnonzero((labels == cls) & (splits == "train"))
        idx = idx[rng.permutation(len(idx))]
        keep[idx[limit:]] = False
    return keep
