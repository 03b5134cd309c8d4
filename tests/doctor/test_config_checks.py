"""The config's checks, each on a config with the mistake and on one without: device, monitor, tuning,
seed, loss; and the loader's own refusal, reported with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchkiln.core.errors import ConfigError, DataError
from torchkiln.doctor import selected
from torchkiln.tasks.base import get_task, load_config

from .planted import (
    clean_splits,
    examine,
    image_config,
    monthly,
    of,
    series_config,
    serious,
    write_npz,
    write_series,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("cfg") / "shapes.npz", clean_splits())


def config(data: Path, **extra):
    return image_config(data, data.parent, seed=0, **extra)


def test_a_clean_config_has_no_config_finding(data: Path) -> None:
    report = examine(config(data), cheap_only=True)
    assert [f.check for f in report.findings] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine must not have")
def test_a_gpu_that_is_not_here_is_an_error_with_the_training_message(data: Path) -> None:
    report = examine(config(data, train={"device": "cuda:0"}), cheap_only=True)
    assert [(f.severity, f.message) for f in of(report, "device")] == [
        ("error", "train.device is 'cuda:0' but CUDA is not available on this machine. Use auto (or cpu).")
    ]


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="asks for MPS this machine must not have")
def test_mps_that_is_not_here_is_an_error(data: Path) -> None:
    (found,) = of(examine(config(data, train={"device": "mps"}), cheap_only=True), "device")
    assert found.message == "train.device is 'mps' but this machine has no Apple GPU (MPS is not available)."
    assert found.fix == "Use auto (or cpu)."


def test_a_test_split_monitor_is_an_error(data: Path) -> None:
    (found,) = of(examine(config(data, train={"monitor": "test/accuracy"}), cheap_only=True), "monitor")
    assert found.severity == "error"
    assert found.message == (
        "train.monitor is 'test/accuracy': the best checkpoint and early stopping would be chosen on the "
        "test split, so the test score kiln evaluate reports would be tuned on itself (and kiln reports no "
        "test figure while training)."
    )
    assert found.fix == "Use val/accuracy: choose on val, and score test once, at the end."


def test_a_monitor_the_run_does_not_report_is_an_error(data: Path) -> None:
    (found,) = of(examine(config(data, train={"monitor": "val/acuracy"}), cheap_only=True), "monitor")
    assert found.severity == "error"
    assert found.message.startswith(
        "train.monitor is 'val/acuracy', which this run does not report. Did you mean 'val/accuracy'? Valid: "
        "train/accuracy,"
    )


def test_a_monitor_mode_against_the_figure_picks_the_worst_epoch(data: Path) -> None:
    (found,) = of(examine(config(data, train={"monitor": "val/loss"}), cheap_only=True), "monitor")
    assert found.severity == "warning"  # monitor_mode stays max, the classifier's default
    assert found.message.startswith("train.monitor_mode is max, but val/loss is better when lower")
    assert found.fix == "Set train.monitor_mode: min."


def test_early_stopping_on_a_training_figure_is_a_warning(data: Path) -> None:
    raw = config(
        data, train={"monitor": "train/loss", "monitor_mode": "min", "early_stopping": {"patience": 2}}
    )
    (found,) = of(examine(raw, cheap_only=True), "monitor")
    assert found.severity == "warning"
    assert found.message.endswith("and early stopping never stops on overfitting.")


TUNE = {"params": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-1]}}}


def test_tuning_on_test_and_scoring_the_tuned_split_and_searching_the_seed(data: Path) -> None:
    report = examine(config(data, tune={**TUNE, "metric": "test/accuracy"}), cheap_only=True)
    assert [(f.severity, f.message.split(":")[0]) for f in of(report, "tuning")] == [
        ("error", "tune.metric is 'test/accuracy'")
    ]
    raw = config(data, tune={"params": {**TUNE["params"], "seed": {"int": [0, 9]}}, "direction": "minimize"})
    raw["evaluate"] = {"split": "val"}
    found = of(examine(raw, cheap_only=True), "tuning")
    assert [(f.severity, f.message.split(",")[0]) for f in found] == [
        ("warning", "tune.direction is minimize"),
        ("warning", "evaluate.split is val"),
        ("warning", "tune.params searches seed: that picks the luckiest seed or split"),
    ]
    assert of(examine(config(data, tune=TUNE), cheap_only=True), "tuning") == []


def test_a_missing_seed_is_an_info_and_a_set_one_is_nothing(data: Path) -> None:
    raw = config(data)
    del raw["seed"]
    (found,) = of(examine(raw, cheap_only=True), "seed")
    assert found.severity == "info" and found.message.startswith("seed is not set, so it is 0")
    assert of(examine(config(data), cheap_only=True), "seed") == []


def test_label_smoothing_that_the_loss_ignores_is_a_warning(tmp_path: Path) -> None:
    raw = series_config(write_series(tmp_path / "s.csv", monthly()), tmp_path)
    raw |= {"seed": 0, "train": {**raw["train"], "label_smoothing": 0.1}}
    (found,) = of(examine(raw, cheap_only=True), "loss")
    assert found.severity == "warning"
    assert found.message == (
        "train.label_smoothing is 0.1, but this task's loss (PinballLoss) has no label smoothing: the "
        "setting changes nothing."
    )
    raw["train"]["label_smoothing"] = 0.0
    assert serious(examine(raw, cheap_only=True)) == []


def test_label_smoothing_reaches_a_classifiers_loss(data: Path) -> None:
    assert of(examine(config(data, train={"label_smoothing": 0.1}), cheap_only=True), "loss") == []


def test_a_refused_data_set_is_an_error_with_the_loaders_message(tmp_path: Path) -> None:
    raw = config(tmp_path / "missing.npz")
    cfg = load_config(raw)
    with pytest.raises(DataError) as refused:
        get_task(cfg.task.kind).prepare(cfg)
    (found,) = of(examine(raw, cheap_only=True), "data-loads")
    assert (found.severity, found.message) == ("error", str(refused.value))


def test_quick_leaves_out_the_costly_checks_and_opt_in_names_are_checked() -> None:
    quick = {c.name for c in selected(quick=True, opt_in=())}
    full = {c.name for c in selected(quick=False, opt_in=())}
    assert "label-noise" not in full and quick <= full
    assert "label-noise" in {c.name for c in selected(quick=True, opt_in=("label-noise",))}
    with pytest.raises(ConfigError) as exc:
        selected(quick=False, opt_in=("label-nosie",))
    assert str(exc.value).startswith("'label-nosie' is not a doctor check. Did you mean 'label-noise'?")


def test_a_bundle_of_another_architecture_to_start_from_is_an_error(data: Path, tiny_bundle: Path) -> None:
    same = config(
        data, model={"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}, "init_from": str(tiny_bundle)}
    )
    found = of(examine(same, cheap_only=True), "init-from")
    assert {f.severity for f in found} == {"info"}
    assert found[0].message.startswith(f"started from {tiny_bundle}: ")
    other = config(data, model={"name": "mlp", "args": {}, "init_from": str(tiny_bundle)})
    (found,) = of(examine(other, cheap_only=True), "init-from")
    assert found.severity == "error"
    assert found.message.startswith(
        f"model.init_from '{tiny_bundle}' holds a cnn model of the image-classification"
    )
