"""``kiln evaluate`` of a classifier (tasks/classification_eval.py): the summary, the mistakes' sources."""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln import api
from torchkiln.components.classification_metrics import classification_metrics
from torchkiln.tasks.classification_eval import EvalResult, item_sources
from torchkiln.tasks.image_classification.data import SplitData


def summary(probs: list[list[float]], targets: list[int], classes: list[str]) -> list[str]:
    m = classification_metrics(torch.tensor(probs), torch.tensor(targets), classes)
    return EvalResult(m, Path("report.html"), Path("metrics.json"), "test").summary()


def test_an_auc_that_is_undefined_says_why_instead_of_nan() -> None:
    probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
    lines = summary(probs, [0, 1, 0, 1], ["cat", "dog", "fox"])  # no fox in the split
    assert "macro-AUC 1.0000" in lines[0]
    assert lines[1] == (
        "ROC AUC is undefined (null in metrics.json) for 'fox': 'fox' is absent from the test split. "
        "Macro-AUC averages the other classes."
    )
    lines = summary([[0.9, 0.1], [0.6, 0.4]], [0, 0], ["cat", "dog"])  # one class only
    assert "macro-AUC n/a " in lines[0] and "nan" not in lines[0]
    assert lines[1] == (
        "ROC AUC is undefined (null in metrics.json) for every class: 'dog' is absent from the test split."
    )
    assert summary([[0.9, 0.1], [0.2, 0.8]], [0, 1], ["cat", "dog"])[1].startswith("at the operating point")


def test_a_two_class_summary_gives_the_operating_point_with_wilson_intervals() -> None:
    probs = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7]]
    lines = summary(probs, [0, 0, 1, 1, 1], ["NORMAL", "PNEUMONIA"])
    # argmax: TP 2 (0.6, 0.7), FN 1 (0.3), TN 2; Wilson(2, 3) = [0.2077, 0.9385], Wilson(2, 2) = [0.3424, 1]
    assert lines[1] == (
        "at the operating point (argmax): sensitivity 0.667 [0.208, 0.939] (2/3), specificity 1.000 "
        "[0.342, 1.000] (2/2), PPV 1.000 [0.342, 1.000] (2/2), NPV 0.667 [0.208, 0.939] (2/3); Brier 0.1580; "
        "95% Wilson intervals"
    )
    assert len(lines) == 2
    # Multiclass summaries have no operating point.
    assert len(summary([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], [0, 1, 2], ["a", "b", "c"])) == 1


def noise_folder(root: Path, per_class: int = 12) -> Path:
    """3 classes of pure noise: no model tells them apart, so the evaluation has mistakes."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def test_evaluate_names_image_mistakes_by_their_files(tmp_path: Path, make_config) -> None:
    """Images read from files (here small enough to sit in memory) keep their paths for the report."""
    images = noise_folder(tmp_path / "images")
    run = api.train(api.load_config(make_config(images, tmp_path / "runs")))
    result = api.evaluate(run, split="test", out_dir=tmp_path / "eval")

    listed = json.loads(result.metrics_file.read_text())["mistakes"]
    wrong = result.metrics.num_samples - round(result.metrics.accuracy * result.metrics.num_samples)
    assert len(listed) == wrong > 0
    for w in listed:
        path = Path(w["source"])
        assert path.is_file() and path.parent.parent == images and path.parent.name == w["true"]
        assert w["predicted"] != w["true"] and 0 <= w["p_true"] <= w["confidence"] <= 1
    page = result.report.read_text()
    shown = re.findall(r'<span class="source">([^<]+)</span>', page)
    assert shown == [html.escape(w["source"]) for w in listed[: len(shown)]] and shown
    # The pixel baseline on the same test items, in metrics.json and on the page.
    base = json.loads(result.metrics_file.read_text())["baseline"]
    assert base["name"] == "logistic regression on the pixels" and base["resamples"] == 2000
    assert base["model_accuracy"] == pytest.approx(result.metrics.accuracy)
    assert base["verdict"] in ("better", "not clearly better", "not better")
    assert "<h2>Baseline</h2>" in page and html.escape(base["detail"]) in page
    assert result.summary()[-1].startswith("baseline (logistic regression on the pixels): accuracy ")


def test_a_text_run_is_put_beside_tf_idf_and_warned_when_below(
    tmp_path: Path, make_sentiment_csv, make_text_config, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_text_config(make_sentiment_csv(tmp_path / "reviews.csv", 160), tmp_path / "runs")
    cfg["train"] |= {"epochs": 1, "optimizer": {"lr": 1e-6}}  # an untrained network: at chance
    with caplog.at_level(logging.WARNING, logger="torchkiln.train"):
        run = api.train(api.load_config(cfg))
    meta = json.loads((run / "bundle" / "bundle.json").read_text())["baseline"]
    assert meta["name"] == "TF-IDF (1-2-grams) + logistic regression" and meta["below"] is True
    assert meta["val_accuracy"] > meta["model_val_accuracy"]
    (warning,) = [r.getMessage() for r in caplog.records if "linear baseline" in r.getMessage()]
    assert warning.startswith(
        f"The model's best val accuracy, {meta['model_val_accuracy']:.4f}, is below the "
    )
    assert warning.endswith("or a pretrained encoder (minilm).")

    result = api.evaluate(run, split="test", out_dir=tmp_path / "eval")
    base = json.loads(result.metrics_file.read_text())["baseline"]
    assert base["accuracy"] > base["model_accuracy"] and base["verdict"] == "not better"
    assert "the model does NOT beat the baseline" in result.summary()[-1]
    assert "<h2>Baseline</h2>" in result.report.read_text()

    off = api.evaluate(run, split="test", out_dir=tmp_path / "off", baseline=False)
    assert "baseline" not in json.loads(off.metrics_file.read_text())
    assert "<h2>Baseline</h2>" not in off.report.read_text()
    assert not any(line.startswith("baseline") for line in off.summary())


def test_evaluate_baseline_false_turns_it_off_in_training(tmp_path: Path, make_config) -> None:
    cfg = make_config(noise_folder(tmp_path / "images", per_class=6), tmp_path / "runs")
    cfg["evaluate"] = {"baseline": False}
    run = api.train(api.load_config(cfg))
    assert "baseline" not in json.loads((run / "bundle" / "bundle.json").read_text())
    result = api.evaluate(run, split="test", out_dir=tmp_path / "eval")
    assert "baseline" not in json.loads(result.metrics_file.read_text())


def test_items_without_a_file_are_named_by_their_place_in_the_split(tmp_path: Path) -> None:
    in_memory = SplitData(torch.tensor([0, 1]), images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    assert item_sources(in_memory, "test", "fashion-mnist")(1) == "test[1]"  # a catalog set
    files = SplitData(torch.tensor([0]), paths=(tmp_path / "a" / "0.png",))
    assert item_sources(files, "val", str(tmp_path))(0) == str(tmp_path / "a" / "0.png")
