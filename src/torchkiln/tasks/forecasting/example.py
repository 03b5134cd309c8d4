"""A tiny, real forecasting run: a monthly seasonal series in a CSV and a config that trains in seconds.

Used by the task conformance suite (every registered task and model goes through it) and by anyone who
wants a working example to start from: written to YAML, the returned config is one ``kiln train`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.config import quick_run

MONTHS = 72


def seasonal_series(n: int = MONTHS, *, seed: int = 1) -> np.ndarray:
    """A monthly series: a rising trend, a 12-month season and a little noise (values around 50-80)."""
    t = np.arange(n)
    return 50 + 0.3 * t + 8 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(seed).normal(0, 0.5, n)


def write_series(path: Path, values: np.ndarray, *, start: str = "2000-01") -> Path:
    """Write ``time,value`` rows, one per month from ``start`` (first of the month), and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    times = np.datetime64(start, "M") + np.arange(len(values))
    rows = [f"{t}-01,{v:.4f}" for t, v in zip(times, values, strict=True)]
    path.write_text("time,value\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def example_config(root: Path) -> dict[str, Any]:
    """Write a tiny monthly series under ``root`` and return a raw config that trains on it in seconds.

    Args:
        root: an existing or new folder; ``root/series.csv`` gets the series, ``root/runs`` the runs.

    Returns:
        A raw config dict (validate it with :func:`torchkiln.tasks.base.validate`): a small LSTM
        forecaster, lookback 12, horizon 6, the month as a calendar covariate, 12 val and 12 test months,
        one epoch, batch size 16, a constant learning rate, on the CPU in fp32, tracking off. Its inputs
        need no file covariates, so the task's example request (a history and its timestamps) is a valid
        request for it.

    Example:
        >>> cfg = validate(example_config(tmp_path))
    """
    root = Path(root)
    series = write_series(root / "series.csv", seasonal_series())
    return {
        "task": "forecasting",
        "data": {
            "path": str(series),
            "calendar": ["month"],
            "lookback": 12,
            "horizon": 6,
            "split": {"val": 12, "test": 12},
        },
        "model": {"name": "lstm-forecaster", "args": {"hidden_size": 8}},
        **quick_run(str(root / "runs"), batch_size=16),
    }
