"""``kiln retrain``'s data policy: the new labelled data merged with the original training data.

The policy, in full:

- The original data (the config's ``data.path``) keeps the split training gave it (its own split, or the
  seeded stratified one); its train and val items stay, its test items and items left out by
  ``limit_per_class`` leave the challenger's run.
- The new labelled data (``--data`` sources, and the feedback-labelled inputs of the prediction log) is
  split per class with ``RetrainSettings.seed``: ``test_fraction`` becomes the **fresh test set**,
  ``val_fraction`` goes to val, the rest to train. A source that brings its own split (a split column
  that holds ``test``, or train/val/test folders) keeps it.
- New labels must be among the champion's classes: a retrained model keeps them.
- The challenger trains on the union (a CSV ``merged.csv`` with the columns below and ``label``,
  ``split``) and is judged, like the champion, only on the fresh test set, which it never trained on.

What each data kind merges, chosen once from the config's ``data`` section (:func:`_kind`):

- **images** (image classification): ``data.path`` is an image folder or a CSV manifest. ``--data`` is a
  folder (``root/<class>/...`` or ``root/{train,val,test}/<class>/...``) or a CSV manifest
  ``path,label[,split]``. Feedback inputs are image bytes, written to files. ``merged.csv``:
  ``path,label,split``; an item is its file, hashed by the file's SHA-256.
- **texts** (text classification): ``data.path`` is a CSV, TSV or JSONL file, read by the same reader and
  columns as training (:func:`torchkiln.components.text_table.read_text_table`). ``--data`` is a CSV with
  the config's ``data.text_column`` and ``data.label_column`` (and optionally a train/val/test column
  named as ``data.split_column``, else ``split``), or else with ``text,label[,split]``, the columns
  ``kiln datasets fetch`` and ``merged.csv`` use.
  Feedback inputs are the logged texts. ``merged.csv``: ``text,label,split``; an item is its text, hashed
  by the SHA-256 of its UTF-8 bytes.

The merged data is then checked by the task's own ``prepare`` (the same validation as training) before
any compute.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from torchkiln.components.images import scan_csv, scan_folder
from torchkiln.components.splits import make_splits, stratified_split
from torchkiln.components.text_table import read_text_table
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.core.io import sha256_file
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.logged import LoggedInput

Item = Path | str  # an image file, or a text


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


@dataclass(frozen=True)
class Items:
    """One source's labelled items, before the merge splits them: resolved image files or texts."""

    items: list[Item]
    labels: list[str]
    splits: list[str] | None  # None when the source brings no split


@dataclass(frozen=True)
class Source:
    """A ``--data`` path; :func:`merge` reads it the way the config's data kind reads new data."""

    path: Path
    on_error: str = "raise"


@dataclass(frozen=True)
class Feedback:
    """Feedback-labelled logged inputs; :func:`merge` turns them into rows of the config's data kind."""

    inputs: list[LoggedInput]
    folder: Path  # where image inputs are written as files


NewData = Source | Feedback


def scan_source(path: Path, *, on_error: str = "raise") -> NewData:
    """A ``--data`` folder or file of new labelled data. Its columns depend on the config's data kind, so
    :func:`merge` reads it; here only its existence is checked.

    Raises:
        DataError: ``path`` does not exist.
    """
    if not path.exists():
        raise DataError(
            f"--data '{path}' does not exist; expected an image folder or a CSV manifest of labelled "
            f"images, or a CSV of labelled texts. Fix: check the path."
        )
    return Source(path, on_error)


def feedback_items(inputs: list[LoggedInput], folder: Path) -> NewData:
    """The feedback-labelled logged inputs; image inputs will be written under ``folder/<label>/``."""
    return Feedback([x for x in inputs if x.label is not None], folder)


class _Kind(Protocol):
    """How one data kind reads, writes and hashes its items. Every method is called from :func:`merge`."""

    first_column: str  # merged.csv's item column

    def original(self, cfg: RunConfig) -> Items: ...
    def read(self, source: Source, cfg: RunConfig) -> Items: ...
    def feedback(self, source: Feedback) -> Items: ...
    def digest(self, item: Item) -> str: ...  # SHA-256 of the item's content
    def overrides(self, manifest: Path) -> dict[str, Any]: ...


class _Images:
    first_column = "path"

    def original(self, cfg: RunConfig) -> Items:
        d = cfg.data
        path = Path(str(d.path))  # type: ignore[attr-defined]
        if not (path.is_dir() or path.suffix.lower() == ".csv"):
            raise DataError(
                f"kiln retrain merges new data into image data given as a folder or a CSV manifest; this "
                f"config's data.path is '{path}' ({cfg.task.kind}). Write the data out as a folder "
                f"(kiln datasets fetch NAME --out DIR) and point data.path at it."
            )
        if path.is_dir():
            return self._items(scan_folder(path))
        files = scan_csv(
            path,
            on_error=getattr(d, "on_error", "raise"),
            path_column=d.path_column,  # type: ignore[attr-defined]
            label_column=getattr(d, "label_column", "label"),
            split_column=getattr(d, "split_column", "split"),
        )
        return self._items(files)

    def read(self, source: Source, cfg: RunConfig) -> Items:
        path = source.path
        if path.is_dir():
            return self._items(scan_folder(path))
        if path.is_file() and path.suffix.lower() == ".csv":
            return self._items(scan_csv(path, on_error=source.on_error))
        raise DataError(
            f"--data '{path}' is neither an image folder (root/<class>/... or root/train/<class>/...) nor a "
            f".csv manifest (path,label[,split]). Give one of those."
        )

    def feedback(self, source: Feedback) -> Items:
        from PIL import Image

        paths: list[Item] = []
        labels = []
        for x in source.inputs:
            if not isinstance(x.raw, bytes):
                raise DataError(
                    "The logged inputs of this task are not files; kiln retrain --feedback-from takes image "
                    "requests. Give the labelled data with --data instead."
                )
            fmt = (Image.open(io.BytesIO(x.raw)).format or "png").lower()
            target = (
                source.folder / str(x.label) / f"{x.request_id}-{x.item}.{'jpg' if fmt == 'jpeg' else fmt}"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(x.raw)
            paths.append(target.resolve())
            labels.append(str(x.label))
        return Items(paths, labels, None)

    def digest(self, item: Item) -> str:
        return sha256_file(Path(item))

    def overrides(self, manifest: Path) -> dict[str, Any]:
        columns = {"path_column": "path", "label_column": "label", "split_column": "split"}
        return {"path": str(manifest), "format": "csv"} | columns

    @staticmethod
    def _items(files: Any) -> Items:
        return Items([Path(p).resolve() for p in files.paths], list(files.labels), files.splits)


class _Texts:
    first_column = "text"

    def original(self, cfg: RunConfig) -> Items:
        d: Any = cfg.data
        if d.format == "catalog" or not Path(d.path).is_file():
            raise DataError(
                f"kiln retrain merges new texts into text data given as a CSV, TSV or JSONL file; this "
                f"config's data.path '{d.path}' is not a file (a catalog name?). Write the data out as a CSV "
                f"(kiln datasets fetch NAME --out NAME.csv) and point data.path at it."
            )
        table = read_text_table(  # as training reads it: same columns, same row checks
            d.path,
            format=d.format,
            text_column=d.text_column,
            label_column=d.label_column,
            split_column=d.split_column,
            on_error=d.on_error,
            classes=d.classes,
        )
        return Items(list(table.texts), table.labels, table.splits)

    def read(self, source: Source, cfg: RunConfig) -> Items:
        d: Any = cfg.data
        path = source.path
        # The config's own columns first, then the text,label[,split] that kiln datasets fetch writes.
        choices = dict.fromkeys([(d.text_column, d.label_column, d.split_column or "split")])
        choices[("text", "label", "split")] = None
        wanted = (
            f"a .csv with the columns {' or '.join(f'{t},{lab}[,{s}]' for t, lab, s in choices)} (a text, "
            f"its label, and optionally train/val/test)"
        )
        if not (path.is_file() and path.suffix.lower() == ".csv"):
            raise DataError(
                f"--data '{path}' is not a .csv file; a text-classification retrain takes new texts as "
                f"{wanted}. Fix: save the new texts as such a CSV."
            )
        header = _csv_header(path)
        for text, label, split in choices:
            if text in header and label in header:
                table = read_text_table(
                    path,
                    format="csv",
                    text_column=text,
                    label_column=label,
                    split_column=split if split in header else None,
                    on_error=source.on_error,  # type: ignore[arg-type]
                )
                return Items(list(table.texts), table.labels, table.splits)
        raise DataError(
            f"--data '{path}' has the columns {', '.join(header) or 'none'}; expected {wanted}. Fix: rename "
            f"its columns to one of those."
        )

    def feedback(self, source: Feedback) -> Items:
        texts: list[Item] = []
        for x in source.inputs:
            if not isinstance(x.raw, str):
                raise DataError(
                    f"A logged input of this text model is a {type(x.raw).__name__}, not a text; kiln "
                    f"retrain --feedback-from takes the texts of text requests. Give the labelled data with "
                    f"--data instead."
                )
            texts.append(x.raw)
        return Items(texts, [str(x.label) for x in source.inputs], None)

    def digest(self, item: Item) -> str:
        return hashlib.sha256(str(item).encode()).hexdigest()

    def overrides(self, manifest: Path) -> dict[str, Any]:
        columns = {"text_column": "text", "label_column": "label", "split_column": "split"}
        return {"path": str(manifest), "format": "csv"} | columns


def _kind(cfg: RunConfig) -> _Kind:
    """The one place that tells the data kinds apart: by the fields of the config's ``data`` section."""
    if hasattr(cfg.data, "text_column"):
        return _Texts()
    if hasattr(cfg.data, "path_column"):
        return _Images()
    raise DataError(
        f"kiln retrain merges new labelled data into image or text classification data; this config trains "
        f"{cfg.task.kind}, whose data it cannot merge. Fix: train a new {cfg.task.kind} model on the new "
        f"data with kiln train."
    )


def original_items(cfg: RunConfig) -> Items:
    """The training data ``cfg`` names, if it is data kiln retrain can merge (images or texts)."""
    return _kind(cfg).original(cfg)


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
        DataError: unreadable data, no new labelled items, or labels outside the champion's classes.

    Example:
        >>> merged = merge(cfg, {"new.csv": scan_source(Path("new.csv"))}, out, RetrainSettings(), classes)
        >>> merged.data_overrides["path"] == str(merged.manifest)
        True
    """
    kind = _kind(cfg)
    orig = kind.original(cfg)
    where = f"The original data '{getattr(cfg.data, 'path', '')}'"
    given = np.array(orig.splits) if orig.splits is not None else None
    # Class indices in the champion's order, as training split them: the stratified split's draws follow it.
    o_splits = make_splits(cfg.data, _indices(orig.labels, classes, where), given, cfg.seed)  # type: ignore[arg-type]
    rows = [(x, lab, str(s)) for x, lab, s in zip(orig.items, orig.labels, o_splits, strict=True)]
    rows = [r for r in rows if r[2] in ("train", "val")]
    counts = {"original": dict(Counter(str(s) for s in o_splits))}
    new_rows: list[tuple[Item, str, str]] = []
    for name, source in new.items():
        items = kind.read(source, cfg) if isinstance(source, Source) else kind.feedback(source)
        labels = _indices(items.labels, classes, f"New data {name}")
        if items.splits is not None and "test" in items.splits:
            splits = np.array(items.splits)
        else:
            splits = stratified_split(
                labels, val=settings.val_fraction, test=settings.test_fraction, seed=settings.seed
            )
        new_rows += [(x, lab, str(s)) for x, lab, s in zip(items.items, items.labels, splits, strict=True)]
        counts[name] = dict(Counter(str(s) for s in splits))
    if not new_rows:
        raise DataError(
            "kiln retrain found no new labelled items. Give --data FOLDER|CSV, or --feedback-from LOG_URL "
            "with feedback labels on logged requests whose bodies were kept."
        )
    rows += new_rows
    test_items = [(x, lab) for x, lab, s in new_rows if s == "test"]
    manifest = _write_manifest(out_dir / "merged.csv", kind.first_column, rows)
    return MergedData(
        manifest=manifest,
        test_items=test_items,
        counts=counts,
        data_sha256=_content_hash(kind, rows),
        test_sha256=_content_hash(kind, ((x, lab, "test") for x, lab in test_items)),
        data_overrides=kind.overrides(manifest),
        sources=[str(getattr(cfg.data, "path", "")), *new],
    )


def _indices(labels: list[str], classes: list[str], source: str) -> np.ndarray:
    """``(N,)`` indices of ``labels`` in the champion's ``classes``; a label it does not know is refused."""
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(
            f"{source} has labels {unknown} that the champion does not know ({', '.join(classes)}). "
            f"A retrained model keeps the champion's classes; drop those items or train a new model."
        )
    return np.array([classes.index(lab) for lab in labels], dtype=np.int64)


def _csv_header(path: Path) -> list[str]:
    """A CSV's header names (BOM and surrounding blanks dropped); bad bytes are the reader's to report."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        return [name.strip() for name in next(csv.reader(fh), [])]


def _write_manifest(path: Path, first_column: str, rows: list[tuple[Item, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([first_column, "label", "split"])
        w.writerows((str(x), lab, s) for x, lab, s in rows)  # str: a file's path, or the text itself
    return path


def _content_hash(kind: _Kind, rows: Iterable[tuple[Item, str, str]]) -> str:
    """SHA-256 over sorted ``content-sha256 label split`` lines: the same data hashes alike wherever it
    lies (an image file's SHA-256, a text's own)."""
    lines = sorted(f"{kind.digest(x)} {lab} {s}" for x, lab, s in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
