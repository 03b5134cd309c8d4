"""The search space: each tuned key's distribution as an Optuna suggestion, and a trial's config.

A trial's config is the base config with each sampled value set through the same path as ``--set``
(:func:`~torchkiln.core.config_io.apply_override`, then the task's validation), so a tuned value is
checked exactly as a value on the command line is. :func:`check_space` builds a config with every bound
and every choice of every key before any trial runs: a key that does not exist, or a bound the setting
refuses, fails there with the config loader's own message (did-you-mean included).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import yaml

from torchkiln.components.models import check_model
from torchkiln.core.config import ParamSpace, RunConfig
from torchkiln.core.config_io import apply_override
from torchkiln.core.errors import ConfigError, KilnError
from torchkiln.tasks.base import validate

if TYPE_CHECKING:
    import optuna


def suggest(trial: optuna.Trial, key: str, space: ParamSpace) -> Any:
    """Draw ``key``'s value for ``trial`` from ``space`` (the config value, a list for a choice of lists).

    Example:
        >>> suggest(trial, "train.optimizer.lr", ParamSpace(kind="loguniform", low=1e-4, high=1e-1))
        0.0031
    """
    if space.kind == "loguniform":
        return trial.suggest_float(key, space.low, space.high, log=True)
    if space.kind == "uniform":
        return trial.suggest_float(key, space.low, space.high)
    if space.kind == "int":
        return trial.suggest_int(key, int(space.low), int(space.high), step=space.step, log=space.log)
    labels = choice_labels(space)
    return choice_value(space, trial.suggest_categorical(key, labels))


def choice_labels(space: ParamSpace) -> list[Any]:
    """The choices as Optuna stores them: as they are when all are scalars, else each as its JSON text
    (Optuna's categorical values are None, bool, int, float or str; ``model.args.channels`` is a list)."""
    choices = space.choices or []
    if all(c is None or isinstance(c, bool | int | float | str) for c in choices):
        return list(choices)
    return [json.dumps(c) for c in choices]


def choice_value(space: ParamSpace, label: Any) -> Any:
    """The config value of a choice Optuna returned (see :func:`choice_labels`)."""
    choices = space.choices or []
    return choices[choice_labels(space).index(label)]


def config_value(space: ParamSpace, stored: Any) -> Any:
    """A value as Optuna stores it in ``trial.params`` -> the value the config gets."""
    return choice_value(space, stored) if space.kind == "choice" else stored


def value_text(value: Any) -> str:
    """``value`` as one line of YAML that parses back to exactly ``value`` (``1.0e-05``, not ``1e-05``,
    which YAML reads as a string; ``[8, 16]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def override_text(key: str, value: Any) -> str:
    """``key=value`` for :func:`apply_override`: the value set exactly, as ``--set`` would set it."""
    return f"{key}={value_text(value)}"


def base_raw(cfg: RunConfig) -> dict[str, Any]:
    """The settings the user gave (with ``--set``), without the ``tune`` section: what trials start from."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw.pop("tune", None)
    return raw


def apply_params(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with each ``key: value`` set as ``--set key=value`` would set it."""
    out = dict(raw)
    for key, value in values.items():
        out = apply_override(out, override_text(key, value))
    return out


def trial_config(raw: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    """The validated config of a trial: ``raw`` with the sampled ``values`` set.

    Raises:
        ConfigError: a value the setting refuses (the config loader's message).
    """
    return validate(apply_params(raw, values))


def _probes(space: ParamSpace) -> Iterator[Any]:
    if space.kind == "choice":
        yield from space.choices or []
    elif space.kind == "int":
        yield int(space.low)
        yield int(space.high)
    else:
        yield space.low
        yield space.high


def check_space(raw: Mapping[str, Any], params: Mapping[str, ParamSpace]) -> None:
    """Build a config with each bound and each choice of every tuned key, before any trial runs.

    Raises:
        ConfigError: names the tuned key and gives the config loader's message (an unknown key gets
            its did-you-mean hint there).

    Example:
        >>> check_space(raw, {"train.optimizer.lrr": ParamSpace(kind="uniform", low=0.1, high=1)})
        ConfigError: tune.params: 'train.optimizer.lrr' = 0.1 does not make a valid config. ...
    """
    for key, space in params.items():
        for value in _probes(space):
            try:
                cfg = trial_config(raw, {key: value})
                if key.startswith("model."):  # model.args are checked against the builder only at build
                    m = cfg.model
                    check_model(m.name, args=m.args, pretrained=m.pretrained, task=cfg.task.kind)
            except KilnError as exc:
                raise ConfigError(
                    f"tune.params: '{key}' = {value!r} does not make a valid config, so no trial was "
                    f"started. Fix the key or its range in the tune section.\n{exc}"
                ) from None
