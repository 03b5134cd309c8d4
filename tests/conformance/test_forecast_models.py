"""Every registered forecaster, through the forecasting task: shapes, backward, the bundle round trip,
covariates, and ONNX export at any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchkiln.artifacts.bundle import load_bundle, save_bundle
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.components.models import MODELS
from torchkiln.exporter.onnx import export_onnx
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate

FORECASTERS = MODELS.of("forecasting").names()
SMALL = {
    "lstm-forecaster": {"hidden_size": 8},
    "seq2seq-forecaster": {"hidden_size": 8},
    "mlp-forecaster": {"width": 16, "blocks": 2},
}


def seasonal_csv(path: Path, n: int = 120) -> Path:
    t = np.arange(n)
    rng = np.random.default_rng(0)
    sales = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    price = 5 + rng.normal(0, 0.1, n)
    times = np.datetime64("2010-01", "M") + t
    lines = ["time,sales,price"] + [
        f"{m}-01,{s:.3f},{p:.3f}" for m, s, p in zip(times, sales, price, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("forecast-conformance")
    csv = seasonal_csv(root / "sales.csv")
    task = get_task("forecasting")
    out = {}
    for name in FORECASTERS:
        cfg = {
            "task": "forecasting",
            "data": {
                "path": str(csv),
                "targets": ["sales"],
                "covariates": ["price"],
                "calendar": ["month"],
                "lookback": 12,
                "horizon": 6,
                "split": {"val": 12, "test": 12},
            },
            "model": {"name": name, "args": SMALL[name]},
            "runs_dir": str(root / "runs"),
        }
        out[name] = task.prepare(validate(cfg))
    return out


def test_every_forecaster_is_covered() -> None:
    assert set(FORECASTERS) == set(SMALL), "add the new model to SMALL"


@pytest.mark.parametrize("name", FORECASTERS)
def test_forward_backward_bundle_roundtrip(name: str, prepared, tmp_path: Path) -> None:
    task = get_task("forecasting")
    cfg, data = prepared[name]
    torch.manual_seed(0)
    model = task.build_model(cfg)
    x, y = next(iter(task.loader(cfg, data, "train", train=True)))
    assert x.shape[1:] == (12 + 6, 1 + 2) and y.shape[1:] == (6, 1)
    model.train()
    out = model(x)
    assert out.shape == (len(x), 6, 1, 3)
    assert (out.diff(dim=-1) >= 0).all(), "quantiles must not cross"
    loss = task.loss(cfg)(out, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    path = save_bundle(tmp_path / "bundle", cfg=cfg, task=task, model=model)
    again = load_bundle(path)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), model(x))


@pytest.mark.parametrize("name", FORECASTERS)
def test_covariates_of_the_future_change_the_forecast(name: str, prepared) -> None:
    """Known covariates of the steps to forecast reach the output (they are not ignored)."""
    task = get_task("forecasting")
    cfg, data = prepared[name]
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    x, _ = next(iter(task.loader(cfg, data, "val", train=False)))
    moved = x.clone()
    moved[:, 12:, 1] += 3.0  # the future price
    with torch.no_grad():
        assert not torch.allclose(model(x), model(moved))
        past = x.clone()
        past[:, 12:, 0] = 123.0  # the target slots of the future are ignored
        torch.testing.assert_close(model(past), model(x))


@pytest.mark.parametrize("name", FORECASTERS)
def test_onnx_export_matches_eager_at_any_batch(name: str, prepared, tmp_path: Path) -> None:
    task = get_task("forecasting")
    cfg, data = prepared[name]
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    x, _ = next(iter(task.loader(cfg, data, "val", train=False)))
    export_onnx(model, x[:2], tmp_path / "model.onnx", dynamic_axes=task.input_dynamic_axes)
    onnx = OnnxModel(tmp_path / "model.onnx")
    for batch in (x[:1], x[:5]):
        with torch.no_grad():
            torch.testing.assert_close(
                torch.from_numpy(onnx.run(batch.numpy())), model(batch), atol=1e-5, rtol=1e-4
            )
