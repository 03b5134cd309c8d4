"""What a forecaster is asked and answers: the JSON request and answer schemas, and a history read from a
CSV for ``kiln predict --history`` (checked against the bundle's columns, frequency and horizon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import PredictError
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig, parts, resolved
from torchkiln.tasks.forecasting.data import future_times, iso_time, read_series


class ForecastRequest(BaseModel):
    """The recent history of the series, oldest first, and its timestamps."""

    model_config = ConfigDict(extra="forbid")

    history: list[float] | list[list[float]] = Field(
        description="The last values, oldest first: numbers (one target) or rows of one number per target."
    )
    timestamps: list[str] = Field(description="The ISO 8601 time of each history value.")
    covariates: list[list[float]] | None = Field(
        None, description="The file covariates for each history step and each step to forecast (rows)."
    )


class ForecastAnswer(BaseModel):
    """The forecast of every target: the median and each quantile, one value per future step."""

    timestamps: list[str] | None = Field(description="The ISO 8601 time of each forecast step.")
    steps: list[int] = Field(description="1 .. horizon: steps after the last history point.")
    forecast: dict[str, list[float]]
    quantiles: dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class History:
    """One decoded request: values (n, C), their timestamps, and known covariates (n + H, Kf) or None."""

    values: np.ndarray
    time: np.ndarray
    covariates: np.ndarray | None = None


def read_history(cfg: RunConfig, path: str | Path) -> History:
    """A history CSV (the training file's columns, oldest first) -> a :class:`History` to forecast from.

    It goes through the same checks as training data (order, duplicates, gaps, ``data.fill``). A model
    with file covariates also needs them for the steps to forecast: the file then ends with
    ``horizon`` rows whose target cells are empty and whose covariate cells are filled.

    Raises:
        DataError: the file fails those checks.
        PredictError: the covariate rows of the steps to forecast are missing, too many, not numbers, or
            not the next ``horizon`` timestamps.
    """
    import pandas as pd

    d, _ = parts(cfg)
    whole = {"path": str(path), "format": "csv", "calendar": [], "start": None, "end": None}
    if not d.covariates:
        frame = read_series(d.model_copy(update=whole))
        return History(frame.targets, frame.time)
    targets, freq = resolved(d.targets, "targets", "read_history"), resolved(d.freq, "freq", "read_history")
    raw = _read_raw(Path(path), d)
    missing = [c for c in (d.time_column, *targets, *d.covariates) if c not in raw.columns]
    if missing:
        raise PredictError(
            f"The history file '{path}' has no column(s) {missing}; it has {list(raw.columns)}. Expected "
            f"the training file's columns."
        )
    known = ~(raw[targets] == "").all(axis=1).to_numpy()
    future = len(known) - (int(np.flatnonzero(known)[-1]) + 1 if known.any() else 0)
    if future != d.horizon:
        raise PredictError(
            f"'{path}' ends with {future} row(s) without target values, but this model needs the "
            f"covariates {d.covariates} of the {d.horizon} steps it forecasts. Expected the history, then "
            f"{d.horizon} rows with the target cells empty and the covariate cells filled."
        )
    last = str(raw[d.time_column].iloc[-future - 1])
    frame = read_series(d.model_copy(update={**whole, "end": last}))
    tail = raw.iloc[-future:]
    times = pd.to_datetime(tail[d.time_column], errors="coerce").to_numpy().astype("datetime64[ns]")
    expected = future_times(frame.time[-1], freq, d.horizon)
    if not np.array_equal(times, expected):
        raise PredictError(
            f"The last {future} rows of '{path}' are for {[str(t) for t in tail[d.time_column]]}, but "
            f"the steps to forecast are {[iso_time(t) for t in expected]}. Give one row per step after "
            f"the last value, at the data's frequency ({freq})."
        )
    try:
        covariates = tail[d.covariates].astype(float).to_numpy()
    except ValueError as exc:
        raise PredictError(
            f"A covariate of the steps to forecast in '{path}' is not a number ({exc})."
        ) from None
    return History(frame.targets, frame.time, np.concatenate([frame.covariates, covariates]))


def _read_raw(path: Path, d: TimeSeriesDataConfig) -> Any:
    """The file as strings (empty cells as ""), to find the rows of the steps to forecast."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise PredictError(f"Cannot read the history file '{path}' ({exc}). Expected a CSV.") from None
