"""`kiln monitor profile`: a bundle's reference profile, rebuilt for a bundle written without one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from torchkiln import api
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.cli.main import app
from torchkiln.core.errors import BundleError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any) -> Path:
    """A tiny CNN's run on 3 classes of 8x8 images (its bundle has a reference of the val split)."""
    root = tmp_path_factory.mktemp("monitor")
    cfg = make_config(make_image_folder(root / "images", size=8, mode="L", per_class=10), root / "runs")
    return api.train(api.load_config(cfg))


@pytest.fixture
def old_bundle(trained: Path, tmp_path: Path) -> Path:
    """A copy of the bundle as bundles were written before reference profiles: no file, no section."""
    bundle = Path(shutil.copytree(trained / "bundle", tmp_path / "bundle"))
    (bundle / "reference.safetensors").unlink()
    profile = json.loads((bundle / "profile.json").read_text())
    del profile["reference"]
    (bundle / "profile.json").write_text(json.dumps(profile))
    return bundle


def no_reference(bundle: Path) -> str:
    return (
        f"Bundle '{bundle}' has no reference profile: its profile.json has no 'reference' section (the "
        f"bundle was written before reference profiles, or trained with evaluate.reference.split: none). "
        f"Drift monitoring compares live traffic with that profile of held-out data. Build one with: "
        f"kiln monitor profile {bundle} --split val"
    )


def monitor(*args: str) -> Any:
    return CliRunner().invoke(app, ["monitor", "profile", *args, "--device", "cpu"])


def test_a_bundle_without_a_reference_says_how_to_build_one(old_bundle: Path) -> None:
    with pytest.raises(BundleError) as info:
        load_bundle(old_bundle).reference()
    assert str(info.value) == no_reference(old_bundle)
    predictor = load_predictor(old_bundle, device="cpu")
    x = predictor.preprocess([np.zeros((8, 8), np.uint8)])
    with pytest.raises(BundleError) as info:
        predictor.embed(x)
    assert str(info.value) == no_reference(old_bundle)


def test_profile_builds_the_reference_of_an_old_bundle(old_bundle: Path, trained: Path) -> None:
    result = monitor(str(old_bundle))
    assert result.exit_code == 0, (result.output, result.exception)
    built, original = load_bundle(old_bundle).reference(), load_bundle(trained).reference()
    m, emb = built.meta, built.meta["embedding"]
    assert m["summary_columns"] == ["mean", "std", "channel_means[0]", "bytes"]  # as the server logs them
    assert result.stdout.splitlines() == [
        f"reference: {m['items']} of the {m['items']} items of the val split; 4 input statistics, signals "
        f"predicted, confidence, embeddings {emb['features']} -> {emb['dims']} dims "
        f"({emb['explained_variance']:.0%} of the variance)",
        str(old_bundle / "reference.safetensors"),
    ]
    assert load_bundle(old_bundle).profile["raw"] == load_bundle(trained).profile["raw"]  # kept
    # The same items, model and seed as at the end of training: the same reference.
    assert built.arrays.keys() == original.arrays.keys()
    for name, a in original.arrays.items():
        np.testing.assert_allclose(built.arrays[name], a, rtol=1e-4, atol=1e-4, err_msg=name)
    assert built.meta["model_version"] == original.meta["model_version"]


def test_profile_replaces_a_reference_only_with_overwrite(trained: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(trained / "bundle", tmp_path / "bundle"))
    made = load_bundle(bundle).profile["reference"]["created"]
    result = monitor(str(bundle), "--split", "test")
    assert result.exit_code == 2
    items = load_bundle(bundle).profile["reference"]["items"]
    assert " ".join(result.stderr.split()) == (
        f"error: Bundle '{bundle}' already has a reference profile ({items} items of the val split, made "
        f"{made}). Pass --overwrite to replace it."
    )
    result = monitor(str(bundle), "--split", "test", "--overwrite")
    assert result.exit_code == 0, (result.output, result.exception)
    assert load_bundle(bundle).reference().meta["split"] == "test"
