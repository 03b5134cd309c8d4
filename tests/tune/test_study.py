"""Storage choices, the shared trial count, orphaned trials and the epoch hook, on in-memory and
temporary-file studies (no training)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from torchkiln.core.config import TuneConfig
from torchkiln.core.errors import ConfigError
from torchkiln.engine.trainer import TrainState
from torchkiln.tasks.base import load_config
from torchkiln.tune import tune
from torchkiln.tune.storage import (
    HOST,
    check_storage,
    default_storage,
    open_storage,
    recover_orphans,
    redacted,
)
from torchkiln.tune.study import (
    EpochReport,
    has_work,
    make_pruner,
    make_sampler,
    trials_counted,
    worker_seed,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = {"x": FloatDistribution(1e-4, 1.0, log=True)}


def test_several_workers_on_sqlite_are_refused_with_why_and_what_instead(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        check_storage("sqlite:///runs/tune/s.db", workers=2)
    message = str(info.value)
    assert "--workers 2 with the SQLite storage 'sqlite:///runs/tune/s.db'" in message
    assert "does not take parallel writers" in message
    assert "--storage PATH.journal" in message and "postgresql://" in message
    check_storage("sqlite:///runs/tune/s.db", workers=1)
    check_storage(str(tmp_path / "s.journal"), workers=4)


def test_the_refusal_comes_before_anything_is_written(tmp_path: Path) -> None:
    raw = {
        "task": "image-classification",
        "data": "digits",
        "runs_dir": str(tmp_path / "runs"),
        "tune": {"params": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}}},
    }
    with pytest.raises(ConfigError, match="SQLite storage"):
        tune(load_config(raw), workers=2, storage=f"sqlite:///{tmp_path / 'x.db'}")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.db").exists()


def test_default_storage_is_sqlite_for_one_worker_a_journal_for_several_and_a_resume_finds_either(
    tmp_path: Path,
) -> None:
    assert default_storage(tmp_path, "s", workers=1) == f"sqlite:///{tmp_path / 's.db'}"
    assert default_storage(tmp_path, "s", workers=3) == str(tmp_path / "s.journal")
    (tmp_path / "s.journal").touch()
    assert default_storage(tmp_path, "s", workers=1) == str(tmp_path / "s.journal")
    (tmp_path / "t.db").touch()  # begun in SQLite: stays there (and several workers are then refused)
    assert default_storage(tmp_path, "t", workers=2) == f"sqlite:///{tmp_path / 't.db'}"


def add(study: optuna.Study, state: TrialState, value: float | None = None, **system: Any) -> None:
    params = {"x": 0.01}
    study.add_trial(
        optuna.create_trial(state=state, value=value, params=params, distributions=LR, system_attrs=system)
    )


def test_the_trial_count_takes_retries_in_place_of_what_they_retry() -> None:
    study = optuna.create_study()
    add(study, TrialState.COMPLETE, 0.9)
    add(study, TrialState.PRUNED)
    add(study, TrialState.FAIL)  # failed on its own: counts
    add(study, TrialState.FAIL)  # its process died...
    add(study, TrialState.WAITING, failed_trial=3, retry_history=[3])  # ...and its retry counts instead
    assert trials_counted(study) == 4
    # The study has its 4, but the queued retry still needs a worker.
    assert has_work(study, 4) and has_work(study, 5)
    study.tell(study.ask(), 0.5)  # a worker pops and runs the retry
    assert not has_work(study, 4)


def test_a_running_trial_whose_process_died_is_failed_and_queued_again(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")), study_name="s")
    orphan = study.ask()
    orphan.suggest_float("x", 1e-4, 1.0, log=True)
    orphan.set_user_attr("host", HOST)
    orphan.set_user_attr("pid", dead.pid)
    alive = study.ask()  # this process: left alone
    alive.set_user_attr("host", HOST)
    alive.set_user_attr("pid", os.getpid())
    assert recover_orphans(study) == [orphan.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.trials[2]
    assert retry.params == study.trials[0].params and retry.system_attrs["retry_history"] == [0]
    assert trials_counted(study) == 2


def test_sampler_pruner_and_seeds() -> None:
    tune_cfg = TuneConfig.model_validate(
        {"params": {"x": {"uniform": [0, 1]}}, "pruner": {"name": "hyperband", "min_epochs": 2}}
    )
    assert isinstance(make_sampler(tune_cfg, 0), optuna.samplers.TPESampler)
    pruner = make_pruner(tune_cfg, 9)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    median = make_pruner(
        tune_cfg.model_copy(update={"pruner": tune_cfg.pruner.model_copy(update={"name": "median"})}), 9
    )
    assert isinstance(median, optuna.pruners.MedianPruner)
    # Every worker and every resume draws its own random trials.
    seeds = {worker_seed(0, w, before) for w in range(3) for before in (0, 6)}
    assert len(seeds) == 6 and worker_seed(0, 1, 0) == worker_seed(0, 1, 0)


def test_the_epoch_hook_reports_each_epoch_and_prunes_a_trial_below_the_median() -> None:
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    good = study.ask()
    for epoch, value in enumerate([0.5, 0.8], start=1):
        good.report(value, epoch)
    study.tell(good, 0.8)
    bad = study.ask()
    hook, state = EpochReport(bad, "val/accuracy"), TrainState()
    state.history.append({"val/accuracy": 0.1})
    with pytest.raises(optuna.TrialPruned, match=r"pruned after epoch 1: val/accuracy 0\.1"):
        hook(state, {"val/accuracy": 0.1, "val/loss": 2.0})
    assert study.trials[1].intermediate_values == {1: 0.1}
    with pytest.raises(ConfigError, match=r"tune\.metric is 'val/acc', which this run does not report"):
        EpochReport(bad, "val/acc")(state, {"val/accuracy": 0.1})


def test_the_trial_value_is_the_metric_at_the_runs_best_epoch() -> None:
    hook = EpochReport(optuna.create_study().ask(), "val/loss")
    hook.state = TrainState(best_epoch=1, history=[{"val/loss": 1.0}, {"val/loss": 0.4}, {"val/loss": 0.7}])
    assert hook.value() == 0.4


def test_a_worker_killed_in_a_trial_gets_its_trial_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torchkiln.tune import tuner

    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")), study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rounds: list[int] = []

    def workers(spec: Any, k: int, out_dir: Path) -> list[tuple[int, str]]:
        rounds.append(k)
        if len(rounds) == 1:  # round 1: a worker is killed (SIGKILL) in its trial, which stays running
            trial = study.ask()
            trial.suggest_float("x", 1e-4, 1.0, log=True)
            trial.set_user_attr("host", HOST)
            trial.set_user_attr("pid", dead.pid)
            return [(-9, "worker 1 stopped with exit code -9: epoch 2/10 (its log: worker-1.log)")]
        retry = study.ask()  # round 2: a worker runs the queued retry
        study.tell(retry, 0.5)
        return []

    monkeypatch.setattr(tuner, "_run_workers", workers)
    with caplog.at_level("WARNING", logger="torchkiln.tune"):
        assert tuner._run_rounds(None, 2, tmp_path, study) == []  # type: ignore[arg-type]
    assert rounds == [2, 2]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params
    assert "exit code -9" in caplog.text and "its trial is run again" in caplog.text


def test_a_metric_the_run_does_not_report_stops_the_study(tmp_path: Path) -> None:
    raw = {
        "task": "image-classification",
        "data": {"path": "digits", "limit_per_class": 3, "num_workers": 0},
        "model": {"name": "cnn", "args": {"channels": [4], "hidden": 0}},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "precision": "fp32"},
        "tracking": {"tensorboard": False, "mlflow": False},
        "evaluate": {"reference": {"split": "none"}},
        "runs_dir": str(tmp_path / "runs"),
        "tune": {"metric": "val/acc", "params": {"train.optimizer.lr": {"loguniform": [1e-3, 1e-2]}}},
    }
    with pytest.raises(ConfigError, match=r"tune\.metric is 'val/acc', which this run does not report"):
        tune(load_config(raw), trials=3)
    storage = open_storage(f"sqlite:///{tmp_path / 'runs' / 'tune' / 'digits-cnn.db'}")
    assert [t.state for t in optuna.load_study(study_name="digits-cnn", storage=storage).trials] == [
        TrialState.FAIL
    ]


def test_a_storage_password_is_kept_out_of_messages_and_files() -> None:
    assert redacted("postgresql://kiln:s3cret@db.internal:5432/studies") == (
        "postgresql://kiln:***@db.internal:5432/studies"
    )
    assert redacted("postgresql+psycopg2://kiln@db/studies") == "postgresql+psycopg2://kiln@db/studies"
    assert redacted("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redacted("runs/tune/s.journal") == "runs/tune/s.journal"
    with pytest.raises(ConfigError) as info:
        open_storage("postgresql://kiln:s3cret@127.0.0.1:1/studies")  # no driver, or no server there
    assert "s3cret" not in str(info.value) and "kiln:***@127.0.0.1:1" in str(info.value)
