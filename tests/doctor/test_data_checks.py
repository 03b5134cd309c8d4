"""Class balance and sizes, normalization and exposure: each on data with the problem and on clean data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .planted import clean_splits, drawn, examine, image_config, of, serious, write_npz


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("clean") / "shapes.npz", clean_splits())


def test_clean_data_raises_no_warning(clean: Path) -> None:
    assert serious(examine(image_config(clean, clean.parent, seed=0))) == []


def imbalanced(root: Path) -> Path:
    splits = clean_splits()
    splits["train"] = drawn((60, 60, 12), seed=9)  # 'vbar' has 5 times fewer
    return write_npz(root / "imbalanced.npz", splits)


def test_an_imbalanced_train_split_is_a_warning_until_the_config_evens_it_out(tmp_path: Path) -> None:
    data = imbalanced(tmp_path)
    (found,) = of(examine(image_config(data, tmp_path), cheap_only=True), "class-balance")
    assert found.severity == "warning"
    assert found.message == (
        "train is imbalanced: 'dot' has 60 items, 'vbar' 12 (5.0 to 1): a model leans to the large class, "
        "and accuracy hides it."
    )
    weighted = image_config(data, tmp_path, train={"class_weights": "auto"})
    (found,) = of(examine(weighted, cheap_only=True), "class-balance")
    assert found.severity == "info" and found.message.endswith("; train.class_weights evens it out.")
    both = image_config(data, tmp_path, train={"class_weights": "auto"}, data={"sampler": "balanced"})
    found = of(examine(both, cheap_only=True), "class-balance")
    assert [f.severity for f in found] == ["warning", "info"]  # worst first
    assert found[0].message.startswith("train.class_weights and data.sampler: balanced both even out")


def test_classes_too_small_to_learn_or_to_measure(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["train"] = drawn((40, 40, 6), seed=3)
    splits["test"] = drawn((12, 3, 12), seed=4)
    data = write_npz(tmp_path / "thin.npz", splits)
    found = of(examine(image_config(data, tmp_path), cheap_only=True), "class-balance")
    thin = [f for f in found if f.message.startswith(("train:", "test:"))]
    assert [(f.severity, f.message.split(",")[0]) for f in thin] == [
        ("warning", "train: 1 class under 10 items ('vbar' 6)"),
        ("warning", "test: 1 class under 10 items ('hbar' 3)"),
    ]
    assert thin[1].message.endswith("moves its recall in steps of 100/n points.")


def test_normalization_on_the_wrong_scale_is_a_warning(clean: Path) -> None:
    wrong = image_config(clean, clean.parent, data={"mean": [73.0], "std": [90.0]})
    (found,) = of(examine(wrong, cheap_only=True), "normalization")
    assert found.severity == "warning"
    assert found.message.startswith(
        "The normalization of data.mean / data.std in the config (mean [73], std [90])"
    )
    assert "The config's look like the 0..255 scale" in found.message
    near = image_config(clean, clean.parent, data={"mean": [0.3], "std": [0.3]})
    assert of(examine(near, cheap_only=True), "normalization") == []


def test_constant_blown_out_and_black_images_are_warnings(tmp_path: Path) -> None:
    splits = clean_splits()
    x, y = splits["train"]
    x = x.copy()
    x[[0, 1]] = 128  # constant
    x[2] = 255
    x[2, 0, 0] = 0  # blown out: all white but one pixel
    x[3] = np.random.default_rng(0).integers(0, 10, x[3].shape)  # black: nothing above 10
    splits["train"] = (x, y)
    data = write_npz(tmp_path / "exposure.npz", splits)
    found = of(examine(image_config(data, tmp_path), cheap_only=True), "image-exposure")
    assert [(f.count, f.message.split(",")[0]) for f in found] == [
        (2, "train: 2 of 120 (1.7%) images are constant (a single grey level)"),
        (1, "train: 1 of 120 (0.83%) images are blown out (at least 90% of their pixels full white)"),
        (1, "train: 1 of 120 (0.83%) images are black (no pixel above 16 of 255)"),
    ]
    assert found[0].items == ("#0", "#1")
