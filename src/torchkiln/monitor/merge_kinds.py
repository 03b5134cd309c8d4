"""How each data kind that ``kiln retrain`` merges reads, writes and hashes its items (images or texts), and
which group (patient) each item belongs to. The policy that uses them is :mod:`torchkiln.monitor.data_merge`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torchkiln.components.images import FileItems, image_header, scan_csv, scan_data_files, scan_folder
from torchkiln.components.splits import group_ids
from torchkiln.components.text_table import read_text_table
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.core.io import sha256_file
from torchkiln.monitor.logged import LoggedInput

Item = Path | str  # an image file, or a text


@dataclass(frozen=True)
class Items:
    """One source's labelled items, before the merge splits them: resolved image files or texts."""

    items: list[Item]
    labels: list[str]
    splits: list[str] | None  # None when the source brings no split
    # The group (patient) of each item, None for an item of no known group; the list is None when the
    # config names no groups (data.group_pattern / data.group_column), so nothing is split by group.
    groups: list[str | None] | None = None


@dataclass(frozen=True)
class Source:
    """A ``--data`` path; the merge reads it the way the config's data kind reads new data."""

    path: Path
    on_error: str = "raise"


@dataclass(frozen=True)
class Feedback:
    """Feedback-labelled logged inputs; the merge turns them into rows of the config's data kind."""

    inputs: list[LoggedInput]
    folder: Path  # where image inputs are written as files


NewData = Source | Feedback


def scan_source(path: Path, *, on_error: str = "raise") -> NewData:
    """A ``--data`` folder or file of new labelled data. Its columns depend on the config's data kind, so
    the merge reads it; here only its existence is checked.

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


class Kind(Protocol):
    """How one data kind reads, writes and hashes its items. Every method is called from the merge."""

    first_column: str  # merged.csv's item column

    def original(self, cfg: RunConfig) -> Items: ...
    def read(self, source: Source, cfg: RunConfig) -> Items: ...
    def feedback(self, source: Feedback, cfg: RunConfig) -> Items: ...
    def digest(self, item: Item) -> str: ...  # SHA-256 of the item's content
    def overrides(self, manifest: Path, *, grouped: bool) -> dict[str, Any]: ...


class Images:
    """Image files: a folder or a CSV manifest; groups from data.group_column or data.group_pattern."""

    first_column = "path"

    def original(self, cfg: RunConfig) -> Items:
        d: Any = cfg.data
        path = Path(str(d.path))
        if not (path.is_dir() or path.suffix.lower() == ".csv"):
            raise DataError(
                f"kiln retrain merges new data into image data given as a folder or a CSV manifest; this "
                f"config's data.path is '{path}' ({cfg.task.kind}). Write the data out as a folder "
                f"(kiln datasets fetch NAME --out DIR) and point data.path at it."
            )
        files = scan_data_files(path, d)
        files = _readable(files) if d.on_error == "skip" else files
        where = f"The original data '{path}'"
        groups = files.groups
        if groups is None and d.group_pattern is not None:  # every name must match, as in training
            groups = group_ids([p.name for p in files.paths], d.group_pattern, where=where).tolist()
        return _items(files, groups)

    def read(self, source: Source, cfg: RunConfig) -> Items:
        d: Any = cfg.data
        path = source.path
        if path.is_dir():
            files = scan_folder(path)
        elif path.is_file() and path.suffix.lower() == ".csv":
            column = d.group_column if d.group_column in _csv_header(path) else None
            files = scan_csv(path, on_error=source.on_error, group_column=column)
        else:
            raise DataError(
                f"--data '{path}' is neither an image folder (root/<class>/... or root/train/<class>/...) "
                f"nor a .csv manifest (path,label[,split]). Give one of those."
            )
        if files.groups is not None:
            return _items(files, files.groups)
        if d.group_pattern is not None:  # the patient of each name the pattern finds one in; else none
            rx = re.compile(d.group_pattern)
            return _items(
                files, [(m.group(1) or None) if (m := rx.search(p.name)) else None for p in files.paths]
            )
        return _items(files, [None] * len(files.paths) if _grouped(cfg) else None)

    def feedback(self, source: Feedback, cfg: RunConfig) -> Items:
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
        # A served image names no patient: each is a group of its own (the merge gives it its SHA-256).
        return Items(paths, labels, None, [None] * len(paths) if _grouped(cfg) else None)

    def digest(self, item: Item) -> str:
        return sha256_file(Path(item))

    def overrides(self, manifest: Path, *, grouped: bool) -> dict[str, Any]:
        columns = {"path_column": "path", "label_column": "label", "split_column": "split"}
        groups = {"group_column": "group", "group_pattern": None} if grouped else {}
        return {"path": str(manifest), "format": "csv"} | columns | groups


def _grouped(cfg: RunConfig) -> bool:
    """Whether the config names groups (patients), so the merge splits and writes by group."""
    return (
        getattr(cfg.data, "group_column", None) is not None
        or getattr(cfg.data, "group_pattern", None) is not None
    )


def _readable(files: FileItems) -> FileItems:
    """``files`` less those whose header cannot be read: training (data.on_error: skip) leaves them out
    before it splits, so the merge must too, or the split it rebuilds differs."""
    ok = []
    for i, p in enumerate(files.paths):
        try:
            image_header(p)
            ok.append(i)
        except DataError:
            pass
    return FileItems(
        [files.paths[i] for i in ok],
        [files.labels[i] for i in ok],
        [files.splits[i] for i in ok] if files.splits is not None else None,
        files.problems,
        [files.groups[i] for i in ok] if files.groups is not None else None,
    )


def _items(files: FileItems, groups: list[str] | list[str | None] | None) -> Items:
    return Items([Path(p).resolve() for p in files.paths], list(files.labels), files.splits, groups)  # type: ignore[arg-type]


class Texts:
    """Texts: a CSV, TSV or JSONL file, read as training reads it. Text data names no groups."""

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

    def feedback(self, source: Feedback, cfg: RunConfig) -> Items:
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

    def overrides(self, manifest: Path, *, grouped: bool) -> dict[str, Any]:
        columns = {"text_column": "text", "label_column": "label", "split_column": "split"}
        return {"path": str(manifest), "format": "csv"} | columns


def kind_of(cfg: RunConfig) -> Kind:
    """The one place that tells the data kinds apart: by the fields of the config's ``data`` section."""
    if hasattr(cfg.data, "text_column"):
        return Texts()
    if hasattr(cfg.data, "path_column"):
        return Images()
    raise DataError(
        f"kiln retrain merges new labelled data into image or text classification data; this config trains "
        f"{cfg.task.kind}, whose data it cannot merge. Fix: train a new {cfg.task.kind} model on the new "
        f"data with kiln train."
    )


def _csv_header(path: Path) -> list[str]:
    """A CSV's header names (BOM and surrounding blanks dropped); bad bytes are the reader's to report."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        return [name.strip() for name in next(csv.reader(fh), [])]
