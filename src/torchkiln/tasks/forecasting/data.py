"""Time series for forecasting: read and check a CSV or catalog series; calendar features and timestamps.

Splitting it in time, windowing and scaling it without leakage is :mod:`torchkiln.tasks.forecasting.windows`.

Reading needs pandas (the ``forecast`` extra); it is imported inside the functions that use it.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchkiln.components.catalog import DATASETS, load_series_catalog
from torchkiln.components.columns import match_column
from torchkiln.core.errors import DataError, did_you_mean
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("torchkiln.data")


@dataclass(frozen=True)
class SeriesFrame:
    """A series as read from a file or the catalog: checked, sorted, regular, filled.

    Attributes:
        time: datetime64[ns], (N,), strictly increasing, one step of ``freq`` apart.
        targets: float64 (N, C): the columns to forecast.
        covariates: float64 (N, K): the file's covariate columns, then the calendar features (K may be 0).
        target_names: the C target column names.
        covariate_names: the K covariate names: file columns, then e.g. "calendar:month".
        freq: a pandas offset alias, e.g. "MS", "D", "h".
        season: steps per season (12 for monthly data).
        time_column: the file's time column as it spells it; the resolved config keeps it.
    """

    time: np.ndarray
    targets: np.ndarray
    covariates: np.ndarray
    target_names: list[str]
    covariate_names: list[str]
    freq: str
    season: int
    time_column: str = "time"  # as the file spells it (inferred, or matched ignoring case)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise DataError(
            "Reading time series needs pandas, which is not installed; expected the forecast extra. "
            "Fix: pip install 'torchkiln[forecast]'."
        ) from None
    return pandas


@dataclass(frozen=True)
class _Source:
    """A table as read, before the checks: strings from a CSV, typed columns from the catalog."""

    frame: pd.DataFrame
    name: str  # "Time-series file 'x.csv'" or "The catalog series 'air-passengers'"
    lines: np.ndarray  # (N,) the file line (header = 1) or the catalog row (from 1) of each frame row
    unit: str  # "line" or "row"
    time_column: str

    def at(self, i: int) -> str:
        return f"{self.name}, {self.unit} {self.lines[i]}"


def read_series(d: TimeSeriesDataConfig) -> SeriesFrame:
    """Read the series a ``data`` section names, check it, and make it regular.

    Checks, in order: the file exists; the time column exists; every timestamp parses; the target and
    covariate columns exist; every value is a number; the time increases; no timestamp repeats; the
    frequency (``d.freq``, else inferred); no timestamp or value is missing, unless ``d.fill`` is
    "interpolate" (linear in time) or "ffill", which fill them on the regular grid. Timestamps with a
    UTC offset are converted to UTC and kept without one.

    Args:
        d: the data section. ``d.path`` is a catalog name (kind "timeseries") or a .csv file.

    Returns:
        A :class:`SeriesFrame`. Targets default to every numeric column that is not the time or a covariate.

    Raises:
        DataError: any check fails; the message gives the line (or row), the column and the fix.

    Example:
        >>> s = read_series(TimeSeriesDataConfig(path="air-passengers", calendar=["month"]))
        >>> s.targets.shape, s.covariate_names, s.freq, s.season
        ((144, 1), ['calendar:month'], 'MS', 12)
    """
    pd = _pandas()
    src = _find_time_column(_load_source(d, pd), pd)
    times = _parse_times(src, pd)  # (N,) datetime64[ns]
    targets, covariates = _value_columns(src, d)
    values = _parse_values(src, [*targets, *covariates], pd)  # (N, C+K), NaN where a cell is empty
    _check_order(src, times)
    times, values = _window_of_time(src, times, values, d.start, d.end)
    freq = _frequency(src, times, d.freq, pd)
    times, values = _regularize(src, times, values, [*targets, *covariates], freq, d.fill, pd)
    calendar = calendar_features(times, d.calendar)  # (N, len(d.calendar))
    return SeriesFrame(
        time=times,
        targets=np.ascontiguousarray(values[:, : len(targets)]),
        covariates=np.concatenate([values[:, len(targets) :], calendar], axis=1),
        target_names=targets,
        covariate_names=[*covariates, *(f"calendar:{c}" for c in d.calendar)],
        freq=freq,
        season=d.season or infer_season(freq),
        time_column=src.time_column,
    )


def _window_of_time(
    src: _Source, times: np.ndarray, values: np.ndarray, start: str | None, end: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows from ``start`` to ``end`` (both included, either open): a run's resolved range, so a
    bundle evaluated later sees the rows it was trained on even if the file has grown."""
    if start is None and end is None:
        return times, values
    try:
        lo = np.datetime64(start, "ns") if start else times[0]
        hi = np.datetime64(end, "ns") if end else times[-1]
    except ValueError:
        raise DataError(
            f"data.start '{start}' or data.end '{end}' is not an ISO 8601 time. Expected e.g. 1958-12-01."
        ) from None
    keep = (times >= lo) & (times <= hi)
    if not keep.any():
        raise DataError(
            f"{src.name} has no rows from {start or 'its start'} to {end or 'its end'} (it covers "
            f"{iso_time(times[0])} to {iso_time(times[-1])}). Fix: set data.start / data.end inside that "
            f"range, or leave them out."
        )
    return times[keep], values[keep]


def _load_source(d: TimeSeriesDataConfig, pd: Any) -> _Source:
    suffix = Path(d.path).suffix.lower()
    if d.format == "catalog" or (d.format == "auto" and d.path in DATASETS and suffix != ".csv"):
        frame = load_series_catalog(d.path)
        lines = np.arange(1, len(frame) + 1)
        return _Source(frame, f"The catalog series '{d.path}'", lines, "row", "time")
    path = Path(d.path)
    if d.format == "auto" and suffix != ".csv":
        raise DataError(
            f"data.path '{d.path}' is neither a .csv file nor a catalog time series."
            f"{did_you_mean(d.path, DATASETS.names())} Expected a CSV with a time column, or a name from "
            f"`kiln list datasets` (kind timeseries). Fix: correct data.path, or set data.format: csv."
        )
    if not path.is_file():
        raise DataError(
            f"Time-series file '{path}' does not exist; expected a CSV with a '{d.time_column}' column and "
            f"value columns. Fix: check data.path (relative paths start at the working directory)."
        )
    try:  # strings, so that each cell is checked here with its line; blank lines kept to count lines
        frame = pd.read_csv(path, dtype=str, skip_blank_lines=False, encoding="utf-8-sig")
    except (ValueError, OSError) as exc:  # UnicodeDecodeError and pandas' ParserError are ValueErrors
        raise DataError(
            f"Time-series file '{path}' cannot be read as CSV ({type(exc).__name__}: {str(exc).strip()}); "
            f"expected UTF-8 comma-separated text with a header row and one field per column. Fix: correct "
            f"the file where the error points, or re-save it as UTF-8 CSV."
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    keep = frame.notna().any(axis=1).to_numpy()  # blank lines are all-empty rows
    lines = np.arange(2, len(frame) + 2)[keep]  # the header is line 1
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"Time-series file '{path}' has no rows; expected a header, then one row per timestamp. "
            f"Fix: add rows, or check data.path."
        )
    return _Source(frame, f"Time-series file '{path}'", lines, "line", d.time_column)


def _find_time_column(src: _Source, pd: Any) -> _Source:
    """The source with its time column found: as named, else by case (:func:`match_column`), else the
    file's one date-like column, with a warning that names the setting to write."""
    columns = list(src.frame.columns)
    found = match_column(src.time_column, columns, setting="data.time_column", source=src.name)
    if found is not None:
        return replace(src, time_column=found)
    dated = [c for c in columns if _date_like(src.frame[c], pd)]
    if len(dated) == 1:
        log.warning(
            "%s has no time column '%s'; using '%s', its one column of dates. Write `data.time_column: %s` "
            "to silence this",
            src.name,
            src.time_column,
            dated[0],
            dated[0],
        )
        return replace(src, time_column=dated[0])
    several = f" Several columns hold dates: {', '.join(dated)}." if dated else ""
    raise DataError(
        f"{src.name} has no time column '{src.time_column}' (columns found: {', '.join(columns)}); "
        f"expected the timestamps in a column of that name.{did_you_mean(src.time_column, columns)}{several} "
        f"Fix: set `data.time_column: <name>` to the column that holds the timestamps, or rename it."
    )


def _date_like(col: pd.Series, pd: Any) -> bool:
    """The column's first non-empty cells (up to 20) are all dates, and it is not a number column
    (a year alone such as 2014 parses as a date too)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return True
    if pd.api.types.is_numeric_dtype(col) or _mostly_numeric(col):
        return False
    sample = col.dropna().astype(str).str.strip()
    sample = sample[sample != ""].head(20)
    if sample.empty:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format"
        try:
            parsed = pd.to_datetime(sample, errors="coerce", format="ISO8601")
            if parsed.isna().any():
                parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
        except (ValueError, TypeError):  # e.g. mixed time zones: still dates, but say nothing here
            return False
    return bool(parsed.notna().all())


def _parse_times(src: _Source, pd: Any) -> np.ndarray:
    col = src.frame[src.time_column]
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = col
    else:
        text = col.fillna("").astype(str).str.strip()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not infer format": each value is then parsed alone
            try:
                parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
                if parsed.isna().all():
                    parsed = pd.to_datetime(text, errors="coerce")
            except (ValueError, TypeError) as exc:  # e.g. mixed time zones
                raise DataError(
                    f"{src.name}: the timestamps in column '{src.time_column}' cannot be read together "
                    f"({exc}); expected one format and one time zone. Fix: write them all in one time zone "
                    f"(e.g. UTC)."
                ) from None
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        raise DataError(
            f"{src.at(bad[0])}: the timestamp {col.iloc[bad[0]]!r} in column '{src.time_column}' cannot "
            f"be read; expected a date or date-time such as 2014-01-31 or 2014-01-31 13:00 (ISO 8601). "
            f"Fix: correct or remove the row."
        )
    return parsed.to_numpy().astype("datetime64[ns]")


def _value_columns(src: _Source, d: TimeSeriesDataConfig) -> tuple[list[str], list[str]]:
    """The target and covariate columns as the file names them (a unique match by case counts)."""
    columns = list(src.frame.columns)
    given_targets = [_named_column(src, c, "target", "data.targets") for c in d.targets or []]
    covariates = [_named_column(src, c, "covariate", "data.covariates") for c in d.covariates]
    for name, role, setting in [(c, "target", "data.targets") for c in given_targets] + [
        (c, "covariate", "data.covariates") for c in covariates
    ]:
        if name == src.time_column or (role == "covariate" and name in given_targets):
            raise DataError(
                f"The column '{name}' is given twice (as a {role} and as the time or a target); expected "
                f"each column in one role. Fix: remove it from {setting}."
            )
    if d.targets is not None:
        return given_targets, covariates
    rest = [c for c in columns if c != src.time_column and c not in covariates]
    targets = [c for c in rest if _mostly_numeric(src.frame[c])]
    if not targets:
        raise DataError(
            f"{src.name} has no numeric column to forecast (columns found: {', '.join(columns)}); expected "
            f"at least one value column besides the time and the covariates. Fix: set data.targets."
        )
    return targets, covariates


def _named_column(src: _Source, name: str, role: str, setting: str) -> str:
    columns = list(src.frame.columns)
    found = match_column(name, columns, setting=setting, source=src.name)
    if found is None:
        raise DataError(
            f"{src.name} has no {role} column '{name}' (columns found: {', '.join(columns)}); "
            f"expected every name in {setting} to be a column.{did_you_mean(name, columns)} "
            f"Fix: correct {setting}, or add the column."
        )
    return found


def _mostly_numeric(col: pd.Series) -> bool:
    """At least half of the non-empty cells are numbers: a value column, maybe with typos to report."""
    pd = _pandas()
    given = col.dropna()
    return bool(len(given)) and pd.to_numeric(given, errors="coerce").notna().mean() >= 0.5


def _parse_values(src: _Source, names: list[str], pd: Any) -> np.ndarray:
    out = np.empty((len(src.frame), len(names)))  # (N, C+K)
    for j, name in enumerate(names):
        col = src.frame[name]
        if not pd.api.types.is_numeric_dtype(col):
            col = col.str.strip()
            col = col.where(col != "")  # a cell of spaces is an empty cell
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(col.notna().to_numpy() & ~np.isfinite(num))
        if bad.size:
            kind = "a finite number" if np.isinf(num[bad[0]]) else "a number"
            raise DataError(
                f"{src.at(bad[0])}, column '{name}': {col.iloc[bad[0]]!r} is not {kind}; expected a number "
                f"in every value column (an empty cell marks a missing value). Fix: correct the value, or "
                f"empty the cell and set data.fill: interpolate."
            )
        out[:, j] = num
    return out


def iso_time(t: np.datetime64) -> str:
    """ISO 8601, to the second; a date alone at midnight (``1961-01-01``)."""
    return str(np.datetime64(t, "s")).removesuffix("T00:00:00")


def _check_order(src: _Source, times: np.ndarray) -> None:
    steps = np.diff(times)
    back = np.flatnonzero(steps < np.timedelta64(0))
    if back.size:
        i = back[0] + 1
        raise DataError(
            f"{src.at(i)}: the timestamp {iso_time(times[i])} comes before {iso_time(times[i - 1])} "
            f"on {src.unit} "
            f"{src.lines[i - 1]}; expected timestamps in increasing order. Fix: sort the file by time "
            f"(e.g. pandas: df.sort_values('{src.time_column}'))."
        )
    same = np.flatnonzero(steps == np.timedelta64(0))
    if same.size:
        i = same[0] + 1
        raise DataError(
            f"{src.at(i)}: the timestamp {iso_time(times[i])} repeats {src.unit} {src.lines[i - 1]} "
            f"({same.size} repeated timestamp(s) in all); expected one row per timestamp. Fix: aggregate "
            f"the rows of each timestamp (e.g. average them) or drop the duplicates."
        )


def _frequency(src: _Source, times: np.ndarray, given: str | None, pd: Any) -> str:
    if given:
        try:
            offset = pd.tseries.frequencies.to_offset(given)
        except ValueError as exc:
            raise DataError(
                f"data.freq '{given}' is not a pandas frequency ({exc}); expected an offset alias such as "
                f"MS (month start), D (day), h (hour) or 15min. Fix: correct data.freq, or leave it out."
            ) from None
        try:  # a fixed step far finer than the data would build a huge grid: refuse it here
            steps = int((times[-1] - times[0]) // pd.Timedelta(offset).to_timedelta64())
        except ValueError:  # months, quarters, ...: no fixed length, and never finer than a day
            steps = 0
        if steps > 100 * len(times) + 100_000:
            raise DataError(
                f"data.freq '{given}' puts {steps + 1} steps between the first and the last timestamp of "
                f"{src.name}, which has {len(times)} rows; expected about one row per step. Fix: set "
                f"data.freq to the file's frequency, or leave it out to infer it."
            )
        return given
    if len(times) < 3:
        raise DataError(
            f"{src.name} has {len(times)} timestamp(s); at least 3 are needed to infer the frequency. "
            f"Fix: set data.freq (e.g. D or MS), or add rows."
        )
    freq = _infer_freq(pd.DatetimeIndex(times), pd) or _local_freq(times, pd)
    if freq is None:
        raise DataError(
            f"{src.name}: the frequency cannot be inferred from the timestamps (no step repeats); expected "
            f"regular steps. Fix: set data.freq to a pandas alias such as MS, D or h."
        )
    return freq


def _infer_freq(index: pd.DatetimeIndex, pd: Any) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3.1: "infer_freq will return an offset"; both handled
        freq = pd.infer_freq(index)
    return None if freq is None else getattr(freq, "freqstr", freq)


def _local_freq(times: np.ndarray, pd: Any) -> str | None:
    """The frequency when gaps defeat pd.infer_freq: the most common one among short gap-free runs,
    else the most common step ("2D", "h", ...)."""
    for size in (7, 3):
        starts = range(0, max(0, len(times) - size + 1), max(1, (len(times) - size) // 300))
        found = [f for i in starts if (f := _infer_freq(pd.DatetimeIndex(times[i : i + size]), pd))]
        if found:
            names, counts = np.unique(found, return_counts=True)
            return str(names[counts.argmax()])
    steps, counts = np.unique(np.diff(times), return_counts=True)
    if counts.max() < 2:
        return None
    seconds = int(steps[counts.argmax()] / np.timedelta64(1, "s"))
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds % size == 0:
            return f"{seconds // size if seconds != size else ''}{unit}"
    return None  # sub-second steps: set data.freq


def _regularize(
    src: _Source, times: np.ndarray, values: np.ndarray, names: list[str], freq: str, fill: str, pd: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Check the timestamps against the ``freq`` grid; fill missing steps and cells when ``fill`` says so."""
    grid = pd.date_range(times[0], times[-1], freq=freq).to_numpy().astype("datetime64[ns]")
    pos = np.searchsorted(grid, times)
    off = np.flatnonzero((pos >= len(grid)) | (grid[np.minimum(pos, len(grid) - 1)] != times))
    if off.size:
        raise DataError(
            f"{src.at(off[0])}: the timestamp {iso_time(times[off[0]])} is not on the {freq} grid "
            f"that starts at "
            f"{iso_time(times[0])}; expected every timestamp a whole number of {freq} steps after the first. "
            f"Fix: set data.freq to the file's frequency (or leave it out to infer it), or correct the row."
        )
    empty = np.isnan(values)  # (N, C+K)
    first = empty.argmin(axis=0)  # per column, the first row with a value
    if (lead := np.flatnonzero(empty.all(axis=0) | (first > 0))).size and fill != "raise":
        j = lead[0]
        raise DataError(
            f"{src.at(0)}, column '{names[j]}': the value is empty, and data.fill: {fill} cannot fill the "
            f"start of a series (nothing comes before it); expected a value in the first row. Fix: remove "
            f"the leading rows without a value, or fill them in."
        )
    if fill == "raise":
        if len(grid) > len(times):
            j = int(np.flatnonzero(pos != np.arange(len(pos)))[0])  # first row after a gap
            raise DataError(
                f"{src.name} is missing {len(grid) - len(times)} timestamp(s) at frequency {freq}; the "
                f"first: {iso_time(grid[j])}, between {iso_time(times[j - 1])} "
                f"({src.unit} {src.lines[j - 1]}) and "
                f"{iso_time(times[j])} ({src.unit} {src.lines[j]}). Expected one row per {freq} step from "
                f"{iso_time(times[0])} to {iso_time(times[-1])}. Fix: add the rows, or set "
                f"data.fill: interpolate "
                f"(or ffill) to fill them in."
            )
        if empty.any():
            i, j = np.argwhere(empty)[0]
            raise DataError(
                f"{src.at(i)}, column '{names[j]}': the value is empty ({int(empty.sum())} empty cell(s) in "
                f"all); expected a number in every value column. Fix: fill the cells in, or set data.fill: "
                f"interpolate (or ffill)."
            )
        return times, values
    frame = pd.DataFrame(values, index=pd.DatetimeIndex(times)).reindex(pd.DatetimeIndex(grid))
    frame = frame.interpolate(method="time") if fill == "interpolate" else frame.ffill()
    return grid, frame.to_numpy(dtype=np.float64)


# (value from a DatetimeIndex, largest value): each feature is value / largest - 0.5, in [-0.5, 0.5]
_CALENDAR: dict[str, tuple[Any, int]] = {
    "month": (lambda ix: ix.month - 1, 11),
    "quarter": (lambda ix: ix.quarter - 1, 3),
    "dayofweek": (lambda ix: ix.dayofweek, 6),
    "dayofyear": (lambda ix: ix.dayofyear - 1, 365),
    "dayofmonth": (lambda ix: ix.day - 1, 30),
    "hour": (lambda ix: ix.hour, 23),
    "weekofyear": (lambda ix: ix.isocalendar().week - 1, 52),
}


def calendar_features(time: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Calendar fields of timestamps, each scaled into [-0.5, 0.5] (month: (m - 1) / 11 - 0.5).

    They are known in advance, so the same function makes them for future timestamps at predict time.

    Args:
        time: (N,) datetime64 timestamps.
        names: any of month, quarter, dayofweek, dayofyear, dayofmonth, hour, weekofyear (ISO week).

    Returns:
        float64 (N, len(names)).

    Raises:
        DataError: a name is not one of those.

    Example:
        >>> calendar_features(np.array(["2014-01-01", "2014-12-01"], dtype="datetime64[ns]"), ["month"])
        array([[-0.5], [ 0.5]])
    """
    out = np.empty((len(time), len(names)))
    if not names:
        return out
    index = _pandas().DatetimeIndex(np.asarray(time, dtype="datetime64[ns]"))
    for j, name in enumerate(names):
        if name not in _CALENDAR:
            raise DataError(
                f"Unknown calendar feature '{name}'; expected one of {', '.join(_CALENDAR)}."
                f"{did_you_mean(name, _CALENDAR)} Fix: correct data.calendar."
            )
        value, largest = _CALENDAR[name]
        out[:, j] = np.asarray(value(index), dtype=np.float64) / largest - 0.5
    return out


def future_times(last: np.datetime64, freq: str, n: int) -> np.ndarray:
    """The ``n`` timestamps that follow ``last`` at ``freq``: the forecast horizon's timestamps.

    Example:
        >>> future_times(np.datetime64("1960-12-01"), "MS", 2)
        array(['1961-01-01T00:00:00.000000000', '1961-02-01T00:00:00.000000000'], dtype='datetime64[ns]')
    """
    pd = _pandas()
    offset = pd.tseries.frequencies.to_offset(freq)
    start = pd.Timestamp(last) + offset
    return pd.date_range(start, periods=max(n, 0), freq=offset).to_numpy().astype("datetime64[ns]")


_SEASONS = {"M": 12, "MS": 12, "ME": 12, "BM": 12, "BMS": 12, "BME": 12, "Q": 4, "QS": 4, "QE": 4}
_SEASONS |= {"BQ": 4, "BQS": 4, "BQE": 4, "W": 52, "D": 7, "B": 7, "h": 24, "H": 24, "min": 60, "T": 60}


def infer_season(freq: str) -> int:
    """Steps per season for a frequency: a year of months (12) or quarters (4), a year of weeks (52), a week
    of days (7), a day of hours (24), an hour of minutes (60); 1 otherwise (no seasonality assumed).

    A multiple divides the season when it can ("2h" -> 12, "15min" -> 4), else gives 1. An anchor such as
    "QS-JAN" or "W-SUN" is ignored. ``data.season`` overrides this.

    Example:
        >>> infer_season("MS"), infer_season("W-SUN"), infer_season("YS")
        (12, 52, 1)
    """
    match = re.fullmatch(r"(\d*)([A-Za-z]+)(-\w+)?", freq.strip())
    if not match:
        return 1
    base, multiple = _SEASONS.get(match[2], 1), int(match[1] or 1)
    return base // multiple if base % multiple == 0 and base // multiple > 1 else 1
