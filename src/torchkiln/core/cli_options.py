"""The options every command that trains shares: ``--set KEY=VALUE`` and the first-class flags beside it.

``kiln train`` (in ``cli``) and a family's own training commands (``kiln backtest`` in
``tasks/forecasting``) take the same ones, so they are defined once, here. Each flag is a short
spelling of one config key, and becomes a ``--set`` override: ``--epochs 20`` is
``--set train.epochs=20``, checked by the same config validation.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from torchkiln.core.errors import ConfigError

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override any setting: --set train.optimizer.momentum=0.8 (repeatable).",
    ),
]
EpochsOpt = Annotated[int | None, typer.Option(min=1, help="train.epochs: how many passes over the data.")]
BatchSizeOpt = Annotated[int | None, typer.Option(min=1, help="train.batch_size.")]
LrOpt = Annotated[float | None, typer.Option(help="train.optimizer.lr: the peak learning rate.")]
DeviceOpt = Annotated[
    str | None, typer.Option(help="train.device: auto, cpu, cuda, cuda:N, or N for cuda:N (as 0 for cuda:0).")
]
SeedOpt = Annotated[int | None, typer.Option(help="seed: of the split, the weights and the data order.")]
NameOpt = Annotated[str | None, typer.Option(help="name: the run folder's name under the runs folder.")]
RunsDirOpt = Annotated[str | None, typer.Option(help="runs_dir: where run folders go (default: runs).")]

# flag (its parameter name) -> the config key it sets
FLAG_KEYS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.optimizer.lr",
    "device": "train.device",
    "seed": "seed",
    "name": "name",
    "runs_dir": "runs_dir",
}


def run_overrides(set_: list[str] | None, **flags: Any) -> list[str]:
    """``--set`` values, then each flag that was given as ``KEY=VALUE``.

    Raises:
        ConfigError: a key set both by its flag and by ``--set``.

    Example:
        >>> run_overrides(["train.lr_warmup=1"], epochs=3, name="baseline", lr=None)
        ['train.lr_warmup=1', 'train.epochs=3', 'name="baseline"']
    """
    overrides = list(set_ or [])
    given = {item.partition("=")[0].strip() for item in overrides}
    for flag, value in flags.items():
        if value is None:
            continue
        key = FLAG_KEYS[flag]
        if key in given:
            raise ConfigError(
                f"--{flag.replace('_', '-')} {value} and --set {key}=... both set {key}; give it once, "
                f"with either of them."
            )
        # Strings are quoted, so that --name 2024 stays a name; a number is written as Python writes it.
        overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return overrides
