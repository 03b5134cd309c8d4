"""Leakage between splits and copies within train, images and texts: planted copies are found and counted,
the severity follows their share of the split, and clean data has none."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from torchkiln.doctor.duplicate_checks import leak_severity

from .planted import clean_splits, examine, image_config, of, write_npz


def test_copies_of_train_in_test_are_found_exact_and_near(tmp_path: Path) -> None:
    splits = clean_splits()
    train_x, _ = splits["train"]
    test_x, test_y = (a.copy() for a in splits["test"])
    test_x[:6] = train_x[:6]  # exact copies, with their labels: train items 0-5 are 'dot'
    test_x[6:10] = np.clip(train_x[6:10].astype(int) + 12, 0, 255)  # brighter copies
    test_y[:10] = 0
    splits["test"] = (test_x, test_y)
    report = examine(image_config(write_npz(tmp_path / "leak.npz", splits), tmp_path), cheap_only=True)
    (found,) = of(report, "duplicates")
    assert (found.severity, found.count) == ("warning", 10)
    assert found.message.startswith(
        "10 of 36 (28%) test images copy a train item (6 exact, 4 near), e.g. test #0 ~ train #0: they can "
    )
    assert found.items[:2] == ("test #0 ~ train #0", "test #1 ~ train #1")


def test_clean_splits_have_no_copies(tmp_path: Path) -> None:
    report = examine(
        image_config(write_npz(tmp_path / "clean.npz", clean_splits()), tmp_path), cheap_only=True
    )
    assert of(report, "duplicates") == of(report, "train-duplicates") == []


def test_copies_within_train_are_an_info_and_a_warning_when_their_labels_disagree(tmp_path: Path) -> None:
    splits = clean_splits()
    x, y = (a.copy() for a in splits["train"])
    x[50] = x[0]  # a copy of a 'dot' filed as 'hbar'
    x[51] = x[1]  # a copy of a 'dot' with its own label
    y[51] = 0
    splits["train"] = (x, y)
    report = examine(image_config(write_npz(tmp_path / "twice.npz", splits), tmp_path), cheap_only=True)
    found = of(report, "train-duplicates")
    assert [(f.severity, f.count) for f in found] == [("warning", 2), ("info", 4)]  # items, both ways
    assert found[0].items == ("train #0 ~ train #50", "train #50 ~ train #0")
    assert found[0].message.startswith(
        "2 train items have a copy with another label, e.g. train #0 ~ train #50"
    )


def test_a_few_copies_under_the_sampling_error_are_an_info() -> None:
    # 10,000 test items: the accuracy's sampling error is up to 0.5 points, 50 items.
    assert (leak_severity(50, 10_000), leak_severity(51, 10_000)) == ("info", "warning")
    assert (leak_severity(5, 100), leak_severity(6, 100)) == ("info", "warning")


def write_texts(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "split"])
        writer.writerows(rows)
    return path


def reviews(n: int, split: str, start: int = 0) -> list[tuple[str, str, str]]:
    return [
        (f"Review number {i} says it was {'good' if i % 2 else 'bad'}.", str(i % 2), split)
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize("planted", [True, False])
def test_texts_of_test_that_repeat_train_once_normalized(tmp_path: Path, planted: bool) -> None:
    rows = reviews(40, "train") + reviews(12, "val", 100) + reviews(12, "test", 200)
    if planted:
        rows[-1] = ("  REVIEW number 3 says it was GOOD!! ", "1", "test")  # train row 3, shouted
        rows[-2] = ("review number 4 says it was bad", "0", "test")
    data = write_texts(tmp_path / "reviews.csv", rows)
    raw = {
        "task": "text-classification",
        "data": {
            "path": str(data),
            "split_column": "split",
            "tokenizer": {"vocab_size": 60, "min_frequency": 1},
        },
        "model": {"name": "lstm", "args": {"embed_dim": 8, "hidden_size": 8}},
        "train": {"device": "cpu", "epochs": 1},
        "tracking": {"tensorboard": False, "mlflow": False},
        "seed": 0,
    }
    found = of(examine(raw, cheap_only=True), "duplicates")
    if not planted:
        assert found == []
        return
    (leak,) = found
    assert (leak.severity, leak.count) == ("warning", 2)
    assert leak.message.startswith(
        "2 of 12 (17%) test texts copy a train item (same text once case, spaces and punctuation are set "
        "aside), e.g. test row 64 ('review number 4 says it was bad') ~ train row 6"
    )
