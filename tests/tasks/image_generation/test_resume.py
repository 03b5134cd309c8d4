"""A GAN killed mid-epoch and resumed ends bitwise identical: both networks, both optimizers, the RNG."""

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

from torchkiln.tasks.image_generation.example import CLASSES, example_config, shapes

from ...conftest import KILN


def config(tmp: Path) -> Path:
    raw = example_config(tmp)
    images, labels = shapes(160, seed=5)
    np.savez(tmp / "many.npz", x_train=images, y_train=labels, classes=np.array(CLASSES))
    raw["data"] = {"path": str(tmp / "many.npz")}
    raw["task"] |= {"conditional": True, "features": "none"}
    raw["model"]["args"] = {"width": 8, "spectral_norm": True}
    raw["train"] |= {
        "epochs": 2,
        "batch_size": 4,
        "checkpoint_every": 1,
        "log_every": 5,
        "label_smoothing": 0.1,
    }
    path = tmp / "gan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def run_dir_of(output: str) -> Path:
    return Path(output.strip().splitlines()[-1])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run([KILN, "train", str(cfg)], capture_output=True, text=True, env=env, check=True)
    reference = last(run_dir_of(full.stdout))
    assert set(reference["optimizers"]) == {"generator", "discriminator"}

    proc = subprocess.Popen(
        [KILN, "train", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    killed_at, found = None, []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = [
            p
            for p in tmp_path.glob("runs/*/*/checkpoints/last.pt")
            if p.parents[1] != run_dir_of(full.stdout)
        ]
        if found:
            try:
                state = torch.load(found[0], weights_only=True)["state"]
            except Exception:  # replaced while it was read: read the next one
                continue
            if state["epoch"] == 1 and 5 <= state["batch"] <= 30:  # well inside the second epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = state
                break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    run_dir = found[0].parents[1]
    assert not (run_dir / "bundle").exists()

    resumed = subprocess.run(
        [KILN, "train", "--resume", str(run_dir)], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    got = last(run_dir)
    for part in ("modules", "optimizers"):
        flat_ref = _flatten(reference[part])
        flat_got = _flatten(got[part])
        assert flat_ref.keys() == flat_got.keys()
        different = [k for k in flat_ref if not _equal(flat_ref[k], flat_got[k])]
        assert not different, f"{part}: {len(different)} entries differ after resume, first: {different[:3]}"
    assert torch.equal(reference["rng"]["torch"], got["rng"]["torch"])
    full_history = json.loads((run_dir_of(full.stdout) / "history.json").read_text())
    assert json.loads((run_dir / "history.json").read_text()) == full_history
    assert (run_dir / "bundle" / "model.safetensors").is_file()


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


def _equal(a: object, b: object) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
