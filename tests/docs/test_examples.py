"""Every example config in examples/ validates as written (the docs tell users to run them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchkiln.tasks.base import TASKS, load_config

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task.kind in TASKS.names()
