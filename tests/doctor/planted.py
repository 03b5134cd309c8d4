"""Tiny data sets for the doctor's tests, clean or with one planted problem, and their configs.

Images are drawn (three learnable classes: a square, a horizontal bar, a vertical bar, on noise) and saved
as a per-split ``.npz``, so a test decides exactly which item lands in which split. Series and texts are
CSV files.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.config import quick_run
from torchkiln.doctor import DoctorReport, Finding, run_checks
from torchkiln.tasks.base import load_config
from torchkiln.tasks.forecasting.example import seasonal_series
from torchkiln.tasks.image_classification.example import draw

CLASSES = ("dot", "hbar", "vbar")
SIZE = 16


def drawn(counts: tuple[int, ...], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` images of class ``c``: ``(N, SIZE, SIZE)`` uint8 and ``(N,)`` labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.stack([draw(int(c), rng, SIZE) for c in labels]), labels


def clean_splits(per_class: tuple[int, int, int] = (40, 17, 12)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train, val and test with ``per_class`` items of each of the 3 classes (val: at least 50 in all,
    so the loader keeps the data's own val split)."""
    return {
        split: drawn((n, n, n), seed=i)
        for i, (split, n) in enumerate(zip(("train", "val", "test"), per_class, strict=True))
    }


def write_npz(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    arrays: dict[str, np.ndarray] = {"classes": np.array(CLASSES)}
    for split, (x, y) in splits.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def image_config(path: Path, root: Path, **extra: Any) -> dict[str, Any]:
    """A tiny CNN on ``path`` (an .npz), on the CPU, tracking off; ``extra`` sections are merged in."""
    cfg: dict[str, Any] = {
        "task": "image-classification",
        "data": {"path": str(path), "num_workers": 0},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        **quick_run(str(root / "runs"), batch_size=16),
    }
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


def write_series(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A CSV with columns time and value, rows as given (text, so a test can write any cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time", "value"])
        writer.writerows(rows)
    return path


def monthly(n: int = 72) -> list[tuple[str, str]]:
    """``n`` months of the example's seasonal series from 2000-01, as (time, value) text rows."""
    values = seasonal_series(n)
    return [(f"{2000 + i // 12}-{i % 12 + 1:02d}-01", f"{v:.4f}") for i, v in enumerate(values)]


def series_config(data: Path, root: Path, **data_extra: Any) -> dict[str, Any]:
    return {
        "task": "forecasting",
        "data": {
            "path": str(data),
            "lookback": 12,
            "horizon": 6,
            "split": {"val": 12, "test": 12},
            **data_extra,
        },
        "model": {"name": "lstm-forecaster", "args": {"hidden_size": 8}},
        **quick_run(str(root / "runs"), batch_size=16),
    }


def examine(raw: dict[str, Any], **kwargs: Any) -> DoctorReport:
    """The doctor's report on a raw config, loaded as kiln loads it (so what the user set is known)."""
    return run_checks(load_config(raw), **kwargs)


def of(report: DoctorReport, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def serious(report: DoctorReport) -> list[Finding]:
    """The warnings and errors (what a clean data set must not raise)."""
    return [f for f in report.findings if f.severity != "info"]
