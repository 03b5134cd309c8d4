"""`kiln predict` on inputs far from the training inputs: a warning line per input, a count, the answers.

The model is a tiny CNN on 8x8 grayscale PNGs; the far input is a 640x480 RGB photo-sized PNG.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from torchkiln import api
from torchkiln.cli.main import app

PHOTO_WARNING = "warning: photo.png: mode RGB, trained on L; size 640x480, trained on 8x8"


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any) -> Path:
    """A bundle trained on 8x8 grayscale images, and a 640x480 RGB ``photo.png`` beside it."""
    root = tmp_path_factory.mktemp("gray8")
    cfg = make_config(make_image_folder(root / "images", size=8, mode="L", per_class=6), root / "runs")
    bundle = api.train(api.load_config(cfg)) / "bundle"
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "photo.png")
    return bundle


def predict(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(cwd)  # the warning names each input as it was given
    result = CliRunner().invoke(app, ["predict", *args, "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_the_bundle_records_the_raw_form_of_its_training_images(gray_bundle: Path) -> None:
    raw = api.load_bundle(gray_bundle).profile["raw"]
    assert raw["modes"] == {"L": raw["images"]} and raw["images"] > 0
    assert raw["width"] == raw["height"] == {"min": 8, "p05": 8, "p50": 8, "p95": 8, "max": 8}


def test_a_photo_for_an_8x8_grayscale_model_is_answered_with_a_warning(
    gray_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = gray_bundle.parent.parent.parent.parent
    result = predict(str(gray_bundle), "photo.png", "images/dot/00.png", cwd=root, monkeypatch=monkeypatch)
    assert result.stderr.splitlines() == [
        PHOTO_WARNING,
        "warning: 1 input of 2 is far from the inputs the model was trained on (mode, size); its answer may "
        "be wrong, even with a high score.",
    ]
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["photo.png", "images/dot/00.png"]

    result = predict(str(gray_bundle), "images/dot/00.png", "images/hbar", cwd=root, monkeypatch=monkeypatch)
    assert result.stderr == ""  # images like the training images: no warning

    out = root / "answers.csv"
    predict(
        str(gray_bundle),
        "photo.png",
        "images/dot/00.png",
        "--out",
        str(out),
        cwd=root,
        monkeypatch=monkeypatch,
    )
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["input", "label", "score", "top_k", "warnings"]
    assert json.loads(rows[0]["warnings"]) == ["mode RGB, trained on L", "size 640x480, trained on 8x8"]
    assert rows[1]["warnings"] == ""


def test_a_bundle_without_a_profile_warns_of_nothing(
    gray_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = shutil.copytree(gray_bundle, tmp_path / "old-bundle")
    (old / "profile.json").unlink()  # as bundles were written before profiles
    assert api.load_bundle(old).profile == {}
    shutil.copy(gray_bundle.parent.parent.parent.parent / "photo.png", tmp_path / "photo.png")
    result = predict(str(old), "photo.png", "--json", cwd=tmp_path, monkeypatch=monkeypatch)
    assert result.stderr == "" and "warnings" not in json.loads(result.stdout)
