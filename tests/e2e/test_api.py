"""The Python API as a user calls it, and experiment tracking (TensorBoard files, an MLflow database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import torchkiln

CLASSES = ["dot", "hbar", "vbar"]


def test_public_functions_are_functions_even_after_the_layers_load() -> None:
    import torchkiln.exporter  # the layer package must not shadow the function torchkiln.export()

    for name in torchkiln.__all__[1:]:
        assert callable(getattr(torchkiln, name)), name


def test_train_evaluate_predict(tiny_config: dict[str, Any], tiny_image_folder: Path) -> None:
    # Best checkpoint by val loss: with 3 val images, val accuracy hits 1.0 (and stops improving) too early.
    overrides = [
        "train.epochs=8",
        "train.optimizer.lr=0.01",
        "train.monitor=val/loss",
        "train.monitor_mode=min",
    ]
    cfg = torchkiln.load_config(tiny_config, overrides)
    run_dir = torchkiln.train(cfg)
    assert (run_dir / "bundle" / "model.safetensors").is_file()

    result = torchkiln.evaluate(run_dir)
    assert result.split == "test" and result.metrics.num_samples == 3
    assert result.metrics_file == run_dir / "eval" / "test" / "metrics.json"
    assert result.metrics_file.is_file() and result.report.is_file()

    predictor = torchkiln.load_predictor(run_dir / "bundle")
    assert predictor.labels == CLASSES
    files = sorted(tiny_image_folder.glob("*/*.png"))
    answers = predictor.predict([str(f) for f in files], top_k=3)
    assert len(answers) == 36 and all(len(a["top_k"]) == 3 for a in answers)
    # The patterns are easy: a few epochs must be enough to tell them apart.
    accuracy = sum(a["label"] == f.parent.name for a, f in zip(answers, files, strict=True)) / len(files)
    assert accuracy >= 0.9


def test_skipped_images_are_listed_in_the_run(tiny_config: dict[str, Any], tiny_image_folder: Path) -> None:
    bad = tiny_image_folder / "dot" / "broken.png"
    bad.write_bytes(b"not an image")
    tiny_config["data"]["on_error"] = "skip"
    run_dir = torchkiln.train(torchkiln.load_config(tiny_config))
    lines = (run_dir / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "item\treason"
    assert len(lines) == 2 and lines[1].startswith(f"{bad}\tImage '{bad}' is corrupt or not an image")


def test_tensorboard_writes_event_files(tiny_config: dict[str, Any]) -> None:
    tiny_config["tracking"]["tensorboard"] = True
    run_dir = torchkiln.train(torchkiln.load_config(tiny_config))
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_mlflow_logs_params_and_metrics(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny_config["tracking"].update({"mlflow": True, "mlflow_uri": uri, "experiment": "kiln-test"})
    previous = mlflow.get_tracking_uri()
    try:
        run_dir = torchkiln.train(torchkiln.load_config(tiny_config))
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["kiln-test"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["tags.torchkiln.run_dir"] == str(run_dir)
    assert run["params.train.epochs"] == "1" and run["params.model.name"] == "cnn"
    # MLflow has each metric's last value: the one epoch's results as torchkiln recorded them in the run.
    (epoch,) = json.loads((run_dir / "history.json").read_text())
    trained = json.loads((run_dir / "bundle" / "bundle.json").read_text())["trained"]
    assert trained["metrics"] == epoch
    assert {"val/accuracy", "val/loss", "train/loss"} <= epoch.keys()
    for name, value in epoch.items():
        if name != "epoch":
            logged = run[f"metrics.{name.replace('/', '_')}"]
            assert logged == pytest.approx(value, rel=1e-9, abs=1e-12), name
