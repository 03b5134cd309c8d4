"""SIGKILL mid-epoch, resume, and end with weights bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ..conftest import KILN


def make_folder(root: Path, per_class: int = 120, size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size), dtype=np.uint8)
            img[c * 8 : c * 8 + 8, :] += 120  # a class-dependent band
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def config(tmp: Path, data: Path) -> Path:
    cfg = {
        "task": "image-classification",
        "data": {
            "path": str(data),
            "augment": [{"name": "random_crop", "padding": 2}, {"name": "horizontal_flip"}],
        },
        "model": {"name": "cnn", "args": {"channels": [16, 32], "dropout": 0.2}},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "checkpoint_every": 1,
            "log_every": 5,
            "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True},
            "scheduler": {"name": "cosine"},
        },
        "tracking": {"mlflow": False, "tensorboard": False},
        "runs_dir": str(tmp / "runs"),
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_dir_of(output: str) -> Path:
    return Path(output.strip().splitlines()[-1])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["modules"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    cfg = config(tmp_path, data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    full = subprocess.run([KILN, "train", str(cfg)], capture_output=True, text=True, env=env, check=True)
    reference = final_weights(run_dir_of(full.stdout))

    proc = subprocess.Popen(
        [KILN, "train", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    ckpt_glob = "runs/*/*/checkpoints/last.pt"
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.glob(ckpt_glob) if p.parent.parent.name != run_dir_of(full.stdout).name]
        if found:
            state = torch.load(found[0], weights_only=True)["state"]
            if state["epoch"] == 1 and 5 <= state["batch"] <= 25:  # well inside the second epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = state
                break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    run_dir = found[0].parent.parent
    assert not (run_dir / "bundle").exists()

    resumed = subprocess.run(
        [KILN, "train", "--resume", str(run_dir)], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    assert run_dir_of(resumed.stdout) == run_dir
    weights = final_weights(run_dir)
    assert weights.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(reference[k], weights[k])]
    assert not different, f"{len(different)} tensors differ after resume, first: {different[:3]}"
    assert (run_dir / "bundle" / "model.safetensors").is_file()
    # The resumed epoch's train/* figures cover the whole epoch (its running sums were checkpointed).
    full_history = json.loads((run_dir_of(full.stdout) / "history.json").read_text())
    assert json.loads((run_dir / "history.json").read_text()) == full_history


def test_resume_without_run_dir_fails_clearly(tmp_path: Path) -> None:
    out = subprocess.run([KILN, "train", "--resume", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"'{tmp_path}' is not a run directory (no config.yaml)" in out.stderr
    assert "Traceback" not in out.stderr
