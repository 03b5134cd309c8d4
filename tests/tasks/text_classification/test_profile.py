"""The text check: only a text far longer than every training text is flagged."""

from __future__ import annotations

from torchkiln.tasks.base import InputWarning, get_task


def test_only_a_text_over_twice_the_longest_training_text_is_far() -> None:
    task = get_task("text-classification")
    profile = {"texts": 3, "words": {"min": 2, "p05": 2, "p50": 5, "p95": 9, "max": 10}}
    assert task.input_warnings(profile, "great") == []  # short queries are ordinary
    assert task.input_warnings(profile, " ".join(["word"] * 20)) == []
    assert task.input_warnings(profile, " ".join(["word"] * 21)) == [
        InputWarning("length", "21 words, trained on 2-10")
    ]
