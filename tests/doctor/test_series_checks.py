"""A series' order and overlap: unsorted, repeated, off-grid and missing timestamps, empty values, filled test
targets and a copied stretch are each found and counted; a clean series raises nothing."""

from __future__ import annotations

from pathlib import Path

from .planted import examine, monthly, of, series_config, serious, write_series


def report_on(tmp_path: Path, rows: list[tuple[str, str]], **data: object):
    raw = series_config(write_series(tmp_path / "series.csv", rows), tmp_path, **data)
    return examine({**raw, "seed": 0}, cheap_only=True)


def test_a_clean_series_raises_nothing(tmp_path: Path) -> None:
    assert serious(report_on(tmp_path, monthly())) == []


def test_unsorted_and_repeated_timestamps_are_errors_each_counted(tmp_path: Path) -> None:
    rows = monthly()
    rows[10], rows[11] = rows[11], rows[10]  # one pair swapped
    rows[30], rows[31] = rows[31], rows[30]  # and another
    rows.insert(50, rows[50])  # a repeated month
    report = report_on(tmp_path, rows)
    found = of(report, "series-order")
    assert [(f.severity, f.count) for f in found] == [("error", 2), ("error", 1)]
    assert found[0].message == (
        f"2 timestamps come before the row above, e.g. Time-series file '{tmp_path / 'series.csv'}', line "
        "13: 2000-11-01 after 2000-12-01. Training reads the rows in file order."
    )
    assert found[1].message.startswith("1 timestamp appears more than once (2 rows), e.g. 2004-03-01")
    assert of(report, "data-loads")[0].severity == "error"  # training refuses it too


def test_missing_months_are_an_error_when_training_would_refuse_them(tmp_path: Path) -> None:
    rows = monthly()
    del rows[20:23]  # a gap of 3 months
    del rows[40]  # and one of 1
    (found,) = of(report_on(tmp_path, rows), "series-order")
    assert (found.severity, found.count) == ("error", 4)
    assert found.message == (
        "4 of 72 (5.6%) timestamps at MS are missing, in 2 gaps (the longest 3 steps), the first 2001-09-01."
    )


def test_filled_gaps_are_an_info_and_filled_test_targets_a_warning(tmp_path: Path) -> None:
    rows = monthly()
    del rows[20:23]  # in train: filled, harmless
    rows[66] = (rows[66][0], "")  # an empty value among the test targets (the last 12 months)
    found = of(report_on(tmp_path, rows, fill="interpolate"), "series-order")
    assert [(f.severity, f.count) for f in found] == [("warning", 1), ("info", 3), ("info", 1)]
    assert found[0].message == (
        "test: 1 of 12 (8.3%) target steps are filled in (interpolate), not observed: the test score partly "
        "grades the filling."
    )


def test_timestamps_off_the_grid_are_an_error(tmp_path: Path) -> None:
    rows = monthly()
    rows[30] = ("2002-07-15", rows[30][1])  # mid-month, on a month-start series
    found = of(report_on(tmp_path, rows, freq="MS"), "series-order")
    assert next(f.message.split(",")[0] for f in found if f.severity == "error") == (
        "1 timestamp falls between the steps of the MS grid from 2000-01-01"
    )


def test_a_copied_stretch_in_the_test_targets_is_a_warning(tmp_path: Path) -> None:
    rows = monthly()
    for i in range(6):  # the test's first 6 months repeat 6 train months, value for value
        rows[60 + i] = (rows[60 + i][0], rows[12 + i][1])
    (found,) = of(report_on(tmp_path, rows), "series-overlap")
    assert (found.severity, found.count) == ("warning", 1)
    assert found.message.startswith(
        "test: 1 of 7 (14%) forecast windows repeat a train stretch value for value, e.g. the 6 steps from "
        "2005-01-01 equal those from 2001-01-01"
    )
