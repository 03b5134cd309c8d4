"""Hyperparameter search with Optuna: ``kiln tune`` (docs/tuning.md).

A run config's ``tune`` section names the settings to search and their distributions; each trial is a
normal training run of the config with the sampled values set as ``--set`` would set them.
"""

from torchkiln.tune.tuner import TuneError, TuneResult, tune

__all__ = ["TuneError", "TuneResult", "tune"]
