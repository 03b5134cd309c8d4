"""The linear baseline (TF-IDF or pixels + logistic regression), its cache, and the paired bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_f1_score

from torchkiln.components import classification_baseline as cb
from torchkiln.components.classification_baseline import (
    BaselineInputs,
    BaselineResult,
    Difference,
    compare,
    macro_f1,
    paired_bootstrap,
    run_baseline,
    sample_indices,
)
from torchkiln.core.errors import DataError

from ..conftest import sentiment_rows


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCHKILN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def text_split(n: int, seed: int) -> BaselineInputs:
    rows = sentiment_rows(n, seed=seed)
    labels = np.array([0 if label == "negative" else 1 for _, label in rows])
    return BaselineInputs([text for text, _ in rows], labels)


def test_paired_bootstrap_matches_the_hand_computed_distribution() -> None:
    # The model is right on items 1-3, the baseline on item 1 only: per-item gains (0, 1, 1, 0), mean 0.5.
    # A resample of 4 items has a mean gain of k/4 with k ~ Binomial(4, 1/2): P(k=0) = P(k=4) = 1/16 =
    # 0.0625 > 0.025, so the 2.5th percentile is 0, the 97.5th is 1, and P(gain <= 0) = 1/16.
    model = np.array([1, 1, 1, 0])
    base = np.array([1, 0, 0, 0])
    targets = np.array([1, 1, 1, 1])
    d = paired_bootstrap(model, base, targets, 2, resamples=40_000, seed=3)["accuracy"]
    assert d.value == 0.5
    assert (d.low, d.high) == (0.0, 1.0)
    assert d.p_not_better == pytest.approx(1 / 16, abs=0.004)


def test_paired_bootstrap_of_identical_classifiers_is_zero() -> None:
    preds = np.array([0, 1, 2, 1, 0, 2])
    targets = np.array([0, 1, 1, 1, 2, 2])
    for d in paired_bootstrap(preds, preds.copy(), targets, 3, resamples=200).values():
        assert (d.value, d.low, d.high, d.p_not_better) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_refuses_mismatched_lengths() -> None:
    with pytest.raises(DataError) as e:
        paired_bootstrap(np.array([0, 1]), np.array([0]), np.array([0, 1]), 2)
    assert str(e.value) == (
        "paired_bootstrap needs predictions of both classifiers for the same, non-empty items; got 2 model, "
        "1 baseline and 2 true labels."
    )


def test_macro_f1_is_torchmetrics_macro_f1() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 5):
        preds, targets = rng.integers(0, k, 300), rng.integers(0, k - 1, 300)  # class k-1 never true
        expected = multiclass_f1_score(torch.from_numpy(preds), torch.from_numpy(targets), k, average="macro")
        assert macro_f1(preds, targets, k)[0] == pytest.approx(float(expected), abs=1e-6)
    # Per resample: item counts as weights equal the repeated items.
    preds, targets = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    weights = np.array([[2, 0, 1, 1]])
    repeated = macro_f1(np.array([0, 0, 1, 2]), np.array([0, 0, 2, 2]), 3)
    assert macro_f1(preds, targets, 3, weights) == pytest.approx(repeated)


def test_sample_keeps_class_shares_and_order() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    keep = sample_indices(labels, 8, seed=1)
    assert len(keep) == 8 and (np.diff(keep) > 0).all()
    assert np.bincount(labels[keep]).tolist() == [6, 2]
    assert sample_indices(labels, 100).tolist() == list(range(40))


def test_text_baseline_learns_and_is_cached(own_cache: Path) -> None:
    train, val, test = text_split(200, 0), text_split(60, 1), text_split(60, 2)
    first = run_baseline("text", train, val, test, num_classes=2)
    assert first.name == "TF-IDF (1-2-grams) + logistic regression"
    assert first.c in cb.TEXT_C and first.val_accuracy is not None and first.train_items == 200
    assert first.probs.shape == (60, 2) and first.probs.dtype == np.float32
    assert (first.probs.argmax(1) == test.labels).mean() >= 0.9  # polarity words decide the label
    assert not first.cached and len(list(own_cache.glob("baselines/*.npy"))) == 1
    again = run_baseline("text", train, val, test, num_classes=2)
    assert again.cached and np.array_equal(again.probs, first.probs) and again.c == first.c
    other = run_baseline("text", train, val, text_split(60, 5), num_classes=2)  # other data, other key
    assert not other.cached and len(list(own_cache.glob("baselines/*.npy"))) == 2


def test_a_damaged_cache_entry_is_fit_again(own_cache: Path) -> None:
    train, val = text_split(80, 0), text_split(30, 1)
    run_baseline("text", train, val, val, num_classes=2)
    (meta,) = own_cache.glob("baselines/*.json")
    meta.write_text("{not json", encoding="utf-8")
    assert not run_baseline("text", train, val, val, num_classes=2).cached


def pixel_split(n: int, seed: int, shape: tuple[int, ...]) -> BaselineInputs:
    """Class 1 images are brighter in their left half: linearly separable pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 160, (n, *shape)).astype(np.uint8)
    half = shape[-1] // 2
    images[labels == 1, ..., :half] += 90
    return BaselineInputs(images, labels)


def test_pixel_baseline_on_small_and_large_images() -> None:
    small = [pixel_split(n, s, (1, 8, 8)) for n, s in ((120, 0), (40, 1), (40, 2))]
    r = run_baseline("pixels", *small, num_classes=3, cache=False)
    assert r.name == "logistic regression on the pixels" and r.c in cb.PIXEL_C
    assert r.probs.shape == (40, 3) and (r.probs[:, 2] == 0).all()  # a class train lacks gets p = 0
    assert (r.probs.argmax(1) == small[2].labels).mean() >= 0.95
    large = [pixel_split(n, s, (3, 40, 40)) for n, s in ((120, 0), (40, 1), (40, 2))]  # 4,800 values
    r = run_baseline("pixels", *large, num_classes=2, cache=False)
    assert r.name == "logistic regression on 2,048 random ReLU features of the 32x32-pooled pixels"
    assert (r.probs.argmax(1) == large[2].labels).mean() >= 0.9


def test_without_val_c_is_fixed_and_no_val_accuracy() -> None:
    train, test = text_split(80, 0), text_split(20, 1)
    r = run_baseline("text", train, None, test, num_classes=2, cache=False)
    assert (r.c, r.val_accuracy) == (1.0, None)
    assert r.describe() == "TF-IDF (1-2-grams) + logistic regression; fit on 80 train items, C=1 (no val)"


def test_one_class_in_train_is_refused() -> None:
    one = BaselineInputs(["good film"] * 5, np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError) as e:
        run_baseline("text", one, None, one, num_classes=2, cache=False)
    assert str(e.value) == (
        "The baseline needs at least two classes in the train split; it holds 1. Add items of the other "
        "classes, or set evaluate.baseline: false."
    )


def test_inputs_and_labels_must_pair() -> None:
    with pytest.raises(DataError) as e:
        BaselineInputs(["a", "b"], np.array([0]))
    assert str(e.value) == (
        "BaselineInputs got 2 items but 1 labels; expected one label per item. Pass the items and labels of "
        "the same split."
    )


def result(probs: np.ndarray) -> BaselineResult:
    return BaselineResult("a baseline", probs.astype(np.float32), 1.0, 0.5, 10, 0.1)


def test_compare_verdicts_and_lines() -> None:
    targets = np.array([0, 1] * 50)
    base = result(np.eye(2)[np.array([0, 0] * 50)])  # always class 0: accuracy 0.5
    better = compare(targets.copy(), targets, base, num_classes=2, resamples=500)
    assert better.verdict == "better" and better.accuracy == 0.5 and better.model_accuracy == 1.0
    assert better.line() == (
        "baseline (a baseline): accuracy 0.5000, macro-F1 0.3333; model +50.00 points "
        f"[{100 * better.accuracy_difference.low:+.2f}, {100 * better.accuracy_difference.high:+.2f}]: "
        "the model beats it."
    )
    worse = compare(np.ones(100, dtype=np.int64) - targets, targets, base, num_classes=2, resamples=500)
    assert worse.verdict == "not better"
    assert "the model does NOT beat the baseline. Usual fixes: pretrained weights" in worse.line()
    close = targets.copy()
    close[:2] = 1 - close[:2]  # 98 %
    base_close = result(np.eye(2)[np.where(np.arange(100) < 3, 1 - targets, targets)])  # 97 %
    unsure = compare(close, targets, base_close, num_classes=2, resamples=500)
    assert unsure.verdict == "not clearly better" and unsure.accuracy_difference.low <= 0
    d = unsure.to_dict()
    assert d["verdict"] == "not clearly better" and set(d["accuracy_difference"]) == set(
        Difference.__dataclass_fields__
    )
