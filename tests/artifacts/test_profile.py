"""profile.json and reference.safetensors: the PCA projection, the summary table, and the files' checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchkiln.artifacts.profile import (
    REFERENCE_FILE,
    Reference,
    fit_projection,
    project,
    read_profile,
    read_reference,
    replace_reference,
    write_profile,
)
from torchkiln.components.profile import summary_table
from torchkiln.core.errors import BundleError


def test_pca_keeps_the_largest_directions_with_fixed_signs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [10.0, 3.0, 0.1]  # three directions of falling variance
    features = np.concatenate([x, np.zeros((200, 5))], axis=1)  # (N, 8)
    mean, comps, explained = fit_projection(features, 2)
    assert mean.shape == (8,) and comps.shape == (2, 8) and comps.dtype == np.float32
    np.testing.assert_allclose(np.abs(comps[:, :2]), np.eye(2), atol=0.05)
    assert (comps[np.arange(2), np.abs(comps).argmax(1)] > 0).all()  # the sign rule
    assert explained > 0.99
    again = fit_projection(-features, 2)[1]
    np.testing.assert_array_equal(again, comps)  # the data's sign does not flip the components
    emb = project(torch.from_numpy(features), mean, comps)
    assert emb.shape == (200, 2) and emb.dtype == torch.float32


def test_pca_stops_at_the_directions_the_sample_spans() -> None:
    features = np.random.default_rng(0).normal(size=(4, 50))  # 4 items span 3 directions around their mean
    assert fit_projection(features, 16)[1].shape == (3, 50)
    mean, comps, _ = fit_projection(features[:, :6], 16)  # 6 <= 16 features: kept as they are
    np.testing.assert_array_equal(comps, np.eye(6, dtype=np.float32))
    np.testing.assert_array_equal(mean, np.zeros(6, np.float32))


def test_summary_table_takes_the_numbers_every_summary_has() -> None:
    rows = [
        {"mean": 1.0, "channel_means": [1, 2], "truncated": True, "sha256": "ab", "bytes": 10},
        {"mean": 2.0, "channel_means": [3, 4], "truncated": False, "sha256": "cd"},
    ]
    columns, table = summary_table(rows)
    assert columns == ["mean", "channel_means[0]", "channel_means[1]", "truncated"]
    np.testing.assert_array_equal(table, [[1, 1, 2, 1], [2, 3, 4, 0]])
    columns, table = summary_table(rows[1:], ["mean", "bytes"])  # a reference's columns: NaN where missing
    assert columns == ["mean", "bytes"] and table[0, 0] == 2 and np.isnan(table[0, 1])
    assert summary_table([])[1].shape == (0, 0)


def reference() -> Reference:
    arrays = {
        "summary": np.ones((3, 2), np.float32),
        "predicted": np.arange(3, dtype=np.int64),
        "confidence": np.full(3, 0.5, np.float32),
        "embedding": np.zeros((3, 2), np.float32),
        "pca_mean": np.zeros(4, np.float32),
        "pca_components": np.eye(2, 4, dtype=np.float32),
        "index": np.arange(3, dtype=np.int64),
    }
    return Reference({"split": "val", "items": 3, "signals": ["predicted", "confidence"]}, arrays)


def test_a_reference_round_trips_and_keeps_the_other_sections(tmp_path: Path) -> None:
    write_profile(tmp_path, {"raw": {"texts": 3}}, None, weights_sha256="ab" * 32)
    assert not (tmp_path / REFERENCE_FILE).exists()
    replace_reference(tmp_path, reference(), weights_sha256="cd" * 32)
    profile = read_profile(tmp_path)
    assert profile["raw"] == {"texts": 3}
    meta = profile["reference"]
    assert meta["model_version"] == "cd" * 6 and meta["file"] == REFERENCE_FILE
    got = read_reference(tmp_path, meta)
    for name, a in reference().arrays.items():
        np.testing.assert_array_equal(got.arrays[name], a)
        assert got.arrays[name].dtype == a.dtype
    # Carried into a variant (kiln export): the model it was computed with stays the source's.
    variant = tmp_path / "variant"
    variant.mkdir()
    write_profile(variant, profile, got, weights_sha256="ef" * 32)
    assert read_profile(variant)["reference"] == meta


def test_a_changed_or_missing_reference_file_is_refused(tmp_path: Path) -> None:
    write_profile(tmp_path, {}, reference(), weights_sha256="ab" * 32)
    section = json.loads((tmp_path / "profile.json").read_text())["reference"]
    (tmp_path / REFERENCE_FILE).write_bytes(b"x")
    fix = f"rebuild it with: kiln monitor profile {tmp_path} --split val --overwrite"
    with pytest.raises(BundleError) as info:
        read_reference(tmp_path, section)
    assert str(info.value) == (
        f"Bundle '{tmp_path}': {REFERENCE_FILE} does not match the SHA-256 in profile.json (the file was "
        f"changed or truncated). Restore it, or {fix}"
    )
    (tmp_path / REFERENCE_FILE).unlink()
    with pytest.raises(BundleError) as info:
        read_reference(tmp_path, section)
    assert str(info.value) == (
        f"Bundle '{tmp_path}': profile.json describes a reference sample, but {REFERENCE_FILE} is missing. "
        f"Restore the file, or {fix}"
    )
