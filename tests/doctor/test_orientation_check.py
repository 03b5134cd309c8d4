"""The orientation check: flips (and far rotations) in data.augment on digit or character data are a
warning; the same flips on other classes, or digits without them, are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .planted import clean_splits, examine, image_config, of, write_npz


def npz_with(path: Path, classes: tuple[str, ...]) -> Path:
    """The planted shapes under other class names (the check reads names, never pixels)."""
    arrays = dict(np.load(write_npz(path, clean_splits((20, 17, 4)))))
    arrays["classes"] = np.array(classes)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orientation")


def findings(path: Path, *augment: dict) -> list:
    cfg = image_config(path, path.parent, seed=0, data={"augment": list(augment)})
    return of(examine(cfg, cheap_only=True), "orientation")


def test_a_flip_on_digit_classes_is_a_warning_with_the_fix(root: Path) -> None:
    (found,) = findings(npz_with(root / "d.npz", ("0", "1", "2")), {"name": "horizontal_flip"})
    assert found.severity == "warning"
    assert found.message == (
        "data.augment has horizontal_flip (p=0.5), but its classes are digits or characters ('0', '1', '2'): "
        "the images' orientation is the label (a mirrored '2' or 'b' is not a '2' or a 'b', a '6' "
        "turned over is a '9'), so training would learn from images whose label is wrong."
    )
    assert found.fix == (
        "Remove the flips from data.augment and keep rotations to 45 degrees or less (translate or "
        "random_crop keep the label); flips suit data whose mirror image is the same class, such as clothes "
        "or photos."
    )


def test_digit_words_and_a_far_rotation_are_flagged_a_small_one_is_not(root: Path) -> None:
    path = npz_with(root / "w.npz", ("zero", "One", "b"))
    (found,) = findings(path, {"name": "vertical_flip", "p": 0.2}, {"name": "rotation", "degrees": 90})
    assert found.message.startswith(
        "data.augment has vertical_flip (p=0.2), rotation (up to 90 degrees), but its classes are digits or "
        "characters ('zero', 'One', 'b'):"
    )
    assert findings(path, {"name": "rotation", "degrees": 15}, {"name": "translate"}) == []


def test_clothes_with_a_flip_and_digits_without_one_are_not_flagged(root: Path) -> None:
    clothes = npz_with(root / "c.npz", ("T-shirt/top", "Trouser", "Bag"))
    assert findings(clothes, {"name": "horizontal_flip"}) == []
    digits = npz_with(root / "n.npz", ("7", "8", "9"))
    assert findings(digits, {"name": "random_crop", "padding": 2}) == []
    assert findings(digits, {"name": "horizontal_flip", "p": 0.0}) == []


def test_a_digit_data_set_is_known_by_its_name(root: Path) -> None:
    path = npz_with(root / "mnist.npz", ("dot", "hbar", "vbar"))
    (found,) = findings(path, {"name": "horizontal_flip", "p": 1.0})
    assert "but the data is 'mnist', a digit or character data set:" in found.message
