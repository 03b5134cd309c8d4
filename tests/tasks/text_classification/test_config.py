"""The text classifier's task section: an operating point chosen on val, as for images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from torchkiln import api, load_predictor
from torchkiln.core.errors import ConfigError


def test_a_text_classifier_answers_at_the_threshold_chosen_on_val(
    tmp_path: Path, make_sentiment_csv: Any, make_text_config: Any
) -> None:
    cfg = make_text_config(make_sentiment_csv(tmp_path / "reviews.csv", n=120), tmp_path / "runs")
    cfg["task"] = {"kind": "text-classification", "positive_class": "negative", "threshold": {"recall": 0.9}}
    cfg["train"]["epochs"] = 1
    run = api.train(api.load_config(cfg))

    found = json.loads((run / "bundle" / "bundle.json").read_text())["calibration"]["threshold"]
    assert found["positive_class"] == "negative" and found["target"] == "recall"
    assert found["met"] is True and found["recall"] >= 0.9
    predictor = load_predictor(run, device="cpu")
    t = predictor.bundle.config.task
    assert t.threshold.chosen == found["chosen"] and t.positive_class == "negative"
    texts = ["A wonderful, moving film.", "Dull and tedious, a messy plot.", "The cast", "It was a film."]
    answers = predictor.predict(texts, top_k=2)
    p_negative = predictor.forward(predictor.preprocess(texts)).softmax(dim=1)[
        :, 0
    ]  # classes: negative, positive
    expected = ["negative" if p >= t.threshold.chosen else "positive" for p in p_negative.tolist()]
    assert [a["label"] for a in answers] == expected
    assert all(
        a["operating_point"] == {"positive": "negative", "threshold": t.threshold.chosen} for a in answers
    )
    assert [a["score"] for a in answers] == pytest.approx(
        [p if lab == "negative" else 1 - p for p, lab in zip(p_negative.tolist(), expected, strict=True)]
    )
    assert torch.equal(
        predictor.output_signals(predictor.forward(predictor.preprocess(texts)))["predicted"],
        torch.tensor([0 if lab == "negative" else 1 for lab in expected]),
    )


def test_a_threshold_needs_a_two_class_text_set(tmp_path: Path, make_text_config: Any) -> None:
    rows = "review,sentiment\n" + "".join(f"text {i} {lab},{lab}\n" for i in range(30) for lab in "abc")
    (tmp_path / "three.csv").write_text(rows)
    cfg = make_text_config(tmp_path / "three.csv", tmp_path / "runs")
    cfg["task"] = {"kind": "text-classification", "threshold": {"recall": 0.9}}
    with pytest.raises(
        ConfigError, match=r"task\.threshold is for two-class tasks, but there are 3 classes \(a, b, c\)"
    ):
        api.train(api.load_config(cfg))
