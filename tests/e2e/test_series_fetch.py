"""`kiln datasets fetch` for catalog time series: a CSV that reads back as the catalog series."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from torchkiln.cli.main import app
from torchkiln.tasks.forecasting.config import TimeSeriesDataConfig
from torchkiln.tasks.forecasting.data import read_series


def unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps CLI output at the terminal width, even inside paths."""
    return "".join(text.split())


def fetch(*args: str):
    return CliRunner().invoke(app, ["datasets", "fetch", *args])


def test_fetch_air_passengers_writes_a_csv_that_reads_back(tmp_path):
    result = fetch("air-passengers", "--out", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    path = tmp_path / "data" / "air-passengers.csv"
    assert unwrapped(f"wrote 144 rows to {path}") in unwrapped(result.output)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["time,passengers", "1949-01-01,112", "1949-02-01,118"]
    assert lines[-1] == "1960-12-01,432" and len(lines) == 145
    assert not list(path.parent.glob(".*.part"))  # the temporary file was renamed, not left behind

    from_file = read_series(TimeSeriesDataConfig(path=str(path), calendar=["month"]))
    from_catalog = read_series(TimeSeriesDataConfig(path="air-passengers", calendar=["month"]))
    np.testing.assert_array_equal(from_file.time, from_catalog.time)
    np.testing.assert_array_equal(from_file.targets, from_catalog.targets)
    np.testing.assert_array_equal(from_file.covariates, from_catalog.covariates)
    assert (from_file.target_names, from_file.freq, from_file.season) == (["passengers"], "MS", 12)


def test_fetch_refuses_to_overwrite_and_rejects_split(tmp_path):
    assert fetch("air-passengers", "--out", str(tmp_path)).exit_code == 0
    path = tmp_path / "air-passengers.csv"
    path.write_text("time,passengers\n")  # changed by hand: must survive a refused fetch

    again = fetch("air-passengers", "--out", str(tmp_path))
    assert again.exit_code == 2 and "Traceback" not in again.output
    assert unwrapped(f"{path} already exists; expected a new file.") in unwrapped(again.output)
    assert path.read_text() == "time,passengers\n"

    forced = fetch("air-passengers", "--out", str(tmp_path), "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert len(path.read_text().splitlines()) == 145

    split = fetch("sunspots", "--out", str(tmp_path), "--split", "test")
    assert split.exit_code == 2
    message = (
        "--split is not supported for the time series 'sunspots': its train/val/test parts are chronological "
        "and set by data.split in the run config, not stored in the data. Fix: leave out --split; the whole "
        "series is written."
    )
    assert unwrapped(message) in unwrapped(split.output)
    assert not (tmp_path / "sunspots.csv").exists()


def test_fetch_multivariate_series(tmp_path):
    result = fetch("elec-daily", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    path = tmp_path / "elec-daily.csv"
    assert unwrapped(f"wrote 365 rows to {path}") in unwrapped(result.output)
    d = TimeSeriesDataConfig(path=str(path), targets=["demand"], covariates=["workday", "temperature"])
    s = read_series(d)
    assert s.targets.shape == (365, 1) and s.covariates.shape == (365, 2) and s.freq == "D"
    catalog = read_series(d.model_copy(update={"path": "elec-daily"}))
    np.testing.assert_array_equal(s.targets, catalog.targets)
    np.testing.assert_array_equal(s.covariates, catalog.covariates)
