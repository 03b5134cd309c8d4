"""The detector's required accuracy on real Fashion-MNIST (issue 18): few false alarms, shifts found.

A small CNN (the registry's ``cnn``) is trained for a few seconds on 4,000 training images. The reference
profile is what the server would have for 5,000 other, held-out training images; the traffic is the test
split, in windows of 200 items, clean or shifted. Signals are those the server logs: the image task's
input summaries (mean and std of the model input), the predicted class, its confidence, and the
penultimate-layer embedding reduced by a PCA fitted on the reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from torchkiln.components.catalog import load_fashion_mnist
from torchkiln.monitor.calibrate import calibrate
from torchkiln.monitor.drift import (
    DriftReport,
    DriftSettings,
    Signals,
    Thresholds,
    embedding_reference,
    judge,
    measure,
)
from torchkiln.tasks.image_classification.simple_models import cnn
from torchkiln.tasks.image_classification.task import TASK

WINDOW = 200
TRAIN, REFERENCE = 4000, 5000
PCA_DIMS = 8
SEED = 0


@dataclass(frozen=True)
class Monitored:
    model: torch.nn.Module
    mean: float
    std: float
    basis: torch.Tensor  # (hidden, PCA_DIMS)
    center: torch.Tensor  # (hidden,)


def _train(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = cnn(num_classes=10, in_channels=1, image_size=28, channels=(8, 16), hidden=32, head_dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(100):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, 10) and penultimate features (N, hidden) of normalized inputs (N, 1, 28, 28)."""
    feats, logits = [], []
    for chunk in x.split(2000):
        h = model.head[:-1](model.blocks(chunk))  # everything but the last Linear
        feats.append(h)
        logits.append(model.head[-1](h))
    return torch.cat(logits), torch.cat(feats)


def signals(m: Monitored, images: torch.Tensor) -> Signals:
    """What the server would log for uint8-range float images (N, 28, 28)."""
    x = ((images / 255.0 - m.mean) / m.std).unsqueeze(1)  # (N, 1, 28, 28), the model input
    logits, feats = _forward(m.model, x)
    probs = logits.softmax(dim=1)
    summary = TASK.summarize_inputs(None, [None] * len(x), x)  # the prediction log's input summaries
    return Signals(
        inputs={k: np.array([s[k] for s in summary]) for k in ("mean", "std")},
        classes=probs.argmax(1).numpy(),
        num_classes=10,
        confidence=probs.max(1).values.double().numpy(),
        embeddings=((feats - m.center) @ m.basis).numpy(),
    )


@pytest.fixture(scope="module")
def world() -> dict:
    t0 = time.perf_counter()
    data = load_fashion_mnist()
    train = np.flatnonzero(data.splits == "train")
    test = np.flatnonzero(data.splits == "test")
    pick = np.random.default_rng(SEED).permutation(train)
    fit_idx, ref_idx = pick[:TRAIN], pick[TRAIN : TRAIN + REFERENCE]
    images = torch.from_numpy(data.images).float()
    mean, std = float(images[fit_idx].mean() / 255), float(images[fit_idx].std() / 255)
    x_fit = ((images[fit_idx] / 255.0 - mean) / std).unsqueeze(1)
    model = _train(x_fit, torch.from_numpy(data.labels[fit_idx]))
    # PCA of the reference's penultimate features: what the reference profile stores.
    _, feats = _forward(model, ((images[ref_idx] / 255.0 - mean) / std).unsqueeze(1))
    center = feats.mean(0)
    _, _, v = torch.linalg.svd(feats - center, full_matrices=False)
    m = Monitored(model, mean, std, v[:PCA_DIMS].T, center)
    return {
        "m": m, "images": images, "ref": signals(m, images[ref_idx]), "test": test,
        "labels": data.labels[test], "t_setup": time.perf_counter() - t0,
    }  # fmt: skip


def _windows(n: int) -> list[np.ndarray]:
    order = np.random.default_rng(SEED + 1).permutation(n)
    return [order[i : i + WINDOW] for i in range(0, n - WINDOW + 1, WINDOW)]


def _class_mix(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` windows with 80 % of one class (a different class each window) and 20 % of the rest."""
    rng = np.random.default_rng(SEED + 2)
    out = []
    for w in range(count):
        major = w % 10
        heavy = rng.choice(np.flatnonzero(labels == major), int(0.8 * WINDOW), replace=False)
        light = rng.choice(np.flatnonzero(labels != major), WINDOW - len(heavy), replace=False)
        out.append(np.concatenate([heavy, light]))
    return out


def _fired(reports: list[DriftReport]) -> dict[str, float]:
    """The share of windows each row alarmed on."""
    return {
        r.key: float(np.mean([rep.rows[i].drifted for rep in reports])) for i, r in enumerate(reports[0].rows)
    }


def _rates(ref: Signals, windows: list[Signals], settings: DriftSettings, calibrated: Thresholds) -> dict:
    """Share of windows that alarm under the fixed defaults and under calibrated thresholds, and per row."""
    emb_ref = embedding_reference(ref, settings)  # once for all windows, as a watch loop would keep it
    measured = [measure(ref, w, settings=settings, embedding_ref=emb_ref) for w in windows]
    out = {}
    for kind, thresholds in (("default", None), ("calibrated", calibrated)):
        reports = [judge(m, thresholds) for m in measured]
        out[kind] = float(np.mean([r.verdict == "drift" for r in reports]))
        out[f"{kind} rows"] = _fired(reports)
    return out


@pytest.mark.slow
def test_the_detector_meets_the_required_false_alarm_and_detection_rates(world: dict) -> None:
    t0 = time.perf_counter()
    m, images, ref, test = world["m"], world["images"], world["ref"], world["test"]
    settings = DriftSettings()
    test_images = images[test]
    clean = signals(m, test_images)
    accuracy = float((clean.classes == world["labels"]).mean())
    darker = signals(m, test_images * 0.5)
    rotated = signals(m, TF.rotate(test_images.unsqueeze(1), 30.0).squeeze(1))
    windows = _windows(len(test))
    traffic = {
        "clean": [clean.take(w) for w in windows],
        "brightness x0.5": [darker.take(w) for w in windows],
        "rotation 30°": [rotated.take(w) for w in windows],
        "80 % one class": [clean.take(w) for w in _class_mix(world["labels"], len(windows))],
    }
    t_cal = time.perf_counter()
    calibrated = calibrate(ref, WINDOW, target_false_alarm=0.01, rounds=1000, settings=settings)
    t_cal = time.perf_counter() - t_cal
    rates = {name: _rates(ref, ws, settings, calibrated) for name, ws in traffic.items()}
    print(f"\ntest accuracy {accuracy:.3f}; setup {world['t_setup']:.1f} s; calibration {t_cal:.1f} s")
    print(f"{len(windows)} windows of {WINDOW} items per traffic; share of windows that alarm:")
    for name, r in rates.items():
        print(f"  {name:16s} default {r['default']:.2f}  calibrated {r['calibrated']:.2f}")
        for kind in ("default", "calibrated"):
            print(f"    {kind} rows: " + ", ".join(f"{k} {v:.2f}" for k, v in r[f"{kind} rows"].items()))
    print(f"checks took {time.perf_counter() - t0:.1f} s")
    for kind in ("default", "calibrated"):
        assert rates["clean"][kind] <= 0.05, (kind, rates)
        for name in ("brightness x0.5", "rotation 30°", "80 % one class"):
            assert rates[name][kind] >= 0.95, (kind, name, rates)
