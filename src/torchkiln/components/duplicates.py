"""Duplicates within and between sets: images (exact and near), texts (normalized) and series windows.

Near-duplicate images are pairs whose standardized 32x32 thumbnails (:mod:`~torchkiln.components.image_scan`)
differ by at most ``delta`` RMS: the same picture resized, re-encoded, brightened or given more contrast.
The search is exact and not quadratic: every orthonormal projection shortens distances, so two thumbnails
within ``delta`` have their low DCT coefficients within ``32 * delta`` too. A k-d tree over the ten most
varied coefficients finds those candidates, the 64 coefficients prune them, and the thumbnails decide.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from torchkiln.components.image_scan import THUMB, ImageScan

NEAR = 0.05  # RMS of the standardized thumbnails' difference: a correlation of at least 0.99875
TREE_DIMS = 10  # coefficients in the k-d tree: more prunes better, fewer queries faster
NEIGHBORS = 8  # candidates taken per query before a full range query


@dataclass(frozen=True)
class Matches:
    """For each query item, one item of the reference set it duplicates (-1: none) and how."""

    index: np.ndarray  # (Q,) int64 into the reference set, -1 without a match
    exact: np.ndarray  # (Q,) bool: pixel for pixel the same image

    @property
    def found(self) -> np.ndarray:
        return np.flatnonzero(self.index >= 0)


def image_matches(query: ImageScan, ref: ImageScan | None = None, *, delta: float = NEAR) -> Matches:
    """Each query image's duplicate in ``ref``: an identical one if there is one, else a near one.

    Without ``ref`` the query set is searched against itself (an item never matches itself, only another
    copy of it). Flat images (no contrast) match only exactly.

    Example:
        >>> m = image_matches(scan_images(ArrayImages(test)), scan_images(ArrayImages(train)))
        >>> len(m.found), int(m.exact.sum())
    """
    same = ref is None
    ref = query if ref is None else ref
    index = np.full(len(query), -1, dtype=np.int64)
    near = _near(query, ref, delta=delta, same=same)
    index[near[0]] = near[1]
    exact = _exact(query.digest, ref.digest, same=same)
    hit = exact >= 0
    index[hit] = exact[hit]
    return Matches(index, hit)


def _exact(query: np.ndarray, ref: np.ndarray, *, same: bool) -> np.ndarray:
    """For each query digest, an index in ``ref`` with the same digest (another one when ``same``), or -1."""
    out = np.full(len(query), -1, dtype=np.int64)
    if not len(query) or not len(ref):
        return out
    order = np.argsort(ref, kind="stable")
    first = np.searchsorted(ref[order], query, "left")
    last = np.searchsorted(ref[order], query, "right")
    n = last - first
    if same:  # the first copy that is not the item itself
        own = np.arange(len(query))
        pick = np.where(order[np.minimum(first, len(ref) - 1)] == own, first + 1, first)
        ok = n >= 2
    else:
        pick, ok = first, n >= 1
    out[ok] = order[pick[ok]]
    return out


def _near(query: ImageScan, ref: ImageScan, *, delta: float, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, a matching ref index each) for every near duplicate; flat images take no part."""
    from scipy.spatial import cKDTree

    qi, ri = np.flatnonzero(~query.flat), np.flatnonzero(~ref.flat)
    if not len(qi) or not len(ri):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    radius = THUMB * delta  # a thumbnail distance of delta RMS is THUMB * delta in L2 (1024 pixels)
    spread = np.concatenate([query.coef[qi], ref.coef[ri]]).var(axis=0)
    dims = np.argsort(-spread)[:TREE_DIMS]
    tree = cKDTree(ref.coef[ri][:, dims])
    points = query.coef[qi][:, dims]
    k = min(NEIGHBORS + int(same), len(ri))
    dist, idx = tree.query(points, k=k, distance_upper_bound=radius)
    dist, idx = dist.reshape(len(qi), k), idx.reshape(len(qi), k)
    rows, cols = np.nonzero(np.isfinite(dist))
    pairs = [(rows, idx[rows, cols])]
    crowded = np.flatnonzero(np.isfinite(dist[:, -1]))  # k candidates within reach: there may be more
    if len(crowded):
        found = tree.query_ball_point(points[crowded], radius)  # an object array of index lists
        sizes = np.array([len(f) for f in found], dtype=np.int64)
        pairs.append((np.repeat(crowded, sizes), np.concatenate([np.asarray(f, np.int64) for f in found])))
    q = np.concatenate([p[0] for p in pairs])
    r = np.concatenate([p[1] for p in pairs])
    q, r = qi[q], ri[r]
    if same:
        keep = q != r
        q, r = q[keep], r[keep]
    keep = np.square(query.coef[q] - ref.coef[r]).sum(axis=1) <= radius**2  # the 64 coefficients' bound
    q, r = q[keep], r[keep]
    d = np.sqrt(np.square(query.thumbs[q].astype(np.float32) - ref.thumbs[r].astype(np.float32)).mean(axis=1))
    keep = d <= delta
    q, r, d = q[keep], r[keep], d[keep]
    order = np.lexsort((d, q))  # per query item, its closest match first
    q, r = q[order], r[order]
    first = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
    return q[first], r[first]


def normalize_text(text: str) -> str:
    """A text as duplicates are compared: Unicode-normalized, case-folded, punctuation dropped, spaces joined.

    Example:
        >>> normalize_text("  ...A Pretentious   MESS!") == normalize_text("a pretentious mess")
        True
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def text_matches(query: Sequence[str], ref: Sequence[str] | None = None) -> np.ndarray:
    """For each query text, the index of a text of ``ref`` that normalizes the same (-1: none).

    Without ``ref`` the query texts are searched against each other: each copy after the first points at
    the first. Empty texts (after normalizing) match nothing.

    Example:
        >>> text_matches(["Great film!", "dull"], ["great film", "fine"]).tolist()
        [0, -1]
    """
    keys = [normalize_text(t) for t in query]
    if ref is None:
        seen: dict[str, int] = {}
        out = []
        for i, key in enumerate(keys):
            out.append(seen.get(key, -1) if key else -1)
            seen.setdefault(key, i)
        return np.array(out, dtype=np.int64)
    first: dict[str, int] = {}
    for i, t in enumerate(ref):
        first.setdefault(normalize_text(t), i)
    return np.array([first.get(key, -1) if key else -1 for key in keys], dtype=np.int64)


def repeated_windows(
    values: np.ndarray, source: tuple[int, int], target: tuple[int, int], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``length`` rows inside ``target`` that repeat, value for value, a window inside ``source``.

    A copied stretch of a series (a year pasted twice) puts known answers in the test windows. Constant
    windows are left out: a series that rests at zero repeats itself without any copying.

    Args:
        values: ``(T, C)`` the series.
        source, target: ``[start, end)`` row ranges (train, and the val or test targets).
        length: rows per window (the horizon).

    Returns:
        (start rows in ``target``, the start row of an equal window in ``source`` for each).

    Example:
        >>> repeated_windows(np.array([[1.], [2.], [3.], [1.], [2.]]), (0, 3), (3, 5), 2)
        (array([3]), array([0]))
    """

    def windows(lo: int, hi: int) -> tuple[np.ndarray, list[bytes]]:
        starts = np.arange(lo, hi - length + 1)
        rows = [np.round(values[s : s + length], 9) for s in starts]
        keep = [i for i, w in enumerate(rows) if np.ptp(w, axis=0).max() > 0]
        return starts[keep], [rows[i].tobytes() for i in keep]

    src_starts, src_keys = windows(*source)
    first: dict[bytes, int] = {}
    for s, key in zip(src_starts.tolist(), src_keys, strict=True):
        first.setdefault(key, s)
    starts, keys = windows(*target)
    hits = [(s, first[k]) for s, k in zip(starts.tolist(), keys, strict=True) if k in first]
    return np.array([h[0] for h in hits], dtype=np.int64), np.array([h[1] for h in hits], dtype=np.int64)
