"""Engine behaviour driven through the public API on tiny generated data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import torchkiln
from torchkiln.cli.main import app
from torchkiln.core.errors import ConfigError


def test_monitor_typo_fails_before_training_and_leaves_no_run(tiny_config: dict[str, Any]) -> None:
    cfg = torchkiln.load_config(tiny_config, ["train.monitor=val/acc"])
    with pytest.raises(ConfigError) as info:
        torchkiln.train(cfg)
    assert "train.monitor is 'val/acc', which this run does not report. Did you mean 'val/accuracy'?" in str(
        info.value
    )
    assert not list(Path(cfg.runs_dir).glob("*/*"))  # the half-made run directory was removed


def test_time_budget_stops_and_resume_finishes(tiny_config: dict[str, Any]) -> None:
    cfg = torchkiln.load_config(tiny_config, ["train.epochs=3", "train.max_minutes=0.00001"])
    run_dir = torchkiln.train(cfg)
    bundle = torchkiln.load_predictor(run_dir).bundle
    assert bundle.meta["trained"]["stopped"].startswith("time budget")
    assert bundle.meta["trained"]["steps"] < 3 * 4
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert last["epoch"] < 3

    # The resumed run gets a fresh budget per invocation; a roomy one lets it finish.
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("1.0e-05", "10.0"))
    torchkiln.train(resume=run_dir)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 3


def test_resume_refuses_a_config_or_set(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "cfg.yaml", "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert "--resume continues a run with the config saved in its directory" in result.output


def test_an_epoch_line_is_cut_to_a_terminal_but_kept_whole_in_a_log() -> None:
    import io

    from rich.console import Console

    from torchkiln.engine.progress import Progress

    results = {f"val/metric_{i}": 0.5 for i in range(8)} | {"epoch": 0}
    for terminal, expect_cut in ((True, True), (False, False)):
        buf = io.StringIO()
        console = Console(file=buf, width=60, force_terminal=terminal, color_system=None)
        Progress(epochs=1, describe="cpu fp32", console=console).end_epoch(results)
        line = buf.getvalue().splitlines()[-1]
        assert (len(line) == 60 and line.endswith("…")) if expect_cut else len(line) > 60, line
