"""The series as ``kiln doctor`` reads it: the task's ``doctor_data`` hook.

The rows are read as the file has them (not sorted, not made regular, not filled), so that every unsorted,
repeated, off-grid or missing step is counted; ``prepare`` stops at the first. When ``prepare`` accepted
the series, the regular series it trains on comes along with the rows it filled in and the splits' bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torchkiln.components.doctor_data import DoctorData, SeriesView
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.tasks.forecasting.config import parts
from torchkiln.tasks.forecasting.data import (
    _frequency,
    _load_source,
    _pandas,
    _parse_times,
    _parse_values,
    _value_columns,
)


def _filled(data: Any, time: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(T,)`` rows of the regular series that were filled in: a missing timestamp, or an empty cell."""
    grid = data.frame.time
    pos = np.searchsorted(grid, time)
    on = (pos < len(grid)) & (grid[np.minimum(pos, len(grid) - 1)] == time)
    filled = np.ones(len(grid), dtype=bool)
    filled[pos[on]] = np.isnan(values[on]).any(axis=1)
    return filled


def doctor_data(cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData:
    """The file's rows and timestamps (in file order), the frequency and its grid; with ``data``, the
    regular targets training reads, which of its rows were filled in, and the splits' target rows.

    ``data`` is the task's ``SeriesData`` (not imported: ``task.py`` imports this module), or None.

    Raises:
        DataError: the rows cannot be read at all (no such file or column, a cell that is not a number).
    """
    d, _ = parts(cfg)
    pd = _pandas()
    src = _load_source(d, pd)
    time = _parse_times(src, pd)
    targets, covariates = _value_columns(src, d)
    values = _parse_values(src, [*targets, *covariates], pd)  # (N, C + K), NaN where a cell is empty
    rows = np.arange(len(time))
    if d.start or d.end:  # the rows a resolved config keeps
        keep = np.ones(len(time), dtype=bool)
        if d.start:
            keep &= time >= np.datetime64(d.start, "ns")
        if d.end:
            keep &= time <= np.datetime64(d.end, "ns")
        time, values, rows = time[keep], values[keep], rows[keep]
    freq = data.frame.freq if data is not None else None
    if freq is None:
        try:
            freq = _frequency(src, np.unique(time), d.freq, pd)
        except DataError:
            freq = None  # prepare's refusal says why
    grid = data.frame.time if data is not None else None  # the regular series' timestamps
    if grid is None and freq is not None and len(time):
        grid = pd.date_range(time.min(), time.max(), freq=freq).to_numpy().astype("datetime64[ns]")
    series = SeriesView(
        time=time,
        values=values,
        columns=[*targets, *covariates],
        where=lambda i: src.at(int(rows[i])),
        freq=freq,
        grid=grid,
        fill=d.fill,
        targets=data.frame.targets if data is not None else None,
        filled=_filled(data, time, values) if data is not None else None,
        bounds=dict(data.bounds) if data is not None else {},
        horizon=d.horizon,
    )
    return DoctorData(series=series)
