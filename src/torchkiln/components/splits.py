"""Deterministic, stratified train/val/test splits."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from torchkiln.core.config import SplitConfig
from torchkiln.core.errors import DataError, did_you_mean

log = logging.getLogger("torchkiln.data")


class LabelledData(Protocol):
    """The settings of a labelled data section (images, texts) that splitting reads."""

    split: SplitConfig
    classes: list[str] | None
    limit_per_class: int | None


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


def class_list(
    cfg: LabelledData,
    labels: list[str],
    splits: np.ndarray | None,
    where: str,
    order: list[str] | None = None,
    *,
    items: str = "images",
) -> list[str]:
    """The class list: ``data.classes`` if given, else the classes seen in train, in the data's own
    ``order`` (array data sets define one) or sorted by name (folders and CSVs)."""
    train_labels = (
        [lab for lab, s in zip(labels, splits, strict=True) if s == "train"] if splits is not None else labels
    )
    if cfg.classes is not None:
        unknown = sorted(set(labels) - set(cfg.classes))
        if unknown:
            raise DataError(
                f"{where} has label '{unknown[0]}' ({len(unknown)} unknown label(s) in all), which is not in "
                f"data.classes {cfg.classes}.{did_you_mean(unknown[0], cfg.classes)} Add it to data.classes "
                f"or fix the label."
            )
        return _two_or_more(list(cfg.classes), where, items, "data.classes lists")
    seen = set(train_labels)
    for split in ("val", "test"):
        extra = (
            sorted({lab for lab, s in zip(labels, splits, strict=True) if s == split} - seen)
            if splits is not None
            else []
        )
        if extra:
            raise DataError(
                f"{where}: the {split} split has class '{extra[0]}', which never appears in train. "
                f"A model cannot learn a class it never sees. Add training {items} of '{extra[0]}', "
                f"or remove it from {split}."
            )
    classes = [c for c in order if c in seen] if order else sorted(seen)
    return _two_or_more(classes, where, items, "the training split has")


def _two_or_more(classes: list[str], where: str, items: str, has: str) -> list[str]:
    """``classes``, if there are at least two: a classifier of one class answers it for any input."""
    if len(classes) >= 2:
        return classes
    only = f"one class, '{classes[0]}'" if classes else "no class"
    raise DataError(
        f"{where}: {has} {only}. A classifier needs at least two classes; with one it answers that class "
        f"for any input, and its accuracy says nothing. Add {items} of another class (a folder per class, "
        f"or another label in the CSV), or check data.path."
    )


def check_coverage(
    classes: list[str], labels: np.ndarray, splits: np.ndarray, *, where: str, items: str
) -> list[str]:
    """Warn of what the split leaves thin: a class with under two training items, or absent from val or test.

    Each warning (logged, and returned) has its fix. They are not errors: training still works, but the
    metrics of that split cannot measure the class (its ROC AUC is undefined: null in metrics.json).

    Example:
        >>> check_coverage(["cat", "dog"], np.array([0, 0, 1]), np.array(["train", "val", "train"]),
        ...                where="Data 'pets'", items="images")
        ["Data 'pets': class 'dog' has 1 training image; ...", "Data 'pets': the val split has no images ..."]
    """
    out = []
    for c, name in enumerate(classes):
        n = int(((labels == c) & (splits == "train")).sum())
        if n < 2:
            out.append(
                f"class '{name}' has {n} training {items[:-1] if n == 1 else items}; a model learns little "
                f"from so few. Add {items} of '{name}', or merge it into another class."
            )
        for split in ("val", "test"):
            if (splits == split).any() and not ((labels == c) & (splits == split)).any():
                out.append(
                    f"the {split} split has no {items} of class '{name}', so its {split} metrics cannot "
                    f"measure it (its ROC AUC is undefined: null in metrics.json). Add {items} of "
                    f"'{name}', or raise data.split.{split} so that the split takes some."
                )
    out = [f"{where}: {w}" for w in out]
    for w in out:
        log.warning("%s", w)
    return out


def make_splits(cfg: LabelledData, labels: np.ndarray, given: np.ndarray | None, seed: int) -> np.ndarray:
    """train/val/test per item: the data's own split (val carved from train if missing) or a stratified one;
    with ``limit_per_class`` the left-out training items are marked ``unused``."""
    if given is None or not (given == "train").any():
        splits = stratified_split(labels, val=cfg.split.val, test=cfg.split.test, seed=seed)
    elif not (given == "val").any() and cfg.split.val > 0:
        splits = carve_val(labels, given, val=cfg.split.val, seed=seed)
    else:
        splits = given.astype(str)
    if cfg.limit_per_class is not None:
        keep = limit_per_class(labels, splits, limit=cfg.limit_per_class, seed=seed)
        splits = np.where(keep, splits, "unused")
    return splits


def resolve_class_weights(
    setting: str | list[float] | None, classes: list[str], train_labels: np.ndarray
) -> list[float] | None:
    """``train.class_weights`` as one weight per class: ``auto`` is n / (classes x count) over the train
    split (scikit-learn's "balanced"), so that each class weighs as much in the loss as the others.

    Raises:
        DataError: a list whose length is not the number of classes.

    Example:
        >>> resolve_class_weights("auto", ["normal", "pneumonia"], np.array([0, 1, 1, 1]))
        [2.0, 0.666667]
    """
    if setting is None:
        return None
    k = len(classes)
    if setting == "auto":
        counts = np.bincount(train_labels, minlength=k)
        return [round(float(counts.sum() / (k * c)), 6) if c else 0.0 for c in counts]
    if len(setting) != k:
        raise DataError(
            f"train.class_weights has {len(setting)} value(s); the data has {k} classes "
            f"({', '.join(classes)}). Give one weight per class, in that order, or use auto."
        )
    return [float(w) for w in setting]
