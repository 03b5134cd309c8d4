"""Stratified, seeded splits: same seed, same split; class balance kept; tiny classes still train."""

from __future__ import annotations

import numpy as np
import pytest

from torchkiln.components.splits import carve_val, limit_per_class, stratified_split
from torchkiln.core.errors import DataError


def counts(labels: np.ndarray, splits: np.ndarray, cls: int) -> dict[str, int]:
    return {s: int(((labels == cls) & (splits == s)).sum()) for s in ("train", "val", "test")}


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = np.repeat(np.arange(3), 20)
    a = stratified_split(labels, val=0.1, test=0.2, seed=0)
    b = stratified_split(labels, val=0.1, test=0.2, seed=0)
    c = stratified_split(labels, val=0.1, test=0.2, seed=1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.dtype.kind == "U" and set(a) == {"train", "val", "test"}


def test_every_class_keeps_its_share() -> None:
    labels = np.repeat(np.arange(3), [20, 40, 10])
    splits = stratified_split(labels, val=0.1, test=0.2, seed=0)
    assert counts(labels, splits, 0) == {"train": 14, "val": 2, "test": 4}
    assert counts(labels, splits, 1) == {"train": 28, "val": 4, "test": 8}
    assert counts(labels, splits, 2) == {"train": 7, "val": 1, "test": 2}


def test_a_class_split_does_not_depend_on_where_other_classes_sit() -> None:
    grouped = np.array([0] * 10 + [1] * 10)
    interleaved = np.array([0, 1] * 10)
    a = stratified_split(grouped, val=0.2, test=0.2, seed=5)
    b = stratified_split(interleaved, val=0.2, test=0.2, seed=5)
    for cls in (0, 1):
        # The k-th item of a class lands in the same split in both orders.
        np.testing.assert_array_equal(a[grouped == cls], b[interleaved == cls])


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize(("val", "test"), [(0.1, 0.1), (0.4, 0.4), (0.0, 0.5), (0.5, 0.0)])
def test_tiny_classes_keep_a_training_item(size: int, val: float, test: float) -> None:
    labels = np.array([0] * size + [1] * 30)
    splits = stratified_split(labels, val=val, test=test, seed=0)
    assert counts(labels, splits, 0)["train"] >= 1
    assert sum(counts(labels, splits, 0).values()) == size


def test_carve_val_moves_a_stratified_share_of_train_only() -> None:
    labels = np.repeat(np.arange(2), 20)
    given = np.array((["train"] * 15 + ["test"] * 5) * 2)
    out = carve_val(labels, given, val=0.2, seed=0)
    np.testing.assert_array_equal(out[given == "test"], "test")  # test items never move
    for cls in (0, 1):
        assert counts(labels, out, cls) == {"train": 12, "val": 3, "test": 5}
    np.testing.assert_array_equal(out, carve_val(labels, given, val=0.2, seed=0))


def test_limit_per_class_caps_train_and_keeps_val_and_test() -> None:
    labels = np.repeat(np.arange(2), [10, 3])
    splits = np.array(["train"] * 8 + ["val", "test"] + ["train"] * 3)
    keep = limit_per_class(labels, splits, limit=4, seed=0)
    assert keep[(labels == 0) & (splits == "train")].sum() == 4
    assert keep[(labels == 1) & (splits == "train")].sum() == 3  # fewer than the limit: all kept
    assert keep[splits != "train"].all()
    np.testing.assert_array_equal(keep, limit_per_class(labels, splits, limit=4, seed=0))


def test_class_weights_auto_balances_the_classes_and_a_list_needs_one_per_class() -> None:
    from torchkiln.components.splits import resolve_class_weights

    labels = np.array([0, 1, 1, 1, 2, 2])  # counts 1, 3, 2 of 6
    assert resolve_class_weights("auto", ["a", "b", "c"], labels) == [2.0, 0.666667, 1.0]
    assert resolve_class_weights([1, 5, 1], ["a", "b", "c"], labels) == [1.0, 5.0, 1.0]
    assert resolve_class_weights(None, ["a", "b", "c"], labels) is None
    with pytest.raises(DataError) as info:
        resolve_class_weights([1.0, 2.0], ["a", "b", "c"], labels)
    assert str(info.value) == (
        "train.class_weights has 2 value(s); the data has 3 classes (a, b, c). Give one weight per class, in "
        "that order, or use auto."
    )
