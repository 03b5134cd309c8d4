"""Shared fixtures: a tiny generated image folder and a tiny run config that trains in about a second.

The images are drawn, not downloaded: three classes whose patterns a small CNN tells apart easily
(a bright square in the middle, a horizontal bar, a vertical bar), on seeded noise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from torchkiln.tasks import TASKS
from torchkiln.tasks.image_classification.example import draw
from torchkiln.tasks.text_classification.example import sentiment_rows as example_sentiment_rows

# The `kiln` script of the interpreter running the tests: CI has no venv on PATH, so never look it up there.
KILN = str(Path(sys.executable).parent / "kiln")


def kiln(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``kiln ARGS`` in ``cwd`` as a user would; with ``ok`` it must succeed (the output says why not)."""
    done = subprocess.run([KILN, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, (done.stdout, done.stderr)
    return done


TASKS.names()  # loads every family; each registers its models (model tests iterate over all of them)

CLASSES = ("dot", "hbar", "vbar")

ImageFolderFactory = Callable[..., Path]
ConfigFactory = Callable[..., dict[str, Any]]


def write_image_folder(
    root: Path,
    *,
    per_class: int = 12,
    size: int = 16,
    mode: str = "RGB",
    classes: Sequence[str] = CLASSES,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/NN.png`` and return ``root``; ``mode`` is "RGB" or "L" (grayscale)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gray = draw(c % len(CLASSES), rng, size)
            if mode == "RGB":
                # A class-dependent tint, so RGB data really has three different channels.
                arr = np.stack([gray, gray // (1 + c % 3), gray // (3 - c % 3)], axis=-1)
            else:
                arr = gray
            Image.fromarray(arr).save(folder / f"{i:02d}.png")
    return root


def tiny_config_dict(data_path: str | Path, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """A config that trains a small CNN for one epoch on CPU, with TensorBoard and MLflow off."""
    return {
        "task": "image-classification",
        "data": {"path": str(data_path), "num_workers": 0},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "tracking": {"tensorboard": False, "mlflow": False},
        "runs_dir": str(runs_dir),
    }


@pytest.fixture(scope="session")
def make_image_folder() -> ImageFolderFactory:
    """The folder writer, for tests that need a non-default folder or a wider scope than ``tmp_path``."""
    return write_image_folder


@pytest.fixture(scope="session")
def make_config() -> ConfigFactory:
    """``make_config(data_path, runs_dir)`` -> the tiny config dict (a fresh copy each call)."""
    return tiny_config_dict


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """3 classes x 12 RGB PNGs of 16x16 in ``tmp_path/images/<class>/``."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_config(tiny_image_folder: Path, tmp_path: Path) -> dict[str, Any]:
    """The tiny config dict on :func:`tiny_image_folder`, writing runs under ``tmp_path/runs``."""
    return tiny_config_dict(tiny_image_folder, tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained bundle (the tiny CNN on 16x16 RGB shapes), made once per session. Treat it as read-only."""
    from torchkiln import api

    root = tmp_path_factory.mktemp("tiny-bundle")
    cfg = tiny_config_dict(write_image_folder(root / "images"), root / "runs")
    cfg["train"]["epochs"] = 3
    return api.train(api.load_config(cfg)) / "bundle"


def make_variant(src: Path, dst: Path, seed: int) -> Path:
    """A copy of bundle ``src`` at ``dst`` with perturbed weights: another version of the same model."""
    import hashlib
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in state.items()
    }
    save_file(state, dst / "model.safetensors")
    meta = json.loads((dst / "bundle.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((dst / "model.safetensors").read_bytes()).hexdigest()
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture
def variant_bundle() -> Callable[[Path, Path, int], Path]:
    """``variant_bundle(src, dst, seed)``: another version of bundle ``src``, written to ``dst``."""
    return make_variant


# --- text ------------------------------------------------------------------------------------------
def sentiment_rows(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) pairs: 2 to 13 filler words plus one to three words of the label's polarity."""
    return example_sentiment_rows(n, seed=seed, max_filler=13)


def write_sentiment_csv(path: Path, n: int = 240, *, seed: int = 0) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        writer.writerows(sentiment_rows(n, seed=seed))
    return path


def tiny_text_config_dict(data_path: str | Path, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """A small BiLSTM on the generated reviews: trains in a few seconds on CPU, tracking off."""
    return {
        "task": "text-classification",
        "data": {
            "path": str(data_path),
            "text_column": "review",
            "label_column": "sentiment",
            "max_length": 24,
            "tokenizer": {"vocab_size": 200, "min_frequency": 1},
        },
        "model": {"name": "lstm", "args": {"embed_dim": 16, "hidden_size": 16}},
        "train": {"epochs": 4, "batch_size": 16, "device": "cpu", "optimizer": {"lr": 0.01}},
        "tracking": {"tensorboard": False, "mlflow": False},
        "runs_dir": str(runs_dir),
    }


@pytest.fixture(scope="session")
def tiny_text_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained text bundle (a small BiLSTM on generated reviews), made once per session. Read-only."""
    from torchkiln import api

    root = tmp_path_factory.mktemp("tiny-text-bundle")
    cfg = tiny_text_config_dict(write_sentiment_csv(root / "reviews.csv"), root / "runs")
    return api.train(api.load_config(cfg)) / "bundle"


@pytest.fixture(scope="session")
def make_sentiment_csv() -> Callable[..., Path]:
    """``make_sentiment_csv(path, n=240, seed=0)`` writes generated reviews (columns review, sentiment)."""
    return write_sentiment_csv


@pytest.fixture(scope="session")
def make_text_config() -> ConfigFactory:
    """``make_text_config(data_path, runs_dir)`` -> the tiny BiLSTM config dict (a fresh copy each call)."""
    return tiny_text_config_dict


@pytest.fixture(scope="session")
def make_sentiment_rows() -> Callable[..., list[tuple[str, str]]]:
    return sentiment_rows


def seasonal_series(n: int = 96, *, seed: int = 1) -> np.ndarray:
    """A monthly series with trend, a 12-step season and a little noise."""
    t = np.arange(n)
    return 50 + 0.3 * t + 8 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(seed).normal(0, 0.5, n)


def write_series_csv(path: Path, values: np.ndarray, *, start: str = "2000-01") -> Path:
    """``time,value`` rows, monthly from ``start``."""
    times = np.datetime64(start, "M") + np.arange(len(values))
    rows = [f"{t}-01,{v:.4f}" for t, v in zip(times, values, strict=True)]
    path.write_text("time,value\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_forecast_config_dict(data_path: str | Path, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """A small LSTM forecaster: lookback 12, horizon 6, 12 val and 12 test months, 2 epochs."""
    return {
        "task": "forecasting",
        "data": {"path": str(data_path), "lookback": 12, "horizon": 6, "split": {"val": 12, "test": 12}},
        "model": {"name": "lstm-forecaster", "args": {"hidden_size": 8}},
        "train": {"epochs": 2, "batch_size": 16},
        "tracking": {"mlflow": False, "tensorboard": False},
        "runs_dir": str(runs_dir),
    }


@pytest.fixture(scope="session")
def tiny_forecast_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained forecasting bundle on a generated monthly series, made once per session. Read-only."""
    from torchkiln import api

    root = tmp_path_factory.mktemp("tiny-forecast-bundle")
    cfg = tiny_forecast_config_dict(write_series_csv(root / "series.csv", seasonal_series()), root / "runs")
    return api.train(api.load_config(cfg)) / "bundle"


@pytest.fixture(scope="session")
def make_series_csv() -> Callable[..., Path]:
    """``make_series_csv(path, values=None, start="2000-01")`` writes ``time,value`` monthly rows
    (default values: :func:`seasonal_series`)."""

    def make(path: Path, values: np.ndarray | None = None, *, start: str = "2000-01") -> Path:
        return write_series_csv(path, seasonal_series() if values is None else values, start=start)

    return make


@pytest.fixture(scope="session")
def make_forecast_config() -> ConfigFactory:
    """``make_forecast_config(data_path, runs_dir)`` -> the tiny forecaster config dict (a fresh copy)."""
    return tiny_forecast_config_dict


@pytest.fixture(scope="session")
def series_values() -> Callable[..., np.ndarray]:
    """``series_values(n=96, seed=1)``: the generated seasonal series the fixtures use."""
    return seasonal_series


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """``async with running(create_app(settings)) as client``: the app's lifespan running and every model
    ready (``/readyz`` 200); the ``httpx.AsyncClient`` talks to it in process. Imported by the serve and
    monitor tests (``from ..conftest import running``)."""
    import asyncio

    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            for _ in range(300):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"not ready: {(await client.get('/readyz')).json()}")
            yield client
