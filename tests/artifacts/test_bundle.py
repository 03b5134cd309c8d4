"""The bundle's named modules, and bundles written before them (one unprefixed module) still loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.core.errors import BundleError
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


FIX = "Restore the file, or retrain (or re-export) to rewrite it."


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b"{not json",
            "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        (
            b"\xff\xfe garbage",
            "is not valid JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)",
        ),
        (b"[1, 2]", "holds an array, not a JSON object"),
        (b'"bundle"', "holds a string, not a JSON object"),
        (b"null", "holds null, not a JSON object"),
        (b"42", "holds a number, not a JSON object"),
    ],
    ids=["broken", "not-utf8", "array", "string", "null", "number"],
)
def test_a_garbage_bundle_json_is_a_bundle_error_naming_the_file(
    tiny_bundle: Path, tmp_path: Path, content: bytes, problem: str
) -> None:
    bad = Path(shutil.copytree(tiny_bundle, tmp_path / "bad"))
    (bad / "bundle.json").write_bytes(content)
    with pytest.raises(BundleError) as exc:
        load_bundle(bad)
    assert str(exc.value) == (
        f"Bundle '{bad}': bundle.json {problem}. Expected a JSON object with the bundle's format, version "
        f"and SHA-256s. {FIX}"
    )
