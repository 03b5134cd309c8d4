"""The tune section and the search space: each distribution becomes one Optuna suggestion, each sampled
value is set as ``--set`` sets it, and a bad key or range fails before any trial runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torchkiln.core.config import ParamSpace
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.base import load_config
from torchkiln.tune import tune
from torchkiln.tune.space import apply_params, base_raw, check_space, suggest, trial_config

BASE: dict[str, Any] = {
    "task": "image-classification",
    "data": {"path": "digits"},
    "model": {"name": "cnn", "args": {"channels": [8, 16]}},
    "train": {"epochs": 2, "optimizer": {"lr": 0.01}},
}


class RecordingTrial:
    """Stands in for an ``optuna.Trial``: records each suggestion and answers with the first choice or
    the low bound."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def suggest_float(self, name: str, low: float, high: float, **kw: Any) -> float:
        self.calls.append(("suggest_float", (name, low, high), kw))
        return low

    def suggest_int(self, name: str, low: int, high: int, **kw: Any) -> int:
        self.calls.append(("suggest_int", (name, low, high), kw))
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.calls.append(("suggest_categorical", (name, choices), {}))
        return choices[-1]


@pytest.mark.parametrize(
    ("written", "call", "value"),
    [
        ({"loguniform": [1e-4, 0.1]}, ("suggest_float", ("k", 1e-4, 0.1), {"log": True}), 1e-4),
        ({"uniform": [0, 0.5]}, ("suggest_float", ("k", 0, 0.5), {}), 0),
        ({"int": [16, 128], "step": 16}, ("suggest_int", ("k", 16, 128), {"step": 16, "log": False}), 16),
        ({"int": [1, 64], "log": True}, ("suggest_int", ("k", 1, 64), {"step": 1, "log": True}), 1),
        ({"choice": ["sgd", "adamw"]}, ("suggest_categorical", ("k", ["sgd", "adamw"]), {}), "adamw"),
        # Optuna's categories are scalars: a choice of lists goes in as JSON text and comes back a list.
        ({"choice": [[8], [8, 16]]}, ("suggest_categorical", ("k", ["[8]", "[8, 16]"]), {}), [8, 16]),
    ],
)
def test_each_distribution_is_one_suggestion(
    written: dict[str, Any], call: tuple[Any, ...], value: Any
) -> None:
    trial = RecordingTrial()
    assert suggest(trial, "k", ParamSpace.model_validate(written)) == value  # type: ignore[arg-type]
    assert trial.calls == [call]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"uniform": [1, 0]}, "uniform needs low < high; got [1, 0]"),
        ({"loguniform": [0, 1]}, "loguniform needs low > 0; got 0"),
        ({"uniform": [0, 1], "step": 2}, "step and log are settings of int ranges, not of uniform"),
        ({"int": [0.5, 4]}, "int needs whole bounds; got [0.5, 4]"),
        ({"choice": []}, "choice needs at least one value"),
        ({"uniform": [0, 1], "choice": [1]}, "a tuned setting is one of {loguniform: [low, high]}"),
        ({"normal": [0, 1]}, "a tuned setting is one of"),
    ],
)
def test_a_bad_distribution_is_a_config_error(written: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"tune\.params") as info:
        load_config({**BASE, "tune": {"params": {"train.optimizer.lr": written}}})
    assert message in str(info.value)


def test_tune_section_defaults_and_shorthands() -> None:
    raw = {**BASE, "train": {"monitor": "val/loss", "monitor_mode": "min"}}
    cfg = load_config(
        {**raw, "tune": {"params": {"seed": {"int": [0, 9]}}, "sampler": "random", "pruner": "none"}}
    )
    assert cfg.tune is not None
    assert (cfg.tune.sampler.name, cfg.tune.pruner.name, cfg.tune.trials) == ("random", "none", 20)
    assert cfg.tune.objective(cfg.train) == ("val/loss", "minimize")
    with pytest.raises(ConfigError, match=r"'tune\.x' cannot be tuned"):
        load_config({**BASE, "tune": {"params": {"tune.x": {"int": [0, 9]}}}})


def test_sampled_values_are_set_as_set_sets_them() -> None:
    raw = base_raw(load_config(BASE))
    values = {"train.optimizer.lr": 1e-5, "model.args.channels": [4, 8], "train.optimizer.name": "sgd"}
    cfg = trial_config(raw, values)
    assert cfg == load_config(
        BASE, ["train.optimizer.lr=1.0e-5", "model.args.channels=[4, 8]", "train.optimizer.name=sgd"]
    )
    assert cfg.train.optimizer.lr == 1e-5  # exactly: not the string '1e-05' YAML would read
    assert apply_params(raw, {})["train"] == raw["train"]  # the base is not changed


def test_an_unknown_key_fails_before_any_trial_with_a_did_you_mean(tmp_path: Path) -> None:
    raw = {
        **BASE,
        "runs_dir": str(tmp_path / "runs"),
        "tune": {"params": {"train.optimizer.lrr": {"loguniform": [1e-4, 1e-1]}}},
    }
    with pytest.raises(ConfigError) as info:
        tune(load_config(raw), trials=2)
    assert str(info.value) == (
        "tune.params: 'train.optimizer.lrr' = 0.0001 does not make a valid config, so no trial was started. "
        "Fix the key or its range in the tune section.\n"
        "The run config is invalid (1 problem(s)):\n"
        "  - unknown key 'train.optimizer.lrr'. Did you mean 'lr'? Valid keys here: betas, lr, momentum, "
        "name, nesterov, weight_decay.\n"
        "Fix the config file or the --set value; 'kiln config show CONFIG' prints what was understood."
    )
    assert not (tmp_path / "runs").exists()  # no study, no run


def test_every_bound_and_choice_is_checked_up_front() -> None:
    raw = base_raw(load_config(BASE))
    with pytest.raises(ConfigError, match=r"'train\.batch_size' = 0 does not make a valid config"):
        check_space(raw, {"train.batch_size": ParamSpace(kind="int", low=0, high=64)})
    with pytest.raises(ConfigError, match=r"'train\.optimizer\.name' = 'lamb'"):
        check_space(raw, {"train.optimizer.name": ParamSpace(kind="choice", choices=["sgd", "lamb"])})
    with pytest.raises(
        ConfigError, match=r"Model 'cnn' has no parameter 'widht'\. Valid parameters: channels"
    ):
        check_space(raw, {"model.args.widht": ParamSpace(kind="int", low=1, high=4)})


def test_no_tune_section_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "kiln.yaml"
    path.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    with pytest.raises(ConfigError, match="no tune section"):
        tune(path)
