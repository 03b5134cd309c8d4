"""The doctor's baseline check: what a linear baseline reaches on val, and the latest run beside it."""

from __future__ import annotations

import re
from pathlib import Path

from torchkiln import api

from ..conftest import tiny_text_config_dict, write_sentiment_csv
from .planted import clean_splits, examine, image_config, of, write_npz


def test_without_a_run_it_says_what_the_baseline_reaches(tmp_path: Path) -> None:
    raw = image_config(write_npz(tmp_path / "shapes.npz", clean_splits()), tmp_path)
    (finding,) = of(examine(raw), "baseline")
    assert finding.severity == "info"
    assert re.fullmatch(
        r"A linear baseline reaches \d\.\d{4} accuracy on val \(logistic regression on the pixels; fit on "
        r"120 train items, C=0\.1?0?1 chosen on val\): a network worth training must beat it\.",
        finding.message,
    ), finding.message
    assert of(examine(raw, cheap_only=True), "baseline") == []  # kiln train's quick pass leaves it out
    raw["evaluate"] = {"baseline": False}
    assert of(examine(raw), "baseline") == []


def test_a_latest_run_below_the_baseline_is_a_warning(tmp_path: Path) -> None:
    raw = tiny_text_config_dict(write_sentiment_csv(tmp_path / "reviews.csv", 160), tmp_path / "runs")
    raw["train"] |= {"epochs": 1, "optimizer": {"lr": 1e-6}}  # an untrained network: at chance
    run = api.train(api.load_config(raw))
    (finding,) = of(examine(raw), "baseline")
    assert finding.severity == "warning"
    assert f"; the latest run of this config ({run}) reached " in finding.message
    assert finding.message.endswith(", below it: the network does not beat a linear baseline.")
    assert finding.fix.startswith("Usual fixes: pretrained weights or embeddings")
