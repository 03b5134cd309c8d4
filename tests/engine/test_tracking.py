"""The one MLflow store's name, what an evaluation logs (tests/e2e/test_mlflow_store.py runs it all), and
the model graph TensorBoard gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkiln.engine.tracking import Tracker, evaluation_metrics, mlflow_artifact_root, resolve_mlflow_uri
from torchkiln.tasks.base import validate


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


class _Branchy(nn.Module):
    """Doubles the batch when its first value is positive, else negates it: a forward that branches on
    the input values, whose trace holds one branch only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if bool(x[0, 0] > 0) else -x


class _Untraceable(nn.Module):
    """Returns a string, which a traced graph cannot."""

    def forward(self, x: torch.Tensor) -> str:
        return f"{x.shape[0]} rows"


def _graph_nodes(log_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir)).Reload()
    return [node.op for node in events.Graph().node] if events.Tags()["graph"] else []


def _tracker(tmp_path: Path, make_text_config) -> Tracker:
    raw = make_text_config(tmp_path / "reviews.csv", tmp_path / "runs")
    raw["tracking"] = {"mlflow": False, "tensorboard": True}
    return Tracker(validate(raw), tmp_path / "run")


def test_the_transformer_text_model_gets_its_graph(
    tmp_path: Path, make_text_config, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("tensorboard")
    from torchkiln.tasks.text_classification.models import create_text_model

    small = {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32}  # the conformance suite's
    model = create_text_model(
        "transformer", num_classes=2, vocab_size=100, pad_id=0, max_length=16, args=small
    )
    ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    ids[1, 10:] = 0  # a padded row
    tracker = _tracker(tmp_path, make_text_config)
    with caplog.at_level("WARNING", logger="torchkiln.engine.tracking"):
        tracker.graph(
            model.train(), ids
        )  # torch.jit.trace's own check failed here: "Tracing failed sanity checks!"
    tracker.close()
    assert caplog.records == [] and model.training  # no warning, and the model is back in train mode
    ops = _graph_nodes(tmp_path / "run" / "tensorboard")
    assert {
        "aten::embedding",
        "aten::scaled_dot_product_attention",
        "aten::layer_norm",
        "aten::linear",
    } <= set(ops)


def test_a_model_without_a_faithful_graph_gets_one_plain_warning(
    tmp_path: Path, make_text_config, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("tensorboard")
    tracker = _tracker(tmp_path, make_text_config)
    with caplog.at_level("WARNING", logger="torchkiln.engine.tracking"):
        tracker.graph(_Branchy(), torch.tensor([[1.0], [-1.0]]))  # the reversed rows take the other branch
        tracker.graph(_Untraceable(), torch.zeros(2, 1))
    tracker.close()
    assert [r.getMessage() for r in caplog.records] == [
        "TensorBoard graph skipped: the graph traced from _Branchy gives other outputs than the model on a "
        "second batch (its forward branches on the input values or draws random numbers), so it would be "
        "wrong. Training and the other TensorBoard logs are unaffected.",
        "TensorBoard graph skipped: _Untraceable could not be traced (Only tensors, lists, tuples of "
        "tensors, or dictionary of tensors can be output from traced functions). Training and the other "
        "TensorBoard logs are unaffected.",
    ]
    assert _graph_nodes(tmp_path / "run" / "tensorboard") == []
