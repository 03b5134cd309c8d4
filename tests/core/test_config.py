"""Loading, validating, overriding and dumping run configs; every bad input gets a plain message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torchkiln.core.config import RunConfig, TrainConfig
from torchkiln.core.config_io import apply_override, dump_config
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.base import load_config, validate

MINIMAL: dict[str, Any] = {
    "task": "image-classification",
    "data": {"path": "X"},
    "model": {"name": "cnn"},
    "train": {"epochs": 1},
}


def with_section(section: str, value: Any) -> dict[str, Any]:
    return {**MINIMAL, section: value}


def write_yaml(path: Path, value: Any) -> Path:
    path.write_text(yaml.safe_dump(value), encoding="utf-8")
    return path


def config_error(raw: Any, overrides: list[str] | tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    return str(info.value)


# --- valid configs ------------------------------------------------------------------------------
def test_minimal_config_validates_as_written(tmp_path: Path) -> None:
    cfg = load_config(write_yaml(tmp_path / "kiln.yaml", MINIMAL))
    assert isinstance(cfg, RunConfig)
    assert cfg.task.kind == "image-classification"
    assert cfg.data.path == "X"
    assert cfg.model.name == "cnn"
    assert cfg.train.epochs == 1
    # Data-dependent fields stay unset until the data is read.
    assert cfg.data.classes is None and cfg.data.image_size is None and cfg.data.channels is None


def test_task_and_data_shorthands() -> None:
    short = load_config({"task": "image-classification", "data": "some/folder"})
    long = load_config({"task": {"kind": "image-classification"}, "data": {"path": "some/folder"}})
    assert short == long
    assert short.task.kind == "image-classification"
    assert short.data.path == "some/folder"


def test_a_loaded_config_is_frozen() -> None:
    cfg = load_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_run_name_comes_from_data_and_model() -> None:
    assert load_config(with_section("data", {"path": "data/fashion-mnist/"})).run_name == "fashion-mnist-cnn"
    assert load_config({**MINIMAL, "name": "mine"}).run_name == "mine"


# --- overrides ----------------------------------------------------------------------------------
def test_override_sets_a_float(tmp_path: Path) -> None:
    cfg = load_config(write_yaml(tmp_path / "kiln.yaml", MINIMAL), ["train.optimizer.lr=3e-4"])
    assert isinstance(cfg.train.optimizer.lr, float)
    assert cfg.train.optimizer.lr == pytest.approx(3e-4)


def test_overrides_parse_yaml_values_and_create_sections() -> None:
    cfg = load_config(MINIMAL, ["train.epochs=7", "data.augment=[{name: horizontal_flip, p: 1.0}]", "seed=3"])
    assert cfg.train.epochs == 7
    assert cfg.data.augment[0].name == "horizontal_flip" and cfg.data.augment[0].p == 1.0
    assert cfg.seed == 3


def test_override_under_a_shorthand_section() -> None:
    # `data: X` is shorthand for {path: X}; setting a sibling key must keep the path.
    cfg = load_config({"task": "image-classification", "data": "folder"}, ["data.image_size=32"])
    assert cfg.data.path == "folder" and cfg.data.image_size == 32


def test_apply_override_does_not_change_its_input() -> None:
    raw = {"train": {"epochs": 1}}
    out = apply_override(raw, "train.epochs=4")
    assert out == {"train": {"epochs": 4}}
    assert raw == {"train": {"epochs": 1}}


def test_bad_override_value_names_the_key() -> None:
    msg = config_error(MINIMAL, ["train.epochs=zero"])
    assert "'train.epochs': Input should be a valid integer" in msg
    assert "Got 'zero'." in msg


def test_override_below_its_minimum_names_the_key() -> None:
    msg = config_error(MINIMAL, ["train.epochs=0"])
    assert "'train.epochs': Input should be greater than or equal to 1. Got 0." in msg


@pytest.mark.parametrize("item", ["train.epochs", "=5"])
def test_malformed_override(item: str) -> None:
    msg = config_error(MINIMAL, [item])
    assert msg == f"Override '{item}' is not of the form key.path=value. Example: --set train.epochs=5"


# --- bad files and keys -------------------------------------------------------------------------
def test_unknown_key_has_a_did_you_mean() -> None:
    msg = config_error(with_section("train", {"epoch": 1}))
    assert "unknown key 'train.epoch'. Did you mean 'epochs'?" in msg
    assert "Valid keys here: accumulate, batch_size," in msg


def test_unknown_top_level_key() -> None:
    msg = config_error({**MINIMAL, "trian": {"epochs": 1}})
    assert "unknown key 'trian'. Did you mean 'train'?" in msg


def test_missing_required_section() -> None:
    msg = config_error({"task": "image-classification"})
    assert "'data' is required but missing. Add it to the config." in msg


def test_every_problem_is_listed() -> None:
    msg = config_error({**MINIMAL, "train": {"epoch": 1, "batch_size": -1}})
    assert msg.startswith("The run config is invalid (2 problem(s)):")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = config_error(path)
    assert f"Config file '{path}' does not exist. Expected a YAML file such as:" in msg


def test_non_mapping_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "list.yaml", ["task", "data"])
    msg = config_error(path)
    assert (
        f"Config file '{path}' must hold a mapping of settings (task, data, model, train); got list." in msg
    )


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: [image-classification\n", encoding="utf-8")
    assert f"Config file '{path}' is not valid YAML:" in config_error(path)


def test_unknown_augment_transform() -> None:
    msg = config_error(with_section("data", {"path": "X", "augment": [{"name": "flipp"}]}))
    assert (
        "'data.augment.0': Input tag 'flipp' found using 'name' does not match any of the expected tags:"
        in msg
    )
    assert "'horizontal_flip'" in msg


def test_unknown_key_inside_an_augment_step_has_a_did_you_mean() -> None:
    msg = config_error(with_section("data", {"path": "X", "augment": [{"name": "rotation", "degree": 5}]}))
    assert "Did you mean 'degrees'?" in msg
    assert "Valid keys here: degrees, name." in msg


def test_split_fractions_must_leave_training_data() -> None:
    msg = config_error(with_section("data", {"path": "X", "split": {"val": 0.5, "test": 0.4}}))
    assert "val + test must be < 0.9 so training keeps data" in msg


def test_device_names_are_checked() -> None:
    msg = config_error(with_section("train", {"device": "gpu"}))
    choices = "auto, cpu, cuda, cuda:N (e.g. cuda:1), N for cuda:N, or mps"
    assert f"'train.device': device must be one of {choices}. Got 'gpu'.\n" in msg
    assert "Value error" not in msg and msg.count("'gpu'") == 1


@pytest.mark.parametrize(
    ("given", "device"), [(0, "cuda:0"), ("1", "cuda:1"), ("cuda", "cuda"), ("cpu", "cpu")]
)
def test_a_gpu_number_is_that_cuda_device(given: object, device: str) -> None:
    assert TrainConfig(device=given).device == device


def test_stats_need_one_value_per_channel() -> None:
    msg = config_error(with_section("data", {"path": "X", "channels": 3, "mean": [0.5]}))
    assert "data.mean needs 3 values (one per channel); got [0.5]" in msg


# --- dump ---------------------------------------------------------------------------------------
def test_dump_config_round_trip() -> None:
    cfg = load_config(
        {
            **MINIMAL,
            "data": {
                "path": "X",
                "classes": ["a", "b"],
                "image_size": 16,
                "channels": 3,
                "mean": [0.1, 0.2, 0.3],
                "std": [0.4, 0.5, 0.6],
                "augment": [{"name": "random_resized_crop", "scale": [0.5, 1.0]}, {"name": "rotation"}],
            },
            "model": {"name": "cnn", "args": {"channels": [8, 16]}},
        }
    )
    text = dump_config(cfg)
    assert validate(yaml.safe_load(text)) == cfg
    # Field order is kept, so a dumped config reads like a hand-written one.
    assert list(yaml.safe_load(text))[:3] == ["task", "data", "model"]


def test_set_indexes_into_a_list() -> None:
    raw = {"task": "image-classification", "data": {"path": "X", "augment": [{"name": "rotation"}]}}
    cfg = load_config(raw, ["data.augment.0.degrees=5"])
    assert cfg.data.augment[0].degrees == 5.0


def test_set_with_a_bad_list_index_says_which() -> None:
    raw = {"task": "image-classification", "data": {"path": "X", "augment": [{"name": "rotation"}]}}
    with pytest.raises(ConfigError, match=r"'3' is not an index of a list with 1 item\(s\)"):
        load_config(raw, ["data.augment.3.degrees=5"])


def test_a_key_of_a_section_one_level_down_is_pointed_to() -> None:
    """train.lr is train.optimizer.lr; the valid keys of train alone would not say so."""
    msg = config_error(with_section("train", {"lr": 0.1}))
    assert "  - unknown key 'train.lr'. Did you mean 'train.optimizer.lr'? Valid keys here: " in msg
    msg = config_error(MINIMAL, ["train.weight_decay=0.1"])
    assert "unknown key 'train.weight_decay'. Did you mean 'train.optimizer.weight_decay'?" in msg
    msg = config_error(with_section("train", {"epoch": 1}))  # a near miss at its own level still wins
    assert "unknown key 'train.epoch'. Did you mean 'epochs'?" in msg
