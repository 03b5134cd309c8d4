"""Reproducibility as docs/reproducibility.md states it: the same config and seed train bit-identical weights,
another seed trains other weights. Three real `kiln train` processes on a generated image folder.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ..conftest import KILN, ConfigFactory, ImageFolderFactory


def train(cwd: Path, name: str, *flags: str) -> dict[str, torch.Tensor]:
    """``kiln train cfg.yaml --name NAME FLAGS``; returns the bundle's tensors."""
    # One thread in every run: bit-for-bit holds for the same thread count (docs/reproducibility.md).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [KILN, "train", "cfg.yaml", "--name", name, *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    run_dir = cwd / done.stdout.strip().splitlines()[-1]
    return load_file(run_dir / "bundle" / "model.safetensors")


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(
    tmp_path: Path, make_image_folder: ImageFolderFactory, make_config: ConfigFactory
) -> None:
    cfg = make_config(make_image_folder(tmp_path / "images", per_class=16), tmp_path / "runs")
    # val/loss keeps improving here, so the bundle holds the weights after the last step (val/accuracy
    # reaches 1.0 in the first epoch and would keep that epoch's)
    cfg["train"] |= {"epochs": 2, "batch_size": 8, "monitor": "val/loss", "monitor_mode": "min"}
    cfg["data"]["augment"] = [{"name": "horizontal_flip"}]  # random per item: the seed must cover it too
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with ThreadPoolExecutor(3) as pool:  # independent processes: start them together
        jobs = [
            pool.submit(train, tmp_path, "a"),  # the config's seed: the default, 0
            pool.submit(train, tmp_path, "b", "--seed", "0"),
            pool.submit(train, tmp_path, "c", "--seed", "1"),
        ]
        a, b, c = (job.result() for job in jobs)
    assert a.keys() == b.keys() == c.keys() and len(a) > 4
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between two runs with seed 0"
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], c[k])]
    weights = [k for k in a if k.endswith(".weight")]
    assert set(weights) <= set(changed), f"seed 1 left {set(weights) - set(changed)} equal to seed 0's"
