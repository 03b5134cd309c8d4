"""`kiln lr-find` as a user runs it: the suggestion and a ready `kiln train` command, the plot and its data,
and no run directory; bad flag values exit 2 before any data is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from torchkiln.cli.main import app

from ..conftest import kiln


def test_lr_find_prints_a_suggestion_and_the_command_and_writes_only_the_plot_and_data(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config), encoding="utf-8")
    args = ("lr-find", "cfg.yaml", "--steps", "25", "--batch-size", "4", "--set", "train.epochs=2")
    done = kiln(*args, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    suggested = next(line for line in lines if line.startswith("suggested lr (steepest descent): "))
    lr = suggested.rsplit(" ", 1)[1]
    assert any(line.startswith("minimum / 10: ") for line in lines)
    # The flags given here come along, so the command trains the run that was tested.
    assert lines[-1] == f"kiln train cfg.yaml --set train.epochs=2 --batch-size 4 --lr {lr}"

    folder = tmp_path / "runs" / "images-cnn" / "lr-find"
    data = json.loads((folder / "lr-find.json").read_text())
    assert 2 <= len(data["lrs"]) == len(data["losses"]) == len(data["smoothed"]) <= 25
    assert f"{data['suggestion']:.2g}" == lr and data["lrs"][0] == 1e-7
    assert (folder / "lr-find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing else: no run directory (a timestamped folder with config.yaml), no checkpoints, no mlruns.
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == [
        "images-cnn",
        "lr-find",
        "lr-find.json",
        "lr-find.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "images", "runs"]


def test_bad_learning_rates_exit_2_with_what_to_give(tmp_path: Path) -> None:
    # In process: the range is refused before the config is read, so no kiln process is worth its start.
    done = CliRunner().invoke(
        app, ["lr-find", str(tmp_path / "missing.yaml"), "--start-lr", "1", "--end-lr", "0.1"]
    )
    assert done.exit_code == 2
    assert "0 < start_lr < end_lr. Got start_lr=1, end_lr=0.1 instead" in done.output
    assert "--start-lr 1e-7 --end-lr 10" in done.output
