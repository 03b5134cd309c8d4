"""Stratified, seeded splits: same seed, same split; class balance kept; tiny classes still train; patients
kept whole; a given val too small to judge by is carved again."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from torchkiln.components.splits import (
    carve_val,
    group_ids,
    limit_per_class,
    make_splits,
    shared_groups,
    stratified_group_split,
    stratified_split,
    unused_fractions,
    val_too_small,
)
from torchkiln.core.config import SplitConfig
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


# --- patient-level (group) splits -------------------------------------------------------------------
def patients(n: int = 80, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patients with 1 to 5 images each; a third have pneumonia (label 1) on all their images."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n)
    labels = np.repeat((np.arange(n) % 3 == 0).astype(np.int64), sizes)
    groups = np.repeat([f"person{i}" for i in range(n)], sizes)
    return labels, groups


def splits_of_each_group(groups: np.ndarray, splits: np.ndarray) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        out.setdefault(str(g), set()).add(str(s))
    return out


def test_group_split_keeps_each_patient_in_one_split_and_the_class_shares() -> None:
    labels, groups = patients()
    splits = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0)
    assert all(len(s) == 1 for s in splits_of_each_group(groups, splits).values())
    for cls in (0, 1):
        n = (labels == cls).sum()
        shares = {s: c / n for s, c in counts(labels, splits, cls).items()}
        assert shares["train"] == pytest.approx(0.7, abs=0.05), shares
        assert shares["val"] == pytest.approx(0.15, abs=0.05) and shares["test"] == pytest.approx(
            0.15, abs=0.05
        )


def test_group_split_is_deterministic_and_independent_of_item_order() -> None:
    labels, groups = patients()
    a = stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0)
    np.testing.assert_array_equal(a, stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0))
    assert (a != stratified_group_split(labels, groups, val=0.15, test=0.15, seed=1)).any()
    order = np.random.default_rng(3).permutation(len(labels))
    shuffled = stratified_group_split(labels[order], groups[order], val=0.15, test=0.15, seed=0)
    np.testing.assert_array_equal(shuffled, a[order])


def test_group_split_without_val_or_test_uses_no_such_split() -> None:
    labels, groups = patients(30)
    splits = stratified_group_split(labels, groups, val=0.0, test=0.2, seed=0)
    assert set(splits) == {"train", "test"}
    assert set(stratified_group_split(labels, groups, val=0.0, test=0.0, seed=0)) == {"train"}


def test_carve_val_by_group_moves_whole_patients_out_of_train() -> None:
    labels, groups = patients()
    given = np.where(np.char.endswith(groups.astype(str), "7"), "test", "train")
    out = carve_val(labels, given, val=0.2, seed=0, groups=groups)
    np.testing.assert_array_equal(out[given == "test"], "test")
    assert all(len(s) == 1 for s in splits_of_each_group(groups, out).values())
    assert 0.15 < (out == "val").sum() / (given == "train").sum() < 0.25


def test_group_ids_take_the_first_group_of_the_pattern() -> None:
    names = [
        "person1_bacteria_1.jpeg",
        "person1_virus_6.jpeg",
        "IM-0115-0001.jpeg",
        "NORMAL2-IM-0552-0001.jpeg",
    ]
    np.testing.assert_array_equal(
        group_ids(names, r"(person\d+|IM-\d+)", where="Data 'x'"),
        ["person1", "person1", "IM-0115", "IM-0552"],
    )
    with pytest.raises(DataError) as err:
        group_ids(["person1_virus_6.jpeg", "scan.png"], r"(person\d+)", where="Data 'x'")
    assert str(err.value) == (
        "Data 'x': data.group_pattern '(person\\d+)' finds no group in the file name 'scan.png' (1 of 2 "
        "names); expected its first group to capture the patient id in every file name. Fix: widen the "
        "pattern (Kaggle's chest_xray: '(person\\d+|IM-\\d+)'), or give a CSV manifest with a "
        "data.group_column."
    )


def test_a_patient_in_two_given_splits_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    splits = np.array(["train", "train", "test", "test", "val", "train"])
    groups = np.array(["p2", "p1", "p2", "p3", "p1", "p4"])
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        message = shared_groups(splits, groups, where="Data 'x'")
    assert message == (
        "Data 'x': 2 group(s) (patients) have items in more than one of the data's own splits, e.g. 'p1' in "
        "train and val; a model scored on patients it trained on looks better than it is on new ones. Fix: "
        "move each patient's files into one split, or give the data without splits (one folder per class, "
        "or a manifest without a split column) so that each patient is assigned to one split."
    )
    assert caplog.messages == [message]
    assert shared_groups(splits, np.array(["a", "b", "c", "c", "d", "e"]), where="Data 'x'") is None


# --- a given val split too small to judge by ------------------------------------------------------
def section(**split: float) -> SimpleNamespace:
    return SimpleNamespace(split=SplitConfig(**split), classes=None, limit_per_class=None)


def kaggle_like(n_train: int = 400, n_val: int = 16, n_test: int = 100) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([0, 1, 1] * ((n_train + n_val + n_test) // 3 + 1))[: n_train + n_val + n_test]
    given = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    return labels, given


def test_a_small_given_val_is_merged_into_train_and_carved_again(caplog: pytest.LogCaptureFixture) -> None:
    labels, given = kaggle_like()
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        splits = make_splits(section(), labels, given, seed=0, where="Data 'chest_xray'")
    assert caplog.messages == [
        "Data 'chest_xray': the given val split has 16 items, fewer than data.split.min_val (50): too few to "
        "choose a model or a decision threshold on. It is merged into train and a stratified val of 42 items "
        "(data.split.val 0.1 of train) is carved from it instead. Set data.split.min_val: 0 to keep the "
        "given val split."
    ]
    np.testing.assert_array_equal(splits[given == "test"], "test")
    assert (splits == "val").sum() == 42 and (splits == "train").sum() == 374
    for cls in (0, 1):  # stratified: val holds about a tenth of each class of train + the old val
        in_pool = given != "test"
        assert (splits[in_pool & (labels == cls)] == "val").mean() == pytest.approx(0.1, abs=0.01)
    np.testing.assert_array_equal(splits, make_splits(section(), labels, given, seed=0))


def test_min_val_zero_or_a_big_enough_val_keeps_the_given_split(caplog: pytest.LogCaptureFixture) -> None:
    labels, given = kaggle_like()
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        np.testing.assert_array_equal(make_splits(section(min_val=0), labels, given, seed=0), given)
        np.testing.assert_array_equal(make_splits(section(min_val=16), labels, given, seed=0), given)
        # 100 items in all: carving 10 % would give 10, no more than the 16 given; the val is kept.
        small_labels, small = kaggle_like(n_train=84, n_val=16, n_test=20)
        np.testing.assert_array_equal(make_splits(section(), small_labels, small, seed=0), small)
    assert caplog.messages == []


def test_val_too_small_rule() -> None:
    _, kaggle = kaggle_like(n_train=5216, n_val=16, n_test=624)
    assert val_too_small(kaggle, val=0.1, min_val=50)
    assert not val_too_small(kaggle, val=0.1, min_val=0)
    assert not val_too_small(kaggle, val=0.0, min_val=50)  # data.split.val 0: no val is wanted
    _, big = kaggle_like(n_train=5216, n_val=60, n_test=624)
    assert not val_too_small(big, val=0.1, min_val=50)


def test_make_splits_by_group_from_scratch_and_after_a_resplit() -> None:
    labels, groups = patients()
    splits = make_splits(section(val=0.15, test=0.15), labels, None, seed=0, groups=groups)
    np.testing.assert_array_equal(splits, stratified_group_split(labels, groups, val=0.15, test=0.15, seed=0))
    # A small given val (4 images of patients also in train) is re-split by patient.
    given = np.full(len(labels), "train", dtype=object)
    given[np.char.endswith(groups.astype(str), "9")] = "test"
    given[:4] = "val"
    splits = make_splits(section(), labels, given.astype(str), seed=0, groups=groups)
    assert all(len(s) == 1 for s in splits_of_each_group(groups, splits).values())


# --- data.split fractions that the data's own split leaves unused ------------------------------------
def test_fractions_the_data_split_overrides_are_named() -> None:
    given = np.array(["train"] * 60 + ["val"] * 60 + ["test"] * 20)
    assert unused_fractions(SplitConfig(), given, given) == []  # nothing written: nothing to say
    written = SplitConfig(val=0.2, test=0.3)
    assert unused_fractions(written, given, given) == ["data.split.val (0.2)", "data.split.test (0.3)"]
    carved = np.where(given == "val", "train", given)  # no val given: data.split.val carves one, so used
    assert unused_fractions(written, carved, carved) == ["data.split.test (0.3)"]
    assert unused_fractions(written, None, given) == []  # no split of its own: the fractions split it


def test_training_warns_which_split_wins(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0, 1] * 70)
    given = np.array(["train"] * 80 + ["val"] * 40 + ["test"] * 20)
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        make_splits(section(test=0.25), labels, given, seed=0, where="'reviews.csv'")  # evaluation: quiet
        assert caplog.messages == []
        make_splits(section(test=0.25), labels, given, seed=0, where="'reviews.csv'", explain=True)
    assert caplog.messages == [
        "'reviews.csv' brings its own split (a split column or train/val/test parts), which wins over "
        "data.split.test (0.25): it is not used. Remove data.split.test from data.split to silence this, or "
        "drop the data's own split to split by fraction."
    ]
