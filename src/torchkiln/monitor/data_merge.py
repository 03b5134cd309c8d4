"""``kiln retrain``'s data policy: the new labelled data merged with the original training data.

The policy, in full:

- The original data (the config's ``data.path``) keeps the split training gave it (its own split, or the
  seeded stratified one, by patient when the config names groups); its train and val items stay, its test
  items and items left out by ``limit_per_class`` leave the challenger's run.
- The new labelled data (``--data`` sources, and the feedback-labelled inputs of the prediction log) is
  split per class with ``RetrainSettings.seed``: ``test_fraction`` becomes the **fresh test set**,
  ``val_fraction`` goes to val, the rest to train. A source that brings its own split (a split column
  that holds ``test``, or train/val/test folders) keeps it.
- Groups (patients), when the config names them (``data.group_pattern`` or ``data.group_column``): the
  new data is split by group (:func:`torchkiln.components.splits.stratified_group_split`), and a new item
  of a patient already in the run (the original train or val, or an earlier source) joins that patient's
  split, so no patient spans the fresh test set and train. A new item's group is the config's pattern or
  column where it applies to it (a ``--data`` file name the pattern matches, a manifest with the column),
  else its own: its content's SHA-256 (a served image names no patient).
- New labels must be among the champion's classes: a retrained model keeps them.
- The challenger trains on the union (a CSV ``merged.csv`` with the columns below and ``label``,
  ``split``, and ``group`` when the config names groups; the challenger then reads it with
  ``data.group_column: group``) and is judged, like the champion, only on the fresh test set, which it
  never trained on.

What each data kind merges, chosen once from the config's ``data`` section
(:func:`torchkiln.monitor.merge_kinds.kind_of`):

- **images** (image classification): ``data.path`` is an image folder or a CSV manifest. ``--data`` is a
  folder (``root/<class>/...`` or ``root/{train,val,test}/<class>/...``) or a CSV manifest
  ``path,label[,split]`` (and the config's ``data.group_column``, if it has it). Feedback inputs are image
  bytes, written to files. ``merged.csv``: ``path,label,split[,group]``; an item is its file, hashed by
  the file's SHA-256.
- **texts** (text classification): ``data.path`` is a CSV, TSV or JSONL file, read by the same reader and
  columns as training (:func:`torchkiln.components.text_table.read_text_table`). ``--data`` is a CSV with
  the config's ``data.text_column`` and ``data.label_column`` (and optionally a train/val/test column
  named as ``data.split_column``, else ``split``), or else with ``text,label[,split]``, the columns
  ``kiln datasets fetch`` and ``merged.csv`` use.
  Feedback inputs are the logged texts. ``merged.csv``: ``text,label,split``; an item is its text, hashed
  by the SHA-256 of its UTF-8 bytes. Text data names no groups.

The merged data is then checked by the task's own ``prepare`` (the same validation as training) before
any compute.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.components.splits import make_splits, stratified_group_split, stratified_split
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.merge_kinds import (
    Item,
    Items,
    Kind,
    NewData,
    Source,
    feedback_items,
    kind_of,
    scan_source,
)

__all__ = ["MergedData", "feedback_items", "merge", "original_items", "scan_source"]

Row = tuple[Item, str, str, str]  # (item, label, split, group: "" when the config names no groups)


@dataclass(frozen=True)
class MergedData:
    manifest: Path
    test_items: list[tuple[Item, str]]  # the fresh test set: (image file or text, label)
    counts: dict[str, dict[str, int]]  # source -> split -> items
    data_sha256: str  # content hash of (item content SHA-256, label, split) over the merged manifest
    test_sha256: str  # the same over the fresh test set
    # What the challenger's config sets in its ``data`` section to read ``manifest``.
    data_overrides: dict[str, Any]
    sources: list[str] = field(default_factory=list)


def original_items(cfg: RunConfig) -> Items:
    """The training data ``cfg`` names, if it is data kiln retrain can merge (images or texts)."""
    return kind_of(cfg).original(cfg)


def merge(
    cfg: RunConfig, new: dict[str, NewData], out_dir: Path, settings: RetrainSettings, classes: list[str]
) -> MergedData:
    """Write ``out_dir/merged.csv`` by the policy above and return it with its fresh test set and hashes.

    Args:
        cfg: the champion's training config; its ``data`` section names the original data and its kind.
        new: source name -> new data (:func:`scan_source`, :func:`feedback_items`).
        out_dir: where ``merged.csv`` (and feedback image files) go.
        settings: the split of the new data (fractions and seed).
        classes: the champion's classes, in its order.

    Returns:
        The manifest, the fresh test set, counts per source and split, content hashes, and the
        ``data`` overrides that make the challenger's config read the manifest.

    Raises:
        DataError: unreadable data, a file name data.group_pattern finds no patient in (original data), no
            new labelled items, or labels outside the champion's classes.

    Example:
        >>> merged = merge(cfg, {"new.csv": scan_source(Path("new.csv"))}, out, RetrainSettings(), classes)
        >>> merged.data_overrides["path"] == str(merged.manifest)
        True
    """
    kind = kind_of(cfg)
    orig = kind.original(cfg)
    o_groups = np.array(orig.groups, dtype=str) if orig.groups is not None else None
    grouped = o_groups is not None
    o_splits = _original_splits(cfg, orig, o_groups, classes)
    rows = [r for r in _rows(orig, o_splits, o_groups) if r[2] in ("train", "val")]
    counts = {"original": dict(Counter(str(s) for s in o_splits))}
    placed = {g: s for _, _, s, g in rows} if grouped else {}  # patient -> the split it is in
    new_rows: list[Row] = []
    for name, source in new.items():
        items = kind.read(source, cfg) if isinstance(source, Source) else kind.feedback(source, cfg)
        groups = _groups(kind, items) if grouped else None
        splits = _new_splits(
            items, _indices(items.labels, classes, f"New data {name}"), groups, placed, settings
        )
        new_rows += _rows(items, splits, groups)
        counts[name] = dict(Counter(str(s) for s in splits))
        for g, s in zip(groups if groups is not None else [], splits, strict=False):
            placed.setdefault(str(g), str(s))  # a later source's items of this patient join it (none: [])
    if not new_rows:
        raise DataError(
            "kiln retrain found no new labelled items. Give --data FOLDER|CSV, or --feedback-from LOG_URL "
            "with feedback labels on logged requests whose bodies were kept."
        )
    rows += new_rows
    test_items = [(x, lab) for x, lab, s, _ in new_rows if s == "test"]
    manifest = _write_manifest(out_dir / "merged.csv", kind.first_column, rows, grouped)
    return MergedData(
        manifest=manifest,
        test_items=test_items,
        counts=counts,
        data_sha256=_content_hash(kind, ((x, lab, s) for x, lab, s, _ in rows)),
        test_sha256=_content_hash(kind, ((x, lab, "test") for x, lab in test_items)),
        data_overrides=kind.overrides(manifest, grouped=grouped),
        sources=[str(getattr(cfg.data, "path", "")), *new],
    )


def _original_splits(
    cfg: RunConfig, orig: Items, groups: np.ndarray | None, classes: list[str]
) -> np.ndarray:
    """The split training gave each original item: :func:`make_splits` on the same labels, given split,
    seed and groups (patients), so no original test item or test patient reaches the challenger's train."""
    where = f"The original data '{getattr(cfg.data, 'path', '')}'"
    given = np.array(orig.splits) if orig.splits is not None else None
    # Class indices in the champion's order, as training split them: the stratified split's draws follow it.
    labels = _indices(orig.labels, classes, where)
    return make_splits(cfg.data, labels, given, cfg.seed, groups=groups, where=where)  # type: ignore[arg-type]


def _groups(kind: Kind, items: Items) -> np.ndarray:
    """``(N,)`` group ids of new items: the patient the source names, else the item's own content SHA-256
    (each such item is a group of its own)."""
    named = items.groups if items.groups is not None else [None] * len(items.items)
    return np.array([g if g else kind.digest(x) for x, g in zip(items.items, named, strict=True)], dtype=str)


def _new_splits(
    items: Items,
    labels: np.ndarray,
    groups: np.ndarray | None,
    placed: dict[str, str],
    settings: RetrainSettings,
) -> np.ndarray:
    """The split of a new source's items: its own when it brings a test split; else, per class, seeded,
    and with ``groups`` by group, an item of an already ``placed`` patient joining that patient's split."""
    if items.splits is not None and "test" in items.splits:
        return np.array(items.splits, dtype=str)
    val, test, seed = settings.val_fraction, settings.test_fraction, settings.seed
    if groups is None:
        return stratified_split(labels, val=val, test=test, seed=seed)
    out = np.array([placed.get(g, "") for g in groups], dtype=object)
    free = out == ""
    if free.any():
        out[free] = stratified_group_split(labels[free], groups[free], val=val, test=test, seed=seed)
    return out.astype(str)


def _rows(items: Items, splits: np.ndarray, groups: np.ndarray | None) -> list[Row]:
    """The manifest rows of ``items``, with their ``groups`` ("" without)."""
    named = groups if groups is not None else [""] * len(items.items)
    return [
        (x, lab, str(s), str(g))
        for x, lab, s, g in zip(items.items, items.labels, splits, named, strict=True)
    ]


def _indices(labels: list[str], classes: list[str], source: str) -> np.ndarray:
    """``(N,)`` indices of ``labels`` in the champion's ``classes``; a label it does not know is refused."""
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(
            f"{source} has labels {unknown} that the champion does not know ({', '.join(classes)}). "
            f"A retrained model keeps the champion's classes; drop those items or train a new model."
        )
    return np.array([classes.index(lab) for lab in labels], dtype=np.int64)


def _write_manifest(path: Path, first_column: str, rows: list[Row], grouped: bool) -> Path:
    """``path``: ``first_column,label,split`` and, when ``grouped``, ``group``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([first_column, "label", "split", *(["group"] if grouped else [])])
        # str: a file's path, or the text itself
        w.writerows((str(x), lab, s, *([g] if grouped else [])) for x, lab, s, g in rows)
    return path


def _content_hash(kind: Kind, rows: Iterable[tuple[Item, str, str]]) -> str:
    """SHA-256 over sorted ``content-sha256 label split`` lines: the same data hashes alike wherever it
    lies (an image file's SHA-256, a text's own)."""
    lines = sorted(f"{kind.digest(x)} {lab} {s}" for x, lab, s in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
