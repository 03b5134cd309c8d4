"""``kiln retrain``'s data policy: the new labelled data merged with the original training data.

The policy, in full:

- The original data (the config's ``data.path``, an image folder or CSV manifest) keeps the split
  training gave it (its own split, or the seeded stratified one); its train and val items stay, its test
  items and items left out by ``limit_per_class`` leave the challenger's run.
- The new labelled data (``--data`` folders or CSV manifests, and the feedback-labelled inputs of the
  prediction log) is split per class with ``RetrainSettings.seed``: ``test_fraction`` becomes the **fresh
  test set**, ``val_fraction`` goes to val, the rest to train. A source that brings its own split column
  or train/val/test folders keeps it.
- The challenger trains on the union (a CSV manifest ``merged.csv`` with path, label, split) and is
  judged, like the champion, only on the fresh test set, which it never trained on.

The merged data is then checked by the task's own ``prepare`` (the same validation as training) before
any compute.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.components.images import FileItems, scan_csv, scan_folder
from torchkiln.components.splits import make_splits, stratified_split
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.core.io import sha256_file
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.logged import LoggedInput


@dataclass(frozen=True)
class MergedData:
    manifest: Path
    test_items: list[tuple[Path, str]]  # the fresh test set: (file, label)
    counts: dict[str, dict[str, int]]  # source -> split -> items
    data_sha256: str  # content hash of (file SHA-256, label, split) over the merged manifest
    test_sha256: str  # the same over the fresh test set
    # What the challenger's config sets in its ``data`` section to read ``manifest``.
    data_overrides: dict[str, Any]
    sources: list[str] = field(default_factory=list)


def scan_source(path: Path, *, on_error: str = "raise") -> FileItems:
    """An image folder or a CSV manifest (path, label[, split]) of labelled files."""
    if path.is_dir():
        return scan_folder(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return scan_csv(path, on_error=on_error)
    raise DataError(
        f"--data '{path}' is neither an image folder (root/<class>/... or root/train/<class>/...) nor a .csv "
        f"manifest (path,label[,split]). Give one of those."
    )


def original_items(cfg: RunConfig) -> FileItems:
    """The training data ``cfg`` names, if it is files kiln retrain can merge (image folder or manifest)."""
    d = cfg.data
    path = Path(str(getattr(d, "path", "")))
    if not hasattr(d, "path_column") or not (path.is_dir() or path.suffix.lower() == ".csv"):
        raise DataError(
            f"kiln retrain merges new data into image data given as a folder or a CSV manifest; this "
            f"config's data.path is '{getattr(d, 'path', '?')}' ({cfg.task.kind}). Write the data out as a "
            f"folder (kiln datasets fetch NAME --out DIR) and point data.path at it."
        )
    if path.is_dir():
        return scan_folder(path)
    return scan_csv(
        path,
        on_error=getattr(d, "on_error", "raise"),
        path_column=d.path_column,
        label_column=getattr(d, "label_column", "label"),
        split_column=getattr(d, "split_column", "split"),
    )


def feedback_items(inputs: list[LoggedInput], folder: Path) -> FileItems:
    """Write the feedback-labelled logged inputs (file bytes) under ``folder/<label>/`` and scan them."""
    from PIL import Image

    paths, labels = [], []
    for x in inputs:
        if x.label is None:
            continue
        if not isinstance(x.raw, bytes):
            raise DataError(
                "The logged inputs of this task are not files; kiln retrain --feedback-from takes image "
                "requests. Give the labelled data with --data instead."
            )
        fmt = (Image.open(io.BytesIO(x.raw)).format or "png").lower()
        target = folder / x.label / f"{x.request_id}-{x.item}.{'jpg' if fmt == 'jpeg' else fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(x.raw)
        paths.append(target)
        labels.append(x.label)
    return FileItems(paths, labels, None)


def merge(
    cfg: RunConfig, new: dict[str, FileItems], out_dir: Path, settings: RetrainSettings, classes: list[str]
) -> MergedData:
    """Write ``out_dir/merged.csv`` by the policy above and return it with its fresh test set and hashes.

    Raises:
        DataError: no new labelled items, or labels outside the champion's classes.
    """
    rows: list[tuple[Path, str, str]] = []
    new_rows: list[tuple[Path, str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    orig = original_items(cfg)
    o_labels = np.array(orig.labels)
    given = np.array(orig.splits) if orig.splits is not None else None
    o_splits = make_splits(cfg.data, o_labels, given, cfg.seed)  # type: ignore[arg-type]
    for p, lab, s in zip(orig.paths, orig.labels, o_splits, strict=True):
        if s in ("train", "val"):
            rows.append((Path(p).resolve(), lab, str(s)))
    counts["original"] = dict(Counter(str(s) for s in o_splits))
    for name, items in new.items():
        unknown = sorted(set(items.labels) - set(classes))
        if unknown:
            raise DataError(
                f"New data {name} has labels {unknown} that the champion does not know "
                f"({', '.join(classes)}). "
                f"A retrained model keeps the champion's classes; drop those items or train a new model."
            )
        labels = np.array(items.labels)
        if items.splits is not None and "test" in items.splits:
            splits = np.array(items.splits)
        else:
            splits = stratified_split(
                labels, val=settings.val_fraction, test=settings.test_fraction, seed=settings.seed
            )
        new_rows += [
            (Path(p).resolve(), lab, str(s)) for p, lab, s in zip(items.paths, labels, splits, strict=True)
        ]
        counts[name] = dict(Counter(str(s) for s in splits))
    test_items = [(p, lab) for p, lab, s in new_rows if s == "test"]
    rows += new_rows
    if not new_rows:
        raise DataError(
            "kiln retrain found no new labelled items. Give --data FOLDER|CSV, or --feedback-from LOG_URL "
            "with feedback labels on logged requests whose bodies were kept."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "merged.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows((str(p), lab, s) for p, lab, s in rows)
    overrides = {"path": str(manifest), "format": "csv", "path_column": "path", "label_column": "label"}
    return MergedData(
        manifest=manifest,
        data_overrides=overrides | {"split_column": "split"},
        test_items=test_items,
        counts=counts,
        data_sha256=_content_hash((p, lab, s) for p, lab, s in rows),
        test_sha256=_content_hash((p, lab, "test") for p, lab in test_items),
        sources=[str(getattr(cfg.data, "path", "")), *new],
    )


def _content_hash(rows: object) -> str:
    """SHA-256 over sorted ``file-sha256 label split`` lines: the same data hashes alike wherever it lies."""
    lines = sorted(f"{sha256_file(p)} {lab} {s}" for p, lab, s in rows)  # type: ignore[attr-defined]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
