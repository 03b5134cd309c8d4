"""The forecasting task: no leakage through prepare, the pinball loss, metrics in the data's units,
prediction from a bundle, and the CLI from a CSV to a trained bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from torchkiln.config import validate
from torchkiln.data.timeseries import fit_scaler
from torchkiln.errors import PredictError
from torchkiln.tasks import get_task
from torchkiln.tasks.forecasting import History, PinballLoss
from torchkiln.tasks.predictor import load_predictor

TASK = get_task("forecasting")


def write_series(path: Path, values: np.ndarray) -> Path:
    times = np.datetime64("2000-01", "M") + np.arange(len(values))
    rows = [f"{t}-01,{v:.4f}" for t, v in zip(times, values, strict=True)]
    path.write_text("time,value\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def seasonal(n: int = 96) -> np.ndarray:
    t = np.arange(n)
    return 50 + 0.3 * t + 8 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(1).normal(0, 0.5, n)


def config(path: Path, runs: Path, **train) -> dict:
    return {
        "task": "forecasting",
        "data": {"path": str(path), "lookback": 12, "horizon": 6, "split": {"val": 12, "test": 12}},
        "model": {"name": "lstm-forecaster", "args": {"hidden_size": 8}},
        "train": {"epochs": 2, "batch_size": 16, **train},
        "tracking": {"mlflow": False, "tensorboard": False},
        "runs_dir": str(runs),
    }


def test_test_values_never_reach_training(tmp_path: Path) -> None:
    """Scaler and MASE scale come from the train rows alone; changing val/test rows changes neither,
    nor any training window."""
    values = seasonal()
    a = TASK.prepare(validate(config(write_series(tmp_path / "a.csv", values), tmp_path)))
    changed = values.copy()
    changed[72:] *= 10  # everything after train (val starts at 72)
    b = TASK.prepare(validate(config(write_series(tmp_path / "b.csv", changed), tmp_path)))
    (cfg_a, data_a), (cfg_b, data_b) = a, b
    assert data_a.bounds["train"] == (0, 72)
    by_hand = fit_scaler(values[:72, None].round(4), "standard")
    assert cfg_a.data.scaler_stats == cfg_b.data.scaler_stats
    np.testing.assert_allclose(cfg_a.data.scaler_stats.center, by_hand.center)
    np.testing.assert_allclose(cfg_a.data.scaler_stats.scale, by_hand.scale)
    assert cfg_a.data.mase_scale == cfg_b.data.mase_scale
    xa, ya = next(iter(TASK.loader(cfg_a, data_a, "train", train=False)))
    xb, yb = next(iter(TASK.loader(cfg_b, data_b, "train", train=False)))
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(ya, yb)
    assert data_a.splits["train"].max() + 6 <= 72


def test_pinball_loss_by_hand() -> None:
    loss = PinballLoss([0.1, 0.5, 0.9])
    out = torch.tensor([[[[1.0, 2.0, 3.0]]]])  # (B=1, H=1, C=1, Q=3)
    y = torch.tensor([[[2.5]]])
    # errors y - q: 1.5, 0.5, -0.5 -> 0.1 * 1.5, 0.5 * 0.5, (0.9 - 1) * -0.5 -> mean of 0.15, 0.25, 0.05
    assert loss(out, y).item() == pytest.approx((0.15 + 0.25 + 0.05) / 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forecast-cli")
    csv = write_series(root / "series.csv", seasonal())
    (root / "config.yaml").write_text(yaml.safe_dump(config(csv, root / "runs")), encoding="utf-8")
    kiln = str(Path(sys.executable).parent / "kiln")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [kiln, "train", str(root / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "val/mase" in proc.stderr  # progress goes to stderr; stdout is the run directory
    return next((root / "runs").glob("*/*/bundle"))


def test_cli_trains_a_bundle_that_forecasts(trained: Path) -> None:
    predictor = load_predictor(trained)
    values = seasonal()[:40, None]
    times = np.datetime64("2000-01", "M") + np.arange(40)
    [answer] = predictor.predict([History(values, times.astype("datetime64[ns]"))])
    assert answer["steps"] == [1, 2, 3, 4, 5, 6]
    low, mid, high = (answer["quantiles"][q]["value"] for q in ("0.1", "0.5", "0.9"))
    assert answer["forecast"]["value"] == mid
    assert all(a <= b <= c for a, b, c in zip(low, mid, high, strict=True))
    assert all(np.isfinite(mid)) and 20 < np.mean(mid) < 200  # in the data's units, not scaled ones


def test_too_short_history_is_refused(trained: Path) -> None:
    predictor = load_predictor(trained)
    times = (np.datetime64("2000-01", "M") + np.arange(5)).astype("datetime64[ns]")
    with pytest.raises(PredictError) as err:
        predictor.predict([History(np.ones((5, 1)), times)])
    assert str(err.value) == (
        "inputs[0] has 5 history points, but the model needs at least lookback = 12. "
        "Send the last 12 (or more) values of the series."
    )
