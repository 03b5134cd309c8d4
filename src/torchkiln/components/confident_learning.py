"""Confident learning (Northcutt, Jiang and Chuang, 2021): the labels out-of-sample predictions contradict.

Each class ``j`` gets a threshold ``t_j``: the mean probability of ``j`` over the items labelled ``j`` (the
model's self-confidence in that class). An item labelled ``y`` is a label issue when its probability of
``y`` is below ``t_y`` while some other class ``j`` reaches ``t_j``: it is confidently another class
(an off-diagonal entry of the confident joint). Issues are ranked by their margin, the probability of the
given label minus the largest other one, most negative first (cleanlab's "normalized margin" order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelIssues:
    """Items whose given label looks wrong, most confident first."""

    index: np.ndarray  # (M,) int64 item indices
    given: np.ndarray  # (M,) int64 their labels
    suggested: np.ndarray  # (M,) int64 the class they confidently are
    given_prob: np.ndarray  # (M,) float64 the probability of the given label
    suggested_prob: np.ndarray  # (M,) float64 the probability of the suggested class
    thresholds: np.ndarray  # (K,) float64 per-class self-confidence thresholds

    def __len__(self) -> int:
        return len(self.index)


def label_issues(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Find the items whose given label out-of-sample ``probs`` confidently contradict.

    Args:
        probs: ``(N, K)`` out-of-sample class probabilities (each item predicted by a model that did not
            train on it), rows summing to 1.
        labels: ``(N,)`` the given labels, 0..K-1.

    Returns:
        The issues, ranked by margin (given minus best other probability), lowest first. A class nobody
        carries gets the threshold 1, so it confidently claims nothing.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.95, 0.05]])
        >>> label_issues(probs, np.array([0, 0, 1, 1])).index.tolist()
        [3]
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(n), labels])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)  # (K,)
    given_prob = probs[np.arange(n), labels]
    confident = probs >= thresholds  # (N, K): confidently class j
    confident[np.arange(n), labels] = False
    # The confident joint's column: among the classes an item confidently is, the most probable one.
    suggested = np.where(confident, probs, -1.0).argmax(axis=1)
    issue = confident.any(axis=1) & (given_prob < thresholds[labels])
    others = probs.copy()
    others[np.arange(n), labels] = -1.0
    margin = given_prob - others.max(axis=1)
    index = np.flatnonzero(issue)
    index = index[np.argsort(margin[index], kind="stable")]
    return LabelIssues(
        index=index,
        given=labels[index],
        suggested=suggested[index],
        given_prob=given_prob[index],
        suggested_prob=probs[index, suggested[index]],
        thresholds=thresholds,
    )
