"""Text tables for text classification: read CSV, TSV and JSONL files, write CSV.

A text table has one text and one label per row, and optionally a train/val/test split. Every problem
is reported with the file and the row, and says how to fix it. Rows with problems either stop the read
(``on_error="raise"``) or are left out and listed (``on_error="skip"``); problems with the whole file
(not UTF-8, a missing column, no rows) always stop it.

CSV follows RFC 4180 (fields with commas, quotes or line breaks are wrapped in double quotes). TSV
follows the IANA text/tab-separated-values format: fields hold no tabs or line breaks, and quotes are
plain text, so ``"Great" movie`` stays as written.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from torchkiln.components.columns import match_column
from torchkiln.components.splits import SPLITS
from torchkiln.core.errors import DataError, did_you_mean
from torchkiln.core.io import new_text_file

TextFormat = Literal["csv", "tsv", "jsonl"]
_SUFFIXES: dict[str, TextFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# (text, label, split) as read from one row, before the checks; or a problem sentence.
_Raw = tuple[str, str, str | None]


@dataclass(frozen=True)
class TextTable:
    """Texts with their labels, as read from one file or catalog entry.

    Attributes:
        texts: the texts, surrounding whitespace stripped and CRLF turned into LF.
        labels: the raw label strings as in the file ("pos", "1", ...); "" where a prediction file has none.
        splits: "train" / "val" / "test" per row when the file has a split column, else ``None``.
        rows: the source line of each kept row (1-based; in CSV/TSV the header is line 1 and a row that
            spans several lines is numbered by its first line).
        problems: ``(item, reason)`` for the rows left out under ``on_error="skip"``, item like
            "reviews.csv:17".
        source: the path or catalog name.
    """

    texts: list[str]
    labels: list[str]
    splits: list[str] | None
    rows: list[int]
    problems: list[tuple[str, str]]
    source: str


def detect_text_format(path: str | Path) -> TextFormat:
    """Tell the format of a text table from its suffix: .csv, .tsv / .tab, .jsonl / .ndjson.

    Raises:
        DataError: the suffix is none of these.

    Example:
        >>> detect_text_format("data/reviews.tsv")
        'tsv'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"Cannot tell the format of '{path}' from its suffix '{suffix}'; expected one of "
            f"{', '.join(_SUFFIXES)}. Fix: rename the file, or set data.format to csv, tsv or jsonl."
        )
    return _SUFFIXES[suffix]


def read_text_table(
    path: str | Path,
    *,
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto",
    text_column: str = "text",
    label_column: str = "label",
    split_column: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    classes: Sequence[str] | None = None,
    require_labels: bool = True,
) -> TextTable:
    """Read a CSV, TSV or JSONL file of texts and labels, checking every row.

    Args:
        path: the file; it must be UTF-8 (a BOM is accepted).
        format: "auto" tells it from the suffix (:func:`detect_text_format`).
        text_column, label_column: the columns (CSV/TSV header names, or JSON keys) to read.
        split_column: a column with "train", "val" or "test" per row; ``None`` for no split.
        on_error: "raise" stops at the first bad row; "skip" leaves bad rows out and lists them.
        classes: the known labels; a row with any other label is a problem.
        require_labels: when ``False`` (prediction files) the label column may be absent or empty.

    Returns:
        A :class:`TextTable`.

    Raises:
        DataError: the file is missing, not UTF-8, has no such column or no rows, every row was bad,
            or (with ``on_error="raise"``) one row is bad. The message names the file and the line.

    Example:
        >>> table = read_text_table("reviews.csv", text_column="review", label_column="sentiment")
        >>> table.texts[0], table.labels[0]
        ('A gorgeous, witty film.', 'pos')
    """
    path = Path(path)
    fmt = detect_text_format(path) if format == "auto" else format
    if fmt not in ("csv", "tsv", "jsonl") or on_error not in ("raise", "skip"):
        raise DataError(
            f"read_text_table got format={format!r}, on_error={on_error!r}; expected format auto, csv, tsv "
            f"or jsonl, and on_error raise or skip. Fix: pass one of those."
        )
    text = _read_utf8(path)
    columns = (text_column, label_column, split_column)
    if fmt == "jsonl":
        records = _jsonl_records(text, path, columns, require_labels)
    else:
        records = _delimited_records(text, path, "\t" if fmt == "tsv" else ",", columns, require_labels)
    table = TextTable([], [], [] if split_column else None, [], [], str(path))
    for row, raw in records:
        checked = raw if isinstance(raw, str) else _check(raw, columns, classes, require_labels)
        if isinstance(checked, str):
            if on_error == "raise":
                raise DataError(f"Text file '{path}', line {row}: {checked}")
            table.problems.append((f"{path.name}:{row}", checked))
            continue
        table.texts.append(checked[0])
        table.labels.append(checked[1])
        if table.splits is not None:
            table.splits.append(checked[2] or "")
        table.rows.append(row)
    if not table.texts:
        _raise_no_rows(path, fmt, table.problems)
    return table


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"Cannot read the text file '{path}' ({exc.strerror or exc}). Fix: check the path (data.path)."
        ) from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # Excel writes a BOM
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = start + exc.start
        line = data.count(b"\n", 0, bad) + 1
        raise DataError(
            f"Text file '{path}' is not valid UTF-8: line {line}, byte offset {bad} holds the byte "
            f"0x{data[bad]:02x} ({exc.reason}); expected UTF-8 text. Fix: re-save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 '{path}' > fixed{path.suffix}` if it is Latin-1."
        ) from None


def _raise_no_rows(path: Path, fmt: str, problems: list[tuple[str, str]]) -> None:
    if problems:
        item, reason = problems[0]
        raise DataError(
            f"Every row of '{path}' was left out ({len(problems)} bad row(s)); expected at least one good "
            f"row. The first: {item}: {reason}"
        )
    example = '{"text": "...", "label": "..."}' if fmt == "jsonl" else "a header row, then one row per text"
    raise DataError(f"Text file '{path}' has no rows; expected {example}. Fix: add rows, or check data.path.")


def _check(
    raw: _Raw, columns: tuple[str, str, str | None], classes: Sequence[str] | None, require_labels: bool
) -> _Raw | str:
    """The cleaned (text, label, split) of one row, or a sentence that says what is wrong with it."""
    text_column, label_column, split_column = columns
    text, label, split = raw[0].replace("\r\n", "\n").strip(), raw[1].strip(), raw[2]
    if not text:
        return (
            f"the text in column '{text_column}' is empty; expected some text. Fix: fill it in or remove "
            f"the row (or set data.on_error: skip)."
        )
    if not label and require_labels:
        return (
            f"the label in column '{label_column}' is empty; expected a class name. Fix: give every row a "
            f"label, or remove the row (or set data.on_error: skip)."
        )
    if label and classes is not None and label not in classes:
        return (
            f"the label '{label}' is not one of the known classes ({', '.join(classes)})."
            f"{did_you_mean(label, classes)} Fix: add it to data.classes, or remove the row."
        )
    if split is not None:
        split = split.strip()
        if split not in SPLITS:
            return (
                f"the split '{split}' in column '{split_column}' is not one of {', '.join(SPLITS)}."
                f"{did_you_mean(split, SPLITS)} Fix: correct the value, or remove the row."
            )
    return text, label, split


# ---- CSV / TSV -----------------------------------------------------------------------------------------


def _delimited_records(
    text: str, path: Path, delimiter: str, columns: tuple[str, str, str | None], require_labels: bool
) -> Iterator[tuple[int, _Raw | str]]:
    """Yield ``(line, raw row or problem)`` for each record after the header."""
    if delimiter == "\t":  # IANA TSV: no quoting at all
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next((r for r in reader if r), None)
        if header is None:
            return
        header = [name.strip() for name in header]
        index = _column_index(header, path, delimiter, columns, require_labels)
        line = reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if not record:  # a blank line
                continue
            if len(record) != len(header):
                yield start, _field_count_problem(record, header, delimiter)
                continue
            label = record[index[1]] if index[1] is not None else ""
            split = record[index[2]] if index[2] is not None else None
            yield start, (record[index[0]], label, split)
    except csv.Error as exc:
        raise DataError(
            f"Text file '{path}' is not valid CSV near line {reader.line_num} ({exc}); expected fields "
            f"that hold commas, quotes or line breaks to be wrapped in double quotes, with inner quotes "
            f'doubled (""). '
            f"Fix: correct the quoting there, or re-export the file from a spreadsheet as CSV."
        ) from None


def _column_index(
    header: list[str], path: Path, delimiter: str, columns: tuple[str, str, str | None], require_labels: bool
) -> tuple[int, int | None, int | None]:
    """Where the text, label and split columns are (a unique case-insensitive match counts, with a
    warning); a missing column stops the whole read."""
    roles = (("text", "data.text_column", True), ("label", "data.label_column", require_labels))
    roles += (("split", "data.split_column", True),)
    index: list[int | None] = []
    for name, (role, setting, required) in zip(columns, roles, strict=True):
        found = match_column(name, header, setting=setting, source=f"Text file '{path}'") if name else None
        if found is not None:
            index.append(header.index(found))
            continue
        if name is not None and required:
            hint = ""
            if len(header) == 1 and ("\t" if delimiter == "," else ",") in header[0]:
                hint = (
                    f" The header looks {'tab' if delimiter == ',' else 'comma'}-separated: set data.format."
                )
            raise DataError(
                f"Text file '{path}' has no column '{name}' (columns found: {', '.join(header) or 'none'}); "
                f"expected the {role} in a column of that name.{did_you_mean(name, header)} Fix: set "
                f"`{setting}: <name>` to the column that holds the {role}, or rename the column.{hint}"
            )
        index.append(None)
    # The text column is always required (a str name, required=True), so a missing one raised above.
    return cast(int, index[0]), index[1], index[2]


def _field_count_problem(record: list[str], header: list[str], delimiter: str) -> str:
    if delimiter == "\t":
        fix = "make sure texts hold no tab characters or line breaks, or remove the row"
    else:
        fix = 'wrap fields that hold commas or line breaks in double quotes ("a, b"), or remove the row'
    return (
        f"the row has {len(record)} fields but the header has {len(header)} ({', '.join(header)}); "
        f"expected one field per column. Fix: {fix}."
    )


# ---- JSONL ---------------------------------------------------------------------------------------------


def _jsonl_records(
    text: str, path: Path, columns: tuple[str, str, str | None], require_labels: bool
) -> Iterator[tuple[int, _Raw | str]]:
    """Yield ``(line, raw row or problem)`` for each non-blank line."""
    # Split on "\n" only: str.splitlines would also split on U+2028, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield number, _json_row(line, columns, require_labels)


def _json_row(line: str, columns: tuple[str, str, str | None], require_labels: bool) -> _Raw | str:
    text_column, label_column, split_column = columns
    example = f'{{"{text_column}": "...", "{label_column}": "..."}}'
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return (
            f"the line is not valid JSON ({exc.msg} at column {exc.colno}); expected one object per line "
            f"like {example}. Fix: correct or remove the line."
        )
    if not isinstance(obj, dict):
        return (
            f"the line holds a JSON {type(obj).__name__}, not an object; expected one object per line like "
            f"{example}. Fix: correct or remove the line."
        )
    values: list[str | None] = []
    roles = (("text", "data.text_column", True), ("label", "data.label_column", require_labels))
    for key, (role, setting, required) in zip((text_column, label_column), roles, strict=True):
        value = obj.get(key)
        if value is None and key not in obj and required:
            return (
                f"the object has no key '{key}' (keys found: {', '.join(obj) or 'none'}); expected the "
                f"{role} under that key.{did_you_mean(key, obj)} Fix: set `{setting}: <key>`, or add the key."
            )
        values.append(_json_str(value, role == "label"))
        if values[-1] is None:
            kinds = "a string or an integer" if role == "label" else "a string"
            return (
                f"the {role} under '{key}' is {json.dumps(value)}; expected {kinds}. Fix: correct the value."
            )
    split = None
    if split_column is not None:
        split = obj.get(split_column)
        if not isinstance(split, str):
            found = json.dumps(split) if split_column in obj else "missing"
            return (
                f"the split under '{split_column}' is {found}; expected one of {', '.join(SPLITS)}. "
                f"Fix: correct the value, or remove the row."
            )
    return values[0] or "", values[1] or "", split


def _json_str(value: object, is_label: bool) -> str | None:
    """A JSON value as a string: strings as they are; for labels also integers and booleans."""
    if isinstance(value, str):
        return value
    if is_label and value is None:
        return ""  # a null label reads as a missing one; _check decides whether that is allowed
    if is_label and isinstance(value, bool):
        return "true" if value else "false"  # JSON's spelling, not Python's "True"
    if is_label and isinstance(value, int):
        return str(value)
    return None


# ---- selecting and writing -----------------------------------------------------------------------------


def select_text_split(table: TextTable, split: str) -> TextTable:
    """The rows of one split of a text table.

    Raises:
        DataError: the table has no splits, or none called ``split``.

    Example:
        >>> select_text_split(table, "test").splits[:2]
        ['test', 'test']
    """
    if table.splits is None or split not in table.splits:
        have = sorted(set(table.splits)) if table.splits is not None else []
        raise DataError(
            f"This data set has no '{split}' split (it has {have or 'no splits'}). "
            f"Leave out --split to write all of it{', or use one of ' + ', '.join(have) if have else ''}."
        )
    keep = [i for i, s in enumerate(table.splits) if s == split]
    return TextTable(
        [table.texts[i] for i in keep],
        [table.labels[i] for i in keep],
        [split] * len(keep),
        [table.rows[i] for i in keep],
        list(table.problems),
        table.source,
    )


def write_text_csv(table: TextTable, path: Path, *, overwrite: bool = False) -> Path:
    """Write a text table as a UTF-8 CSV with the columns ``text,label`` (and ``split`` when it has splits).

    Fields with commas, quotes or line breaks are quoted by the ``csv`` module, so
    :func:`read_text_table` reads the same texts back. The file is written to a temporary file beside
    ``path`` and renamed at the end, so an interrupted run leaves no half-written file.

    Args:
        table: the texts and labels.
        path: the CSV to write; its folder is created.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        DataError: ``path`` exists (and not ``overwrite``), is a folder, or cannot be written.

    Example:
        >>> write_text_csv(load_text_catalog("movie-reviews"), Path("data/movie-reviews.csv"))
        PosixPath('data/movie-reviews.csv')
    """
    header = ["text", "label"] + (["split"] if table.splits is not None else [])
    columns = [table.texts, table.labels] + ([table.splits] if table.splits is not None else [])
    with new_text_file(path, overwrite=overwrite) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*columns, strict=True))
    return Path(path)
