"""`kiln tune` as a user runs it: a 6-trial study on the digits catalog in 2 worker processes that share
one journal file, with pruning; the trials are MLflow runs nested under the study's run, and the best
config trains with `kiln train`.

The commands run in-process (CliRunner, as in test_mlflow_store.py), in a project folder; the workers
are processes of their own, as always.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from torchkiln.cli.main import app

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path


def kiln(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


# seed 760 makes each worker's first draw a good learning rate (2.5e-3 and 3.0e-3) and its second a
# terrible one (0.23 and 8.2e-6), whichever worker finishes first: the second trial of a worker starts
# after its first one completed, so the median pruner (one complete trial, no warm-up) compares it with
# a good trial at epoch 1 and prunes it (val accuracy ~0.1 against ~0.27). 6 trials on 2 workers give a
# worker at least 2 trials, so at least one trial is pruned in any interleaving.
CONFIG = {
    "task": "image-classification",
    "data": {"path": "digits", "limit_per_class": 30, "num_workers": 0},
    "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 32}},
    "train": {
        "epochs": 3,
        "batch_size": 32,
        "device": "cpu",
        "precision": "fp32",
        "scheduler": {"name": "none"},
    },
    "evaluate": {"reference": {"split": "none"}},
    "tracking": {"tensorboard": False},
    "seed": 760,
    "tune": {
        "params": {"train.optimizer.lr": {"loguniform": [1.0e-6, 1.0]}},
        "sampler": "random",
        "pruner": {"name": "median", "startup_trials": 1, "warmup_epochs": 0},
        "trials": 20,  # --trials overrides it
    },
}


@pytest.mark.slow
def test_a_two_process_study_prunes_nests_its_runs_and_its_best_config_trains(project: Path) -> None:
    tmp_path = project
    (tmp_path / "kiln.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False), encoding="utf-8")
    done = kiln("tune", "kiln.yaml", "--trials", "6", "--workers", "2")
    out_dir = tmp_path / "runs" / "tune" / "digits-cnn"
    assert done.stdout.strip().splitlines()[-1] == f"kiln train {out_dir / 'best.yaml'}"
    assert os.environ.get("KILN_MLFLOW_PARENT_RUN_ID") is None  # the workers had it, not this process

    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "tune" / "digits-cnn.journal"))
    )
    trials = optuna.load_study(study_name="digits-cnn", storage=journal).trials
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    assert states.count(TrialState.PRUNED) >= 1, [(t.params, t.intermediate_values) for t in trials]
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # two worker processes shared the study

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in parents] == ["tune-digits-cnn"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["kiln.tune.trial"]) for r in children) == list(range(6))
    pruned = {t.number for t in trials if t.state == TrialState.PRUNED}
    assert {int(r.data.tags["kiln.tune.trial"]) for r in children if r.info.status == "KILLED"} == pruned

    for name in ("best.yaml", "trials.csv", "history.png", "importance.png"):
        assert (out_dir / name).is_file(), name
    best = yaml.safe_load((out_dir / "best.yaml").read_text())
    assert "tune" not in best
    trained = kiln("train", str(out_dir / "best.yaml"), "--epochs", "1")
    assert (tmp_path / trained.stdout.strip().splitlines()[-1] / "bundle" / "bundle.json").is_file()
