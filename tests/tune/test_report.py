"""A study's outputs: best.yaml loads as the config with the best values (and no tune section), the
CSV has one row per trial, and the plots are drawn (importance only with 2 complete trials)."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from torchkiln.core.config import TuneConfig
from torchkiln.tasks.base import load_config
from torchkiln.tune.report import plot_history, plot_importance, trial_rows, write_best_config, write_csv
from torchkiln.tune.space import base_raw

optuna.logging.set_verbosity(optuna.logging.WARNING)
RAW = {
    "task": "image-classification",
    "data": {"path": "digits", "limit_per_class": 20},
    "model": {"name": "cnn", "args": {"channels": [8, 16]}},
    "train": {"epochs": 3},
    "tune": {
        "params": {
            "train.optimizer.lr": {"loguniform": [1e-5, 1.0]},
            "model.args.channels": {"choice": [[4, 8], [8, 16]]},
        }
    },
}
DISTS = {
    "train.optimizer.lr": FloatDistribution(1e-5, 1.0, log=True),
    "model.args.channels": CategoricalDistribution(["[4, 8]", "[8, 16]"]),
}


def study_of(*trials: tuple[TrialState, float, float, str]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for state, value, lr, channels in trials:
        study.add_trial(
            optuna.create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params={"train.optimizer.lr": lr, "model.args.channels": channels},
                distributions=DISTS,
                intermediate_values={1: value},
            )
        )
    return study


def test_best_yaml_is_the_config_with_the_best_values_and_loads(tmp_path: Path) -> None:
    cfg = load_config(RAW)
    tune = cfg.tune
    assert tune is not None
    study = study_of(
        (TrialState.COMPLETE, 0.5, 0.3, "[8, 16]"), (TrialState.COMPLETE, 0.9, 1.25e-05, "[4, 8]")
    )
    path = write_best_config(base_raw(cfg), tune, study.best_trial, tmp_path / "best.yaml", header="best\nof")
    assert path.read_text().startswith("# best\n# of\n")
    best = load_config(path)
    assert best.tune is None
    assert best.train.optimizer.lr == 1.25e-05 and best.model.args["channels"] == [4, 8]
    assert best == load_config(
        RAW, ["train.optimizer.lr=1.25e-05", "model.args.channels=[4, 8]", "tune=null"]
    )


def test_csv_and_history_plot_show_every_trial(tmp_path: Path) -> None:
    tune = TuneConfig.model_validate(RAW["tune"])
    study = study_of(
        (TrialState.COMPLETE, 0.8, 3e-3, "[8, 16]"),
        (TrialState.PRUNED, 0.1, 0.5, "[4, 8]"),
        (TrialState.COMPLETE, 0.9, 2e-3, "[4, 8]"),
    )
    rows = trial_rows(study, tune)
    assert [(r.state, r.value, r.epochs) for r in rows] == [
        ("complete", 0.8, 1),
        ("pruned", 0.1, 1),
        ("complete", 0.9, 1),
    ]
    assert rows[1].params == {"train.optimizer.lr": 0.5, "model.args.channels": [4, 8]}
    with write_csv(rows, list(tune.params), tmp_path / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["state"] for r in table] == ["complete", "pruned", "complete"]
    assert table[0]["train.optimizer.lr"] == "0.003" and table[0]["model.args.channels"] == "[8, 16]"
    png = plot_history(rows, metric="val/accuracy", maximize=True, path=tmp_path / "history.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_importance_needs_two_complete_trials(tmp_path: Path) -> None:
    one = study_of((TrialState.COMPLETE, 0.8, 3e-3, "[8, 16]"), (TrialState.PRUNED, 0.1, 0.5, "[4, 8]"))
    assert plot_importance(one, tmp_path / "importance.png") is None
    assert not (tmp_path / "importance.png").exists()
    several = study_of(
        *[(TrialState.COMPLETE, v, lr, "[4, 8]") for v, lr in [(0.2, 1e-5), (0.9, 3e-3), (0.5, 0.3)]]
    )
    assert plot_importance(several, tmp_path / "importance.png") == tmp_path / "importance.png"


def test_without_scikit_learn_importance_falls_back_to_ped_anova(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = optuna.importance.get_param_importances

    def no_sklearn(study: optuna.Study, *, evaluator: object = None, **kw: object) -> object:
        if evaluator is None:  # fANOVA, whose forest comes from scikit-learn
            raise ImportError("No module named 'sklearn'")
        return real(study, evaluator=evaluator, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(optuna.importance, "get_param_importances", no_sklearn)
    trials = [(TrialState.COMPLETE, v, lr, c) for v, lr, c in [(0.2, 1e-5, "[4, 8]"), (0.9, 3e-3, "[8, 16]")]]
    several = study_of(*trials, *trials, *trials)
    assert plot_importance(several, tmp_path / "importance.png") == tmp_path / "importance.png"
