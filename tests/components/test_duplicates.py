"""Duplicate search: planted exact and near copies are found, unrelated images are not, the k-d tree search
equals a brute-force comparison (crowded clusters included); texts and series windows."""

from __future__ import annotations

import numpy as np

from torchkiln.components.doctor_data import ArrayImages
from torchkiln.components.duplicates import (
    NEAR,
    image_matches,
    normalize_text,
    repeated_windows,
    text_matches,
)
from torchkiln.components.image_scan import ImageScan, scan_images


def textures(n: int, *, seed: int, size: int = 24) -> np.ndarray:
    """``(n, 1, size, size)`` uint8: smooth random textures, no two alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (n, 1, size // 4, size // 4))  # room to brighten without clipping
    return np.kron(coarse, np.ones((1, 1, 4, 4))).clip(0, 255).astype(np.uint8)


def scan(images: np.ndarray) -> ImageScan:
    return scan_images(ArrayImages(images))


def test_exact_and_near_copies_are_found_and_nothing_else() -> None:
    ref = textures(300, seed=0)
    query = textures(40, seed=1)
    query[3] = ref[10]  # exact
    query[5] = ref[20]  # exact
    query[7] = np.clip(ref[30].astype(int) + 25, 0, 255)  # brighter
    query[9] = np.clip((ref[40].astype(int) - 128) * 1.2 + 128, 0, 255)  # more contrast
    noise = np.random.default_rng(2).integers(-3, 4, ref[50].shape)
    query[11] = np.clip(ref[50].astype(int) + noise, 0, 255)  # re-encoded: small noise
    m = image_matches(scan(query), scan(ref))
    assert m.found.tolist() == [3, 5, 7, 9, 11]
    assert m.index[m.found].tolist() == [10, 20, 30, 40, 50]
    assert m.exact[m.found].tolist() == [True, True, False, False, False]


def brute_force(query: ImageScan, ref: ImageScan, delta: float) -> set[int]:
    a = query.thumbs.astype(np.float32)
    b = ref.thumbs.astype(np.float32)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2))  # (Q, R)
    near = (d <= delta) & ~query.flat[:, None] & ~ref.flat[None, :]
    exact = query.digest[:, None] == ref.digest[None, :]
    return set(np.flatnonzero((near | exact).any(axis=1)).tolist())


def test_the_tree_search_finds_what_brute_force_finds_even_in_crowded_clusters() -> None:
    rng = np.random.default_rng(3)
    base = textures(6, seed=4)

    # 12 noisy copies of each of 6 textures on each side: every query has more than 8 candidates
    # within reach, so the full range query runs, and some copies fall just outside NEAR.
    def noisy(n: int) -> np.ndarray:
        copies = np.repeat(base, n, axis=0).astype(int) + rng.integers(-4, 5, (6 * n, 1, 24, 24))
        return np.clip(copies, 0, 255).astype(np.uint8)

    ref = np.concatenate([noisy(12), textures(100, seed=5)])
    query = np.concatenate([noisy(12), textures(50, seed=6)])
    q, r = scan(query), scan(ref)
    m = image_matches(q, r)
    assert set(m.found.tolist()) == brute_force(q, r, NEAR)
    assert 0 < len(m.found) < 72  # some in, some out: the test tells the two apart


def test_within_one_set_an_item_matches_another_copy_never_itself() -> None:
    images = textures(20, seed=7)
    images[15] = images[2]
    m = image_matches(scan(images))
    assert m.found.tolist() == [2, 15]
    assert m.index[[2, 15]].tolist() == [15, 2]
    assert m.exact[[2, 15]].all()


def test_flat_images_match_only_when_identical() -> None:
    images = np.zeros((3, 1, 16, 16), dtype=np.uint8)
    images[1] = 200  # flat too, but another grey: standardized it would equal the black one
    m = image_matches(scan(images[:1]), scan(images[1:2]))
    assert m.found.tolist() == []
    m = image_matches(scan(images[:1]), scan(images[2:]))
    assert m.found.tolist() == [0] and m.exact[0]


def test_texts_match_once_case_spaces_and_punctuation_are_set_aside() -> None:
    assert normalize_text("  ...A Pretentious   MESS!") == "a pretentious mess"
    found = text_matches(["Great film!", "dull", "???"], ["great   FILM", "fine", "!!!"])
    assert found.tolist() == [0, -1, -1]  # "???" normalizes to nothing: it matches nothing
    assert text_matches(["a b", "A, b.", "c", "a b"]).tolist() == [-1, 0, -1, 0]


def test_series_windows_that_repeat_train_value_for_value() -> None:
    rng = np.random.default_rng(8)
    values = rng.normal(size=(60, 1))
    values[50:56] = values[10:16]  # a stretch pasted into the test part
    values[40:46] = 0.0  # a flat stretch, and train rests at 0 too: not a copy
    values[0:6] = 0.0
    starts, sources = repeated_windows(values, (0, 30), (36, 60), 6)
    assert starts.tolist() == [50] and sources.tolist() == [10]
    clean = rng.normal(size=(60, 1))
    assert repeated_windows(clean, (0, 30), (36, 60), 6)[0].tolist() == []
