"""The shared column lookup: exact first, then one case-insensitive match with a warning, else an error."""

from __future__ import annotations

import pytest

from torchkiln.components.columns import match_column
from torchkiln.core.errors import DataError


def test_exact_name_wins_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        assert (
            match_column("review", ["Review", "review"], setting="data.text_column", source="x") == "review"
        )
        assert match_column("text", ["review"], setting="data.text_column", source="x") is None
    assert caplog.messages == []


def test_a_unique_match_by_case_is_used_and_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        assert match_column("Review", ["review", "label"], setting="data.text_column", source="x") == "review"
    assert caplog.messages == [
        "data.text_column 'Review' matched the column 'review'; write that name to silence this"
    ]


def test_two_matches_by_case_are_an_error_naming_both() -> None:
    with pytest.raises(DataError) as info:
        match_column("Review", ["review", "REVIEW"], setting="data.text_column", source="Text file 'r.csv'")
    assert str(info.value) == (
        "Text file 'r.csv' has no column 'Review', and 2 columns differ from it only in case: 'review' and "
        "'REVIEW'; expected one column that data.text_column names. Fix: set `data.text_column` to one of "
        "them exactly, or rename the others."
    )
