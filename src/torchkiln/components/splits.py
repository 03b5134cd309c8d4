"""Deterministic, stratified train/val/test splits; by group (patient) when the data names one."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
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


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, *, val: float, test: float, seed: int
) -> np.ndarray:
    """Assign each *group* (a patient) as a whole to train, val or test, keeping each class's share.

    Groups are placed one by one, the largest first (ties in an order drawn from ``seed``), each into the
    split where it brings the per-class fractions closest to the targets: the split minimizing the sum over
    splits and classes of (share of the class in the split - target fraction)². Each class weighs the same
    whatever its size, so a rare class is spread like a common one. Greedy, like scikit-learn's
    StratifiedGroupKFold; exact balance is impossible when groups mix classes or are few.

    Args:
        labels: ``(N,)`` int class indices.
        groups: ``(N,)`` group ids (strings or ints); items of one group always share a split.
        val, test: target fractions of each class.
        seed: the run seed; the result depends only on it, the labels and the groups, not on item order.

    Returns:
        A ``(N,)`` array of ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> stratified_group_split(np.array([0, 0, 1, 1]), np.array(["p1", "p1", "p2", "p3"]),
        ...                        val=0.0, test=0.5, seed=0)
    """
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    k = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((len(names), k))
    np.add.at(counts, (inverse, labels), 1)
    share = counts / np.maximum(counts.sum(axis=0), 1)  # (G, K): each group's share of each class
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]  # largest first
    target = np.array([1.0 - val - test, val, test])[:, None]  # (3, 1): train, val, test
    filled = np.zeros((3, k))
    where = np.zeros(len(names), dtype=np.int64)
    for g in order:
        # The change of sum((filled - target)²) if group g joined each split: sum(c * (2 (filled - t) + c)).
        cost = (share[g] * (2 * (filled - target) + share[g])).sum(axis=1)
        cost[target[:, 0] == 0] = np.inf
        where[g] = int(np.argmin(cost))
        filled[where[g]] += share[g]
    return np.array(SPLITS)[where][inverse]


def group_ids(names: Sequence[str], pattern: str, *, where: str) -> np.ndarray:
    r"""The group of each file name: the first group of ``pattern`` (a regex, searched anywhere in the name).

    Example:
        >>> group_ids(["person1_virus_6.jpeg", "IM-0115-0001.jpeg"], r"(person\d+|IM-\d+)", where="Data")
        array(['person1', 'IM-0115'], dtype='<U7')

    Raises:
        DataError: a name the pattern does not match, or whose first group is empty.
    """
    rx = re.compile(pattern)
    found = [m.group(1) if (m := rx.search(n)) else None for n in names]
    bad = [n for n, g in zip(names, found, strict=True) if not g]
    if bad:
        raise DataError(
            f"{where}: data.group_pattern '{pattern}' finds no group in the file name '{bad[0]}' "
            f"({len(bad)} of {len(names)} names); expected its first group to capture the patient id in "
            f"every file name. Fix: widen the pattern (Kaggle's chest_xray: '(person\\d+|IM-\\d+)'), or "
            f"give a CSV manifest with a data.group_column."
        )
    return np.array(found, dtype=str)


def carve_val(
    labels: np.ndarray, splits: np.ndarray, *, val: float, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Move a stratified ``val`` fraction of the train items to ``"val"`` (data had train/test only); with
    ``groups``, whole groups move (:func:`stratified_group_split`)."""
    train = np.flatnonzero(splits == "train")
    if groups is None:
        sub = stratified_split(labels[train], val=0.0, test=val, seed=seed)
    else:
        sub = stratified_group_split(labels[train], groups[train], val=0.0, test=val, seed=seed)
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


def unused_fractions(s: SplitConfig, given: np.ndarray | None, final: np.ndarray) -> list[str]:
    """The ``data.split`` fractions the config sets (as written) that the data's own split leaves unused.

    ``test`` is unused when the data brings test items; ``val`` when it brings a val split that is kept as
    it is (not carved from train, not merged for being under ``min_val``).

    Example:
        >>> unused_fractions(SplitConfig(test=0.2), np.array(["train", "test"]), np.array(["train", "test"]))
        ['data.split.test (0.2)']
    """
    if given is None or not (given == "train").any():
        return []
    out = []
    if (
        "val" in s.model_fields_set
        and (given == "val").any()
        and np.array_equal(final == "val", given == "val")
    ):
        out.append(f"data.split.val ({s.val:g})")
    if "test" in s.model_fields_set and (given == "test").any():
        out.append(f"data.split.test ({s.test:g})")
    return out


def make_splits(
    cfg: LabelledData,
    labels: np.ndarray,
    given: np.ndarray | None,
    seed: int,
    *,
    groups: np.ndarray | None = None,
    where: str = "The data",
    explain: bool = False,
) -> np.ndarray:
    """train/val/test per item: the data's own split or a stratified one; with ``limit_per_class`` the
    left-out training items are marked ``unused``.

    ``explain`` (a training run, whose ``cfg`` is the config as written): warn when ``data.split`` sets a
    fraction that the data's own split makes unused (:func:`unused_fractions`).

    The data's own split is kept, except that val is carved from train when the data has none, and a val
    too small to judge by (:func:`val_too_small`) is merged into train and carved again, with a warning.
    With ``groups`` (patient ids) every split made here keeps each group whole, and a group that the data's
    own splits share is warned about (:func:`shared_groups`).
    """
    s = cfg.split
    if given is None or not (given == "train").any():
        if groups is None:
            splits = stratified_split(labels, val=s.val, test=s.test, seed=seed)
        else:
            splits = stratified_group_split(labels, groups, val=s.val, test=s.test, seed=seed)
    elif not (given == "val").any() and s.val > 0:
        splits = carve_val(labels, given, val=s.val, seed=seed, groups=groups)
    elif val_too_small(given, val=s.val, min_val=s.min_val):
        merged = np.where(given == "val", "train", given.astype(str))
        splits = carve_val(labels, merged, val=s.val, seed=seed, groups=groups)
        n_given, n_new = int((given == "val").sum()), int((splits == "val").sum())
        log.warning(
            "%s: the given val split has %d item%s, fewer than data.split.min_val (%d): too few to choose a "
            "model or a decision threshold on. It is merged into train and a stratified val of %d items "
            "(data.split.val %g of train) is carved from it instead. Set data.split.min_val: 0 to keep the "
            "given val split.",
            *(where, n_given, "" if n_given == 1 else "s", s.min_val, n_new, s.val),
        )
    else:
        splits = given.astype(str)
    if groups is not None:
        shared_groups(splits, groups, where=where)
    if explain and (unused := unused_fractions(s, given, splits)):
        log.warning(
            "%s brings its own split (a split column or train/val/test parts), which wins over %s: %s not "
            "used. Remove %s from data.split to silence this, or drop the data's own split to split by "
            "fraction.",
            where,
            " and ".join(unused),
            "it is" if len(unused) == 1 else "they are",
            " and ".join(u.split(" ")[0] for u in unused),
        )
    if cfg.limit_per_class is not None:
        keep = limit_per_class(labels, splits, limit=cfg.limit_per_class, seed=seed)
        splits = np.where(keep, splits, "unused")
    return splits


def val_too_small(given: np.ndarray, *, val: float, min_val: int) -> bool:
    """Whether a given val split is too small to choose a model or a threshold on, and re-splitting helps.

    The rule: fewer than ``min_val`` items (data.split.min_val, 50 by default; 0 turns it off), and carving
    ``val`` of train + val would give more. Why 50: one item moves a val score by 1/n, so at n = 16 (Kaggle's
    chest_xray) a single image is 6 points of accuracy, and the 95 % interval of an accuracy near 0.9 is
    about ±15 points, wider than the gaps between the models or epochs being chosen. A recall target of 0.95
    needs at least 20 positives to be met with one miss; at the 30 to 40 % positives of a typical binary
    medical set, that is about 50 items. A data set too small to carve more from keeps its val as it is.

    Example:
        >>> val_too_small(np.array(["train"] * 5216 + ["val"] * 16), val=0.1, min_val=50)
        True
    """
    n_val = int((given == "val").sum())
    n_pool = n_val + int((given == "train").sum())
    return 0 < n_val < min_val and val > 0 and round(val * n_pool) > n_val


def shared_groups(splits: np.ndarray, groups: np.ndarray, *, where: str) -> str | None:
    """Warn (and return the warning) when a group (patient) has items in more than one split: a model
    scored on patients it trained on looks better than it is on new ones. Only the data's own splits can
    do this; the splits made here keep groups whole."""
    used = np.isin(splits, SPLITS)
    pairs = np.unique(np.stack([np.asarray(groups)[used].astype(str), splits[used]]), axis=1)  # (2, P)
    names, counts = np.unique(pairs[0], return_counts=True)
    crossing = names[counts > 1]
    if not len(crossing):
        return None
    first = str(crossing[0])
    in_splits = [sp for sp in SPLITS if sp in set(pairs[1][pairs[0] == first])]
    message = (
        f"{where}: {len(crossing)} group(s) (patients) have items in more than one of the data's own splits, "
        f"e.g. '{first}' in {' and '.join(in_splits)}; a model scored on patients it trained on looks better "
        f"than it is on new ones. Fix: move each patient's files into one split, or give the data without "
        f"splits (one folder per class, or a manifest without a split column) so that each patient is "
        f"assigned to one split."
    )
    log.warning("%s", message)
    return message


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
