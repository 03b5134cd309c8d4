"""A tiny, real text-classification run: a CSV of generated reviews and a config that trains in seconds.

Used by the task conformance suite (every registered task and model goes through it) and by anyone who
wants a working example to start from: written to YAML, the returned config is one ``kiln train`` runs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.core.config import quick_run

POSITIVE = ("great", "wonderful", "superb", "moving", "brilliant", "delightful", "charming", "gripping")
NEGATIVE = ("awful", "boring", "dull", "terrible", "clumsy", "tedious", "bland", "messy")
FILLER = ("the", "film", "story", "cast", "is", "was", "and", "a", "plot", "with", "its", "acting", "of")
ROWS = 40


def sentiment_rows(n: int = ROWS, *, seed: int = 0, max_filler: int = 9) -> list[tuple[str, str]]:
    """``n`` (text, label) pairs, alternating positive and negative: 2 to ``max_filler`` filler words
    plus 1-3 cue words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(2, max_filler + 1)))]
        for w in rng.choice(POSITIVE if label == "positive" else NEGATIVE, size=int(rng.integers(1, 4))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(w))
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


def write_reviews(path: Path, n: int = ROWS, *, seed: int = 0) -> Path:
    """Write ``path`` as a CSV with columns ``text`` and ``label`` (positive/negative) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(sentiment_rows(n, seed=seed))
    return path


def example_config(root: Path) -> dict[str, Any]:
    """Write a tiny review CSV under ``root`` and return a raw config that trains on it in seconds.

    Args:
        root: an existing or new folder; ``root/reviews.csv`` gets the texts, ``root/runs`` the runs.

    Returns:
        A raw config dict (validate it with :func:`torchkiln.tasks.base.validate`): a small BiLSTM with
        a 200-word WordPiece vocabulary, one epoch, batch size 16, a constant learning rate, on the CPU in
        fp32, tracking off.

    Example:
        >>> cfg = validate(example_config(tmp_path))
    """
    root = Path(root)
    reviews = write_reviews(root / "reviews.csv")
    return {
        "task": "text-classification",
        "data": {
            "path": str(reviews),
            "text_column": "text",
            "label_column": "label",
            "max_length": 24,
            "tokenizer": {"vocab_size": 200, "min_frequency": 1},
            "split": {"val": 0.15, "test": 0.15},
        },
        "model": {"name": "lstm", "args": {"embed_dim": 16, "hidden_size": 16}},
        **quick_run(str(root / "runs"), batch_size=16),
    }
