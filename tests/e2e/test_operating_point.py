"""A two-class, imbalanced image classifier run at a recall target, as a user runs it end to end.

The data is a stand-in with the shape of a chest X-ray problem (binary, imbalanced, grayscale), drawn here:
60 NORMAL images of noise and 20 PNEUMONIA images with a faint blob of random strength, so the model is
unsure of some and the threshold matters. One run trains with class weights and
``task.threshold: {recall: 0.95}``; the tests check that the threshold was chosen on val, kept in the bundle
and used by ``kiln predict``, the server, ``kiln evaluate`` and an ONNX variant.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from torchkiln import api, load_predictor
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.cli.main import app
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.classification_eval import collect_probs

from ..conftest import running

CLASSES = ["NORMAL", "PNEUMONIA"]
TARGET = 0.95


def xray_folder(root: Path, *, normal: int = 60, pneumonia: int = 20, seed: int = 0) -> Path:
    """``root/{NORMAL,PNEUMONIA}/NN.png``: 16x16 grayscale noise; a PNEUMONIA image adds a faint square."""
    rng = np.random.default_rng(seed)
    for name, n in zip(CLASSES, (normal, pneumonia), strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 90, (16, 16))
            if name == "PNEUMONIA":
                lo = int(rng.integers(2, 8))
                img[lo : lo + 6, lo : lo + 6] += int(rng.integers(20, 120))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def xray_config(data: Path, runs: Path, **task: Any) -> dict[str, Any]:
    return {
        "task": {"kind": "image-classification", **task},
        "data": {"path": str(data), "num_workers": 0, "split": {"val": 0.25, "test": 0.25}},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "device": "cpu",
            "precision": "fp32",
            "class_weights": "auto",
        },
        "tracking": {"tensorboard": False, "mlflow": False},
        "runs_dir": str(runs),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xray")
    cfg = xray_config(xray_folder(root / "xray"), root / "runs", threshold={"recall": TARGET})
    return api.train(api.load_config(cfg))


@pytest.fixture(scope="module")
def val_scores(run: Path) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """p(PNEUMONIA), whether each is PNEUMONIA, and the files, of the val split, by the bundle's model."""
    b = load_bundle(run)
    _, data = b.task.prepare(b.config, splits={"val"}, state=b.state)
    loader = b.task.loader(b.config, data, "val", train=False)
    probs, targets = collect_probs(b.model, b.task, loader, torch.device("cpu"))
    return probs[:, 1], targets == 1, list(data.splits["val"].paths)


def test_class_weights_and_the_balanced_sampler_even_out_the_imbalance(run: Path) -> None:
    b = load_bundle(run)
    # 30 NORMAL and 10 PNEUMONIA train images: n / (2 x count).
    assert b.config.train.class_weights == [0.666667, 2.0]
    # The other remedy (use one: both together count PNEUMONIA twice): the balanced sampler.
    cfg = b.config.model_copy(update={"data": b.config.data.model_copy(update={"sampler": "balanced"})})
    _, data = b.task.prepare(cfg)
    drawn = torch.cat([y for _, y in b.task.loader(cfg, data, "train", train=True)])
    assert 0.3 < drawn.float().mean().item() < 0.7  # PNEUMONIA is a quarter of train, half of the draws


def test_the_threshold_is_chosen_on_val_for_the_recall_target_and_kept_in_the_bundle(
    run: Path, val_scores: tuple[torch.Tensor, torch.Tensor, list[Path]]
) -> None:
    saved = yaml.safe_load((run / "bundle" / "config.yaml").read_text())["task"]
    assert saved["positive_class"] == "PNEUMONIA" and saved["threshold"]["recall"] == TARGET
    chosen = saved["threshold"]["chosen"]
    found = json.loads((run / "bundle" / "bundle.json").read_text())["calibration"]["threshold"]
    assert found["chosen"] == chosen and found["met"] is True and found["target"] == "recall"
    assert (found["positives"], found["negatives"]) == (5, 15)
    scores, positive = val_scores[0].double(), val_scores[1]

    def recall(t: float) -> float:
        return ((scores >= t) & positive).sum().item() / positive.sum().item()

    assert recall(chosen) >= TARGET and recall(chosen) == pytest.approx(found["recall"])
    # ... and it is the largest such threshold: from the lowest val score above it up, recall is lost. It lies
    # halfway between that score and the next lower one, so a score recomputed a few bits off keeps its side.
    boundary = min(s for s in scores.tolist() if s >= chosen)
    assert recall(boundary) >= TARGET and all(recall(s) < TARGET for s in scores.tolist() if s > boundary)
    next_lower = max((s for s in scores.tolist() if s < chosen), default=0.0)
    assert chosen == pytest.approx((boundary + next_lower) / 2, abs=1e-6)
    assert "chosen" not in yaml.safe_load((run / "config.yaml").read_text())["task"]["threshold"] or (
        yaml.safe_load((run / "config.yaml").read_text())["task"]["threshold"]["chosen"] is None
    )  # the run's own config (what a resume reads) is not changed


def straddling(run: Path, chosen: float) -> tuple[Path, Path]:
    """Two images whose p(PNEUMONIA) lie just above and just below the threshold (a 1e-4 margin: a batch of
    another size may change a score in its last bits)."""
    files = sorted((run.parents[2] / "xray").rglob("*.png"))
    scores = [
        a["top_k"][0]["score"] if a["top_k"][0]["label"] == "PNEUMONIA" else a["top_k"][1]["score"]
        for a in load_predictor(run, device="cpu").predict(files)
    ]
    above = min((s, f) for s, f in zip(scores, files, strict=True) if s >= chosen + 1e-4)[1]
    below = max((s, f) for s, f in zip(scores, files, strict=True) if s <= chosen - 1e-4)[1]
    return above, below


def test_predict_and_the_server_answer_at_the_threshold(run: Path) -> None:
    chosen = load_bundle(run).config.task.threshold.chosen
    above, below = straddling(run, chosen)
    result = CliRunner().invoke(app, ["predict", str(run / "bundle"), str(above), str(below), "--json"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["label"] for a in answers] == ["PNEUMONIA", "NORMAL"]
    for a in answers:
        assert a["operating_point"] == {"positive": "PNEUMONIA", "threshold": chosen}
        assert a["score"] == next(t["score"] for t in a["top_k"] if t["label"] == a["label"])  # p(label)

    async def serve() -> list[dict[str, Any]]:
        settings = load_settings(models=[{"uri": str(run / "bundle"), "name": "xray"}], log_url="off")
        async with running(create_app(settings)) as client:
            images = [base64.b64encode(p.read_bytes()).decode() for p in (above, below)]
            r = await client.post("/v1/models/xray/predict", json={"images": images})
            assert r.status_code == 200, r.text
            return r.json()["predictions"]

    served = asyncio.run(serve())
    assert [p["label"] for p in served] == ["PNEUMONIA", "NORMAL"]
    assert served[0]["operating_point"] == {"positive": "PNEUMONIA", "threshold": chosen}


def test_evaluate_reports_at_the_threshold_with_intervals(run: Path, tmp_path: Path) -> None:
    result = api.evaluate(run, split="test", out_dir=tmp_path / "eval")
    b = json.loads(result.metrics_file.read_text())["binary"]
    chosen = load_bundle(run).config.task.threshold.chosen
    assert b["threshold"] == chosen and b["positive"] == "PNEUMONIA"
    assert b["chosen_by"].startswith("recall >= 0.95 on val (val recall ") and "5 positives" in b["chosen_by"]
    assert b["tp"] + b["fn"] == 5 and b["tn"] + b["fp"] == 15  # the test split: 5 and 15
    assert b["sensitivity"]["low"] <= b["sensitivity"]["value"] <= b["sensitivity"]["high"]
    (line,) = [x for x in result.summary() if x.startswith("at the operating point")]
    assert result.summary()[-1].startswith("baseline (logistic regression on the pixels): ")
    assert line.startswith(
        f"at the operating point (threshold {chosen:.4g} on p('PNEUMONIA'), chosen for recall"
    )
    assert "specificity " in line and "95% Wilson intervals" in line
    assert "<h2>Operating point</h2>" in result.report.read_text()


def test_an_onnx_variant_answers_at_the_same_threshold(run: Path) -> None:
    exported = api.export(run, bench_seconds=0.01)
    assert exported.passed, exported.checks
    chosen = load_bundle(run).config.task.threshold.chosen
    assert load_bundle(exported.variant).config.task.threshold.chosen == chosen
    above, below = straddling(run, chosen)
    answers = load_predictor(exported.variant).predict([above, below])
    assert [a["label"] for a in answers] == ["PNEUMONIA", "NORMAL"]
    assert answers[0]["operating_point"]["threshold"] == chosen


def test_a_val_split_without_a_positive_is_refused_before_training(tmp_path: Path) -> None:
    # Two PNEUMONIA images: a quarter of two rounds to none, so val has no PNEUMONIA and recall is undefined.
    cfg = xray_config(
        xray_folder(tmp_path / "xray", normal=12, pneumonia=2),
        tmp_path / "runs",
        threshold={"recall": TARGET},
    )
    with pytest.raises(DataError) as err:
        api.train(api.load_config(cfg))
    assert str(err.value) == (
        "task.threshold asks for recall >= 0.95 on the val split, but the val split has no positive items "
        "(3 in all), so recall is undefined there. Expected at least one (a few dozen for a steady "
        "threshold). Fix: raise data.split.val, give the data more items of that class, or give a fixed "
        "threshold (task.threshold: {value: 0.5})."
    )
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_threshold_on_three_classes_is_refused_before_training(
    tmp_path: Path, tiny_image_folder: Path, make_config: Any
) -> None:
    cfg = make_config(tiny_image_folder, tmp_path / "runs") | {
        "task": {"kind": "image-classification", "threshold": 0.3}
    }
    with pytest.raises(ConfigError) as err:
        api.train(api.load_config(cfg))  # the classes come from the folders: prepare finds three
    assert "task.threshold is for two-class tasks, but there are 3 classes (dot, hbar, vbar)." in str(
        err.value
    )
    assert not (tmp_path / "runs").exists()
