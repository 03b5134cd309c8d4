"""The bundle's named modules, and bundles written before them (one unprefixed module) still loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.core.io import sha256_file


def test_a_bundle_names_its_modules_and_the_one_that_serves(tiny_bundle: Path) -> None:
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert meta["modules"] == ["model"] and meta["serves"] == "model"
    keys = load_file(str(tiny_bundle / "model.safetensors")).keys()
    assert keys and all(k.startswith("model.") for k in keys)
    bundle = load_bundle(tiny_bundle)
    assert bundle.serves == "model" and bundle.modules == {"model": bundle.model}


def test_a_bundle_from_before_named_modules_still_loads_and_predicts_the_same(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    old = Path(shutil.copytree(tiny_bundle, tmp_path / "old"))
    weights = load_file(str(old / "model.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in weights.items()}, str(old / "model.safetensors"))
    meta = json.loads((old / "bundle.json").read_text())
    del meta["modules"], meta["serves"]
    meta["weights_sha256"] = sha256_file(old / "model.safetensors")
    (old / "bundle.json").write_text(json.dumps(meta))

    new, legacy = load_bundle(tiny_bundle), load_bundle(old)
    assert legacy.serves == "model"
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(legacy.model(x), new.model(x))
