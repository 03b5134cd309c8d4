"""The one MLflow store's name, and what an evaluation logs (tests/e2e/test_mlflow_store.py runs it all)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchkiln.engine.tracking import evaluation_metrics, mlflow_artifact_root, resolve_mlflow_uri


def test_the_store_is_the_given_uri_else_the_environment_else_runs_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_mlflow_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert resolve_mlflow_uri(runs_dir="exp") == f"sqlite:///{tmp_path / 'exp' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_mlflow_uri(runs_dir="exp") == "http://mlflow:5000"
    assert resolve_mlflow_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_a_sqlite_store_keeps_its_artifacts_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        mlflow_artifact_root(f"sqlite:///{tmp_path}/runs/mlflow.db")
        == (tmp_path / "runs/mlartifacts").as_uri()
    )
    assert mlflow_artifact_root("sqlite:///runs/mlflow.db") == (tmp_path / "runs/mlartifacts").as_uri()
    assert mlflow_artifact_root("sqlite:///:memory:") is None
    assert mlflow_artifact_root("http://mlflow:5000") is None  # the server's own artifact root


def test_evaluation_metrics_are_every_number_prefixed_by_split(tmp_path: Path) -> None:
    metrics = {
        "title": "run: test split",
        "accuracy": 0.75,
        "num_samples": 4,
        "macro_auc": None,
        "per_class": [{"name": "cat", "f1": 0.5}],
        "binary": {"precision": 1.0, "threshold?": 0.5},
        "calibrated": True,
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert evaluation_metrics(path, "test") == {
        "test_accuracy": 0.75,
        "test_num_samples": 4.0,
        "test_binary.precision": 1.0,
        "test_binary.threshold_": 0.5,  # a character MLflow refuses in a key becomes _
    }
    # Training logs val_* and train_* every epoch: another split's evaluation never joins those series.
    assert set(evaluation_metrics(path, "val")) == {
        "eval_val_accuracy",
        "eval_val_num_samples",
        "eval_val_binary.precision",
        "eval_val_binary.threshold_",
    }
