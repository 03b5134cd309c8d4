"""Confident learning: per-class thresholds, the flagged items, their order; nothing on clean labels."""

from __future__ import annotations

import numpy as np

from torchkiln.components.confident_learning import label_issues


def test_the_documented_example() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.95, 0.05]])
    issues = label_issues(probs, np.array([0, 0, 1, 1]))
    assert issues.index.tolist() == [3]
    assert np.allclose(issues.thresholds, [0.85, 0.475])  # the mean self-confidence of each class
    assert (issues.given.tolist(), issues.suggested.tolist()) == ([1], [0])


def noisy_probs(truth: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Out-of-sample-like probabilities: most mass on the true class, the rest spread."""
    logits = rng.normal(0, 0.5, (len(truth), k))
    logits[np.arange(len(truth)), truth] += 3.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_flipped_labels_are_flagged_most_certain_first() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    probs = noisy_probs(truth, 3, rng)
    labels = truth.copy()
    flipped = rng.choice(300, 15, replace=False)
    labels[flipped] = (truth[flipped] + 1) % 3
    issues = label_issues(probs, labels)
    # Every flag is a flipped label; a flipped item is missed when its true class's probability falls
    # below that class's mean self-confidence (3 of the 15 here).
    assert set(issues.index.tolist()) <= set(flipped.tolist())
    assert len(issues) == 12
    assert (issues.suggested == truth[issues.index]).all()
    margin = issues.given_prob - issues.suggested_prob
    assert (np.diff(margin) >= 0).all()  # the most negative margin first


def test_clean_labels_flag_nothing_and_an_empty_class_claims_nothing() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 200)
    probs = np.zeros((200, 3))
    probs[:, :2] = noisy_probs(truth, 2, rng)  # class 2 exists, but no item is labelled with it
    issues = label_issues(probs, truth)
    assert len(issues) == 0
    assert issues.thresholds[2] == 1.0
