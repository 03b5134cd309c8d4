"""`kiln train --nproc 2`: two gloo processes on the CPU train one run, which rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from ..conftest import kiln


def test_two_processes_train_one_run_written_by_rank_0(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    tiny_config["train"]["epochs"] = 2
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config))
    done = kiln("train", "cfg.yaml", "--nproc", "2", cwd=tmp_path)
    run_dir = tmp_path / done.stdout.strip()
    assert done.stdout.count("\n") == 1  # the run directory, printed once (by rank 0)
    assert "training on cpu" in done.stderr and ", 2 processes" in done.stderr
    assert done.stderr.count("epoch 1/2") == 1
    assert [p for p in (tmp_path / "runs").glob("*/*")] == [run_dir]
    trained = json.loads((run_dir / "bundle" / "bundle.json").read_text())["trained"]
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 2 and trained["epochs"] == 2
    n_train = 24  # 36 images, 1/3 held out; batches of 8 drop no item
    assert trained["samples"] == 2 * n_train
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["ranks"]) == 2  # each rank's RNG and statistics, for an exact resume

    longer = kiln("train", "--resume", str(run_dir), "--nproc", "2", "--epochs", "3", cwd=tmp_path)
    assert longer.stdout.strip() == str(run_dir)  # once
    assert len(json.loads((run_dir / "history.json").read_text())) == 3


def test_a_failing_rank_says_which_rank_and_why(tiny_config: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config))
    done = kiln("train", "cfg.yaml", "--nproc", "2", "--batch-size", "1", cwd=tmp_path, ok=False)
    assert done.returncode == 2
    assert (
        "error: rank 0 of 2: Training batch 0 has 1 item(s) for 2 processes; every process needs at least "
        "one. Use train.batch_size >= 2 with at least 2 training items, or fewer processes (--nproc)."
    ) in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "failed first (it exited with code 2); the other processes were stopped. Its message is above."
    )
    assert not list((tmp_path / "runs").glob("*/*"))  # nothing trained: no run left behind
