"""The image-classification task refuses inputs it cannot use with errors, not asserts (python -O)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from torchkiln.core.errors import ConfigError
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate

TASK = get_task("image-classification")


def unresolved_message(what: str, fields: str, verb: str, them: str) -> str:
    return (
        f"{what} needs a resolved config, but {fields} {verb} not set; expected the config that "
        f"task.prepare returns, which fills {them} in from the data (a bundle's config is resolved too). "
        f"Fix: pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
    )


def test_build_model_names_every_field_an_unresolved_config_lacks(tmp_path: Path, make_config) -> None:
    cfg = validate(make_config(tmp_path / "images", tmp_path / "runs"))  # not through prepare
    with pytest.raises(ConfigError) as exc:
        TASK.build_model(cfg)
    fields = "data.classes, data.image_size, data.channels, data.mean, data.std"
    assert str(exc.value) == unresolved_message("build_model", fields, "are", "them")


def test_preprocess_names_the_one_field_a_partly_resolved_config_lacks(tmp_path: Path, make_config) -> None:
    raw = make_config(tmp_path / "images", tmp_path / "runs")
    raw["data"]["image_size"] = 16
    with pytest.raises(ConfigError) as exc:
        TASK.preprocess(validate(raw), [np.zeros((16, 16), dtype=np.uint8)])
    assert str(exc.value) == unresolved_message("preprocess", "data.channels", "is", "it")
