"""Text tables: CSV / TSV / JSONL reading with row-level errors, and CSV writing (the catalog's VADER
text sets are in test_movie_reviews.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchkiln.components.text_table import (
    TextTable,
    detect_text_format,
    read_text_table,
    select_text_split,
    write_text_csv,
)
from torchkiln.core.errors import DataError


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def raises(message: str):
    return pytest.raises(DataError, match=re.escape(message))


# ---- happy paths ---------------------------------------------------------------------------------------


def test_csv_with_custom_columns_split_quotes_and_multiline(tmp_path):
    path = write(
        tmp_path / "reviews.csv",
        'id,review,sentiment,part\n1,"Great, really great",pos,train\n'
        '2,"He said ""meh""\nand left",neg,val\n\n3,  plain text  ,pos,test\n',
    )
    table = read_text_table(path, text_column="review", label_column="sentiment", split_column="part")
    assert table.texts == ["Great, really great", 'He said "meh"\nand left', "plain text"]
    assert table.labels == ["pos", "neg", "pos"]
    assert table.splits == ["train", "val", "test"]
    assert table.rows == [2, 3, 6]  # the multi-line record is numbered by its first line; line 5 is blank
    assert table.problems == [] and table.source == str(path)


def test_tsv_keeps_quotes_as_plain_text(tmp_path):
    path = write(tmp_path / "r.tsv", 'label\ttext\tsplit\n1\t"Great" movie, no doubt\ttrain\n0\tdull\ttest\n')
    table = read_text_table(path, split_column="split")
    assert table.texts == ['"Great" movie, no doubt', "dull"]
    assert table.labels == ["1", "0"] and table.splits == ["train", "test"]


def test_jsonl_with_int_and_bool_labels_and_blank_lines(tmp_path):
    path = write(
        tmp_path / "r.jsonl",
        '{"body": "good", "y": 1, "s": "train"}\n\n{"body": "bad\\r\\nworse", "y": "0", "s": "val"}\n'
        '{"body": "ok", "y": true, "s": "test"}\n',
    )
    table = read_text_table(path, text_column="body", label_column="y", split_column="s")
    assert table.texts == ["good", "bad\nworse", "ok"]
    assert table.labels == ["1", "0", "true"]
    assert table.splits == ["train", "val", "test"] and table.rows == [1, 3, 4]


def test_bom_and_crlf(tmp_path):
    path = write(tmp_path / "r.csv", b'\xef\xbb\xbftext,label\r\n"two\r\nlines",pos\r\nhi,neg\r\n')
    table = read_text_table(path)
    assert table.texts == ["two\nlines", "hi"] and table.labels == ["pos", "neg"] and table.rows == [2, 4]


def test_prediction_file_without_labels(tmp_path):
    table = read_text_table(write(tmp_path / "p.csv", "text\nhello\n"), require_labels=False)
    assert table.labels == [""] and table.splits is None


def test_detect_format(tmp_path):
    assert [detect_text_format(f"a{s}") for s in (".csv", ".TSV", ".tab", ".jsonl", ".ndjson")] == [
        "csv", "tsv", "tsv", "jsonl", "jsonl",
    ]  # fmt: skip
    with raises("Cannot tell the format of 'a.txt' from its suffix '.txt'"):
        detect_text_format("a.txt")
    with raises("set data.format to csv, tsv or jsonl"):
        read_text_table(write(tmp_path / "r.txt", "text,label\nhi,pos\n"))
    assert read_text_table(tmp_path / "r.txt", format="csv").texts == ["hi"]


# ---- whole-file errors ---------------------------------------------------------------------------------


def test_invalid_utf8_names_line_and_byte(tmp_path):
    path = write(tmp_path / "r.csv", b"text,label\nfine,pos\ncaf\xe9,neg\n")
    with raises(f"Text file '{path}' is not valid UTF-8: line 3, byte offset 23 holds the byte 0xe9"):
        read_text_table(path, on_error="skip")  # a whole-file error even when skipping
    with raises("Fix: re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8"):
        read_text_table(path)


def test_missing_column_with_did_you_mean(tmp_path):
    path = write(tmp_path / "r.csv", "txt,label\nhi,pos\n")
    with raises(f"Text file '{path}' has no column 'text' (columns found: txt, label)"):
        read_text_table(path, on_error="skip")
    with raises("Did you mean 'txt'? Fix: set `data.text_column: <name>`"):
        read_text_table(path)
    with raises("has no column 'lab' (columns found: txt, label); expected the label"):
        read_text_table(path, text_column="txt", label_column="lab")
    with raises("has no column 'split'") as info:
        read_text_table(path, text_column="txt", split_column="split")
    assert "`data.split_column: <name>`" in str(info.value)


def test_missing_column_hints_at_the_delimiter(tmp_path):
    path = write(tmp_path / "r.csv", "text\tlabel\nhi\tpos\n")
    with raises("The header looks tab-separated: set data.format."):
        read_text_table(path)


def test_empty_files(tmp_path):
    with raises("has no rows; expected a header row, then one row per text"):
        read_text_table(write(tmp_path / "e.csv", ""))
    with raises("has no rows"):
        read_text_table(write(tmp_path / "h.csv", "text,label\n"))
    with raises('has no rows; expected {"text": "...", "label": "..."}'):
        read_text_table(write(tmp_path / "e.jsonl", "\n\n"))
    with raises("Cannot read the text file"):
        read_text_table(tmp_path / "missing.csv")


def test_broken_csv_quoting(tmp_path):
    path = write(tmp_path / "r.csv", 'text,label\n"unclosed,pos\nnext,neg\n')
    with raises(f"Text file '{path}' is not valid CSV near line 3 (unexpected end of data)"):
        read_text_table(path, on_error="skip")


# ---- row errors ----------------------------------------------------------------------------------------


def test_empty_text_names_the_row(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\nhi,pos\n   ,neg\n")
    with raises(f"Text file '{path}', line 3: the text in column 'text' is empty; expected some text."):
        read_text_table(path)


def test_empty_label_unless_prediction_file(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\nhi,\n")
    with raises("line 2: the label in column 'label' is empty; expected a class name."):
        read_text_table(path)
    assert read_text_table(path, require_labels=False).labels == [""]


def test_unknown_label_lists_classes(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\nhi,good\nho,postive\n")
    with raises(
        "line 3: the label 'postive' is not one of the known classes (bad, good). "
        "Fix: add it to data.classes, or remove the row."
    ):
        read_text_table(path, classes=["bad", "good"])
    with raises("line 2: the label 'good' is not one of the known classes (negative, positive)."):
        read_text_table(path, classes=["negative", "positive"])
    with raises(
        "line 2: the label 'postive' is not one of the known classes (negative, positive). Did you mean"
    ):
        read_text_table(
            write(tmp_path / "r2.csv", "text,label\nho,postive\n"), classes=["negative", "positive"]
        )


def test_bad_split_value(tmp_path):
    path = write(tmp_path / "r.csv", "text,label,split\nhi,pos,train\nho,neg,validation\n")
    with raises("line 3: the split 'validation' in column 'split' is not one of train, val, test."):
        read_text_table(path, split_column="split")


def test_wrong_field_count(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\nhi,pos\nGreat, fun,pos\n")
    with raises(
        "line 3: the row has 3 fields but the header has 2 (text, label); expected one field per column. "
        'Fix: wrap fields that hold commas or line breaks in double quotes ("a, b")'
    ):
        read_text_table(path)


def test_jsonl_row_problems(tmp_path):
    path = write(
        tmp_path / "r.jsonl",
        '["a", "list"]\n{"text": "ok", "label": "pos"}\n{broken\n{"txt": "x", "label": "pos"}\n'
        '{"text": "x", "label": 1.5}\n{"text": 3, "label": "pos"}\n',
    )
    with raises(
        f"Text file '{path}', line 1: the line holds a JSON list, not an object; expected one object"
    ):
        read_text_table(path)
    table = read_text_table(path, on_error="skip")
    assert table.texts == ["ok"] and table.rows == [2]
    reasons = dict(table.problems)
    assert list(reasons) == ["r.jsonl:1", "r.jsonl:3", "r.jsonl:4", "r.jsonl:5", "r.jsonl:6"]
    assert reasons["r.jsonl:3"].startswith("the line is not valid JSON (Expecting property name")
    assert (
        "has no key 'text' (keys found: txt, label); expected the text under that key. Did you mean 'txt'?"
        in (reasons["r.jsonl:4"])
    )
    assert reasons["r.jsonl:5"].startswith("the label under 'label' is 1.5; expected a string or an integer.")
    assert reasons["r.jsonl:6"].startswith("the text under 'text' is 3; expected a string.")


def test_skip_reports_problems_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,label\nhi,pos\n,neg\nho,maybe\nhey,neg\n")
    table = read_text_table(path, on_error="skip", classes=["neg", "pos"])
    assert table.texts == ["hi", "hey"] and table.labels == ["pos", "neg"] and table.rows == [2, 5]
    assert [item for item, _ in table.problems] == ["reviews.csv:3", "reviews.csv:4"]
    assert table.problems[1][1].startswith("the label 'maybe' is not one of the known classes (neg, pos).")


def test_all_rows_skipped_is_an_error(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\n,pos\n \t,neg\n")
    with raises(
        f"Every row of '{path}' was left out (2 bad row(s)); expected at least one good row. "
        f"The first: r.csv:2"
    ):
        read_text_table(path, on_error="skip")


# ---- writing and selecting -----------------------------------------------------------------------------


def test_write_text_csv_round_trip(tmp_path):
    texts = ["a, b", 'say "hi"', "two\nlines", "  é ünïcode"]
    table = TextTable(texts, ["x", "y", "x", "y"], ["train", "val", "test", "train"], [1, 2, 3, 4], [], "t")
    path = write_text_csv(table, tmp_path / "out" / "t.csv")
    back = read_text_table(path, split_column="split")
    assert (
        back.texts == [*texts[:3], "é ünïcode"]
        and back.labels == table.labels
        and back.splits == table.splits
    )
    assert path.read_text(encoding="utf-8").splitlines()[0] == "text,label,split"
    with raises("already exists; expected a new file"):
        write_text_csv(table, path)
    write_text_csv(TextTable(["z"], ["x"], None, [1], [], "t"), path, overwrite=True)
    assert path.read_text(encoding="utf-8") == "text,label\nz,x\n"
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]  # no temporary file left


def test_select_text_split(tmp_path):
    table = TextTable(["a", "b", "c"], ["x", "y", "x"], ["train", "test", "test"], [2, 3, 4], [], "t")
    part = select_text_split(table, "test")
    assert part.texts == ["b", "c"] and part.rows == [3, 4] and part.splits == ["test", "test"]
    with raises("This data set has no 'val' split (it has ['test', 'train']). Leave out --split"):
        select_text_split(table, "val")


# ---- column names that differ in case --------------------------------------------------------------------


def test_columns_match_by_case_with_a_warning(tmp_path, caplog):
    path = write(tmp_path / "r.csv", "Review,Sentiment,Part\nfine,pos,train\n")
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        table = read_text_table(path, text_column="review", label_column="sentiment", split_column="part")
    assert (table.texts, table.labels, table.splits) == (["fine"], ["pos"], ["train"])
    assert caplog.messages == [
        "data.text_column 'review' matched the column 'Review'; write that name to silence this",
        "data.label_column 'sentiment' matched the column 'Sentiment'; write that name to silence this",
        "data.split_column 'part' matched the column 'Part'; write that name to silence this",
    ]


def test_an_exact_column_beats_one_that_differs_in_case(tmp_path, caplog):
    path = write(tmp_path / "r.csv", "Text,text,label\nloud,quiet,pos\n")
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        assert read_text_table(path).texts == ["quiet"]
    assert caplog.messages == []


def test_two_columns_that_differ_only_in_case_are_ambiguous(tmp_path):
    path = write(tmp_path / "r.csv", "Text,TEXT,label\nloud,louder,pos\n")
    with pytest.raises(DataError) as info:
        read_text_table(path)
    assert str(info.value) == (
        f"Text file '{path}' has no column 'text', and 2 columns differ from it only in case: 'Text' and "
        f"'TEXT'; expected one column that data.text_column names. Fix: set `data.text_column` to one of "
        f"them exactly, or rename the others."
    )
