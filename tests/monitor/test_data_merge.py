"""kiln retrain's data merge for texts (and that images still merge through the same dispatch): which rows
the challenger trains on, the fresh test set, the refusals, the hashes, and one retrain end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.components.text_table import read_text_table
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.monitor.data_merge import MergedData, feedback_items, merge, scan_source
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.logged import LoggedInput
from torchkiln.monitor.retrain import _challenger_config, retrain
from torchkiln.serve import registry
from torchkiln.tasks.base import get_task, load_config

from ..conftest import sentiment_rows

CLASSES = ["negative", "positive"]


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def manifest_rows(merged: MergedData) -> list[dict[str, str]]:
    with merged.manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def text_cfg(tmp_path: Path, make_sentiment_csv: Any, make_text_config: Any) -> RunConfig:
    """The tiny text config (columns review, sentiment) on 60 generated reviews."""
    csv_path = make_sentiment_csv(tmp_path / "orig" / "reviews.csv", 60)
    return load_config(make_text_config(csv_path, tmp_path / "runs"))


def new_texts(path: Path, n: int = 40, *, header: tuple[str, str] = ("text", "label"), seed: int = 5) -> Path:
    return write_csv(path, list(header), sentiment_rows(n, seed=seed))


@pytest.mark.parametrize("header", [("review", "sentiment"), ("text", "label")])
def test_text_merge_keeps_the_original_train_and_val_and_holds_out_new_texts_as_the_fresh_test_set(
    text_cfg: RunConfig, tmp_path: Path, header: tuple[str, str]
) -> None:
    new = new_texts(tmp_path / "new.csv", header=header)  # the config's own columns, or text,label
    merged = merge(text_cfg, {"new.csv": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)

    rows = manifest_rows(merged)
    assert list(rows[0]) == ["text", "label", "split"]
    _, data = get_task("text-classification").prepare(text_cfg)  # the split the champion trained on
    kept = Counter((t, s) for s in ("train", "val") for t in data.splits[s].texts)
    n_orig = sum(kept.values())
    assert Counter((r["text"], r["split"]) for r in rows[:n_orig]) == kept  # original test texts left out
    assert merged.counts["original"] == {s: len(data.splits[s].texts) for s in ("train", "val", "test")}
    # 20 per class: 30 % (6) fresh test, 10 % (2) val, the rest train.
    assert merged.counts["new.csv"] == {"train": 24, "val": 4, "test": 12}
    assert len(rows) == n_orig + 40
    fresh = [(r["text"], r["label"]) for r in rows[n_orig:] if r["split"] == "test"]
    assert merged.test_items == fresh and all(isinstance(t, str) for t, _ in fresh)
    assert merged.data_overrides == {
        "path": str(merged.manifest),
        "format": "csv",
        "text_column": "text",
        "label_column": "label",
        "split_column": "split",
    }
    # The challenger's config reads the manifest: its test split is exactly the fresh test set.
    ccfg = _challenger_config(text_cfg, tmp_path, merged, RetrainSettings(from_scratch=True), CLASSES)
    _, cdata = get_task("text-classification").prepare(ccfg)
    assert cdata.splits["test"].texts == [t for t, _ in merged.test_items]
    assert len(cdata.splits["train"].texts) == sum(r["split"] == "train" for r in rows)


def test_new_texts_that_bring_their_own_test_split_keep_it(text_cfg: RunConfig, tmp_path: Path) -> None:
    rows = [("A stellar film.", "positive", "test"), ("Dreadful.", "negative", "test")]
    rows += [("Stellar cast.", "positive", "train"), ("A dreadful plot.", "negative", "train")]
    new = write_csv(tmp_path / "new.csv", ["text", "label", "split"], rows)
    merged = merge(text_cfg, {"new": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)
    assert merged.counts["new"] == {"test": 2, "train": 2}
    assert merged.test_items == [("A stellar film.", "positive"), ("Dreadful.", "negative")]


def test_new_texts_with_a_label_the_champion_does_not_know_are_refused(
    text_cfg: RunConfig, tmp_path: Path
) -> None:
    rows = [("A stellar film.", "positive"), ("It was a film.", "neutral"), ("Dreadful.", "negative")]
    new = write_csv(tmp_path / "new.csv", ["text", "label"], rows)
    with pytest.raises(DataError) as err:
        merge(text_cfg, {"new.csv": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)
    assert str(err.value) == (
        "New data new.csv has labels ['neutral'] that the champion does not know (negative, positive). "
        "A retrained model keeps the champion's classes; drop those items or train a new model."
    )


def test_feedback_labelled_texts_become_rows_of_the_manifest(text_cfg: RunConfig, tmp_path: Path) -> None:
    tricky = 'Stellar, "moving"\nand brave.'  # a comma, quotes and a line break survive the CSV
    logged = [
        LoggedInput("r1", 0, "1", tricky, "negative", "positive"),
        LoggedInput("r1", 1, "1", "Dreadful acting.", "positive", "negative"),
        LoggedInput("r2", 0, "1", "No label came for this one.", "positive", None),
    ]
    folder = tmp_path / "out" / "feedback"
    merged = merge(
        text_cfg, {"feedback": feedback_items(logged, folder)}, tmp_path / "out", RetrainSettings(), CLASSES
    )
    table = read_text_table(merged.manifest, split_column="split")  # as the challenger reads it
    assert list(zip(table.texts[-2:], table.labels[-2:], strict=True)) == [
        (tricky, "positive"),
        ("Dreadful acting.", "negative"),
    ]
    assert "No label came for this one." not in table.texts
    assert merged.counts["feedback"] == {"train": 2}  # one per class: each class keeps a training item
    assert not folder.exists()  # texts are rows, not files

    images = [LoggedInput("r3", 0, "1", b"\x89PNG", "positive", "positive")]
    with pytest.raises(DataError, match="is a bytes, not a text"):
        merge(
            text_cfg,
            {"feedback": feedback_items(images, folder)},
            tmp_path / "o2",
            RetrainSettings(),
            CLASSES,
        )


def test_a_wrong_new_text_file_says_which_columns_are_expected(text_cfg: RunConfig, tmp_path: Path) -> None:
    wrong = write_csv(tmp_path / "new.csv", ["sentence", "y"], [("A stellar film.", "positive")])
    with pytest.raises(DataError) as err:
        merge(text_cfg, {"new.csv": scan_source(wrong)}, tmp_path / "out", RetrainSettings(), CLASSES)
    assert str(err.value) == (
        f"--data '{wrong}' has the columns sentence, y; expected a .csv with the columns "
        f"review,sentiment[,split] or text,label[,split] (a text, its label, and optionally train/val/test). "
        f"Fix: rename its columns to one of those."
    )
    with pytest.raises(DataError, match=r"is not a \.csv file; a text-classification retrain takes"):
        merge(text_cfg, {"d": scan_source(tmp_path / "orig")}, tmp_path / "out", RetrainSettings(), CLASSES)
    with pytest.raises(DataError, match="does not exist; expected an image folder or a CSV manifest"):
        scan_source(tmp_path / "missing.csv")


def test_text_hashes_depend_on_the_content_not_on_where_it_lies(
    text_cfg: RunConfig, tmp_path: Path, make_text_config: Any
) -> None:
    new = new_texts(tmp_path / "new.csv")
    first = merge(text_cfg, {"new": scan_source(new)}, tmp_path / "a", RetrainSettings(), CLASSES)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "orig", elsewhere / "orig")
    moved_cfg = load_config(make_text_config(elsewhere / "orig" / "reviews.csv", tmp_path / "runs"))
    moved = shutil.copy(new, elsewhere / "new.csv")
    second = merge(moved_cfg, {"new": scan_source(Path(moved))}, tmp_path / "b", RetrainSettings(), CLASSES)
    assert (first.data_sha256, first.test_sha256) == (second.data_sha256, second.test_sha256)
    lines = sorted(f"{hashlib.sha256(t.encode()).hexdigest()} {lab} test" for t, lab in first.test_items)
    assert first.test_sha256 == hashlib.sha256("\n".join(lines).encode()).hexdigest()

    text, _ = first.test_items[0]
    changed = tmp_path / "changed.csv"
    changed.write_text(new.read_text(encoding="utf-8").replace(text, text + " Indeed."), encoding="utf-8")
    third = merge(text_cfg, {"new": scan_source(changed)}, tmp_path / "c", RetrainSettings(), CLASSES)
    assert third.data_sha256 != first.data_sha256 and third.test_sha256 != first.test_sha256


def test_images_still_merge_as_files_hashed_by_their_bytes(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    classes = ["dot", "hbar", "vbar"]
    for where in ("a", "b"):  # the same images in two places
        make_image_folder(tmp_path / where / "orig", per_class=6, size=8)
        make_image_folder(tmp_path / where / "new", per_class=10, size=8, seed=1)
    merged = [
        merge(
            load_config(make_config(tmp_path / w / "orig", tmp_path / "runs")),
            {"new": scan_source(tmp_path / w / "new")},
            tmp_path / w / "out",
            RetrainSettings(),
            classes,
        )
        for w in ("a", "b")
    ]
    a = merged[0]
    assert list(manifest_rows(a)[0]) == ["path", "label", "split"]
    assert a.data_overrides == {
        "path": str(a.manifest),
        "format": "csv",
        "path_column": "path",
        "label_column": "label",
        "split_column": "split",
    }
    assert len(a.test_items) == 9 and all(
        Path(p).is_file() and Path(p).is_absolute() for p, _ in a.test_items
    )
    assert (a.data_sha256, a.test_sha256) == (merged[1].data_sha256, merged[1].test_sha256)


def test_data_of_another_kind_is_refused_with_the_fix(
    tmp_path: Path, make_series_csv: Any, make_forecast_config: Any
) -> None:
    cfg = load_config(make_forecast_config(make_series_csv(tmp_path / "series.csv"), tmp_path / "runs"))
    with pytest.raises(DataError, match="image or text classification data; this config trains forecasting"):
        merge(cfg, {}, tmp_path / "out", RetrainSettings(), [])


def shifted_reviews(n: int, *, seed: int) -> list[tuple[str, str]]:
    """Reviews whose only cue is a word the champion never read: 'stellar'/'terrific', 'dreadful'/'lousy'."""
    rng = np.random.default_rng(seed)
    cues = {"positive": ["stellar", "terrific"], "negative": ["dreadful", "lousy"]}
    filler = ["the", "film", "story", "cast", "is", "was", "and", "a", "plot"]
    rows = []
    for i in range(n):
        label = CLASSES[1 - i % 2]
        words = [str(w) for w in rng.choice(filler, size=4)] + [str(rng.choice(cues[label]))]
        rng.shuffle(words)
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


def test_retrain_on_new_texts_promotes_a_challenger_trained_on_the_merged_data(
    tiny_text_bundle: Path, tmp_path: Path, make_text_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("scipy")
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    # The champion's own training config: the session's tiny text run, on its reviews CSV.
    original = load_bundle(tiny_text_bundle).config.data.path
    config = tmp_path / "kiln.yaml"
    config.write_text(yaml.safe_dump(make_text_config(original, tmp_path / "runs")), encoding="utf-8")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.register_bundle(tiny_text_bundle, name="reviews", alias="champion", tracking_uri=uri)
    new = write_csv(tmp_path / "new.csv", ["text", "label"], shifted_reviews(80, seed=3))

    # From scratch: the new reviews' cue word is outside the champion's vocabulary, which a fine-tuned run
    # keeps (its embedding rows fit those token ids), so only a run with its own tokenizer can learn it.
    result = retrain(
        config,
        model="reviews",
        data=[new],
        tracking_uri=uri,
        out_dir=tmp_path / "out",
        settings=RetrainSettings(epochs=3, from_scratch=True, min_test_items=20),
        device="cpu",
    )

    record = json.loads((tmp_path / "out" / "decision.json").read_text(encoding="utf-8"))
    assert record["outcome"] == "promoted", record["reason"]
    assert record["data"]["counts"][str(new)] == {"train": 48, "val": 8, "test": 24}
    assert record["test"]["c"] > record["test"]["b"]
    assert record["champion"]["metrics"]["accuracy"] < 0.6 < record["challenger"]["metrics"]["accuracy"]
    assert (
        registry.current_version("reviews", "champion", tracking_uri=uri) == result.challenger_version == "2"
    )
    # The challenger trained on the merged texts: its data is the manifest, its train split the manifest's.
    chall = load_bundle(Path(record["challenger"]["run_dir"]) / "bundle")
    manifest = tmp_path / "out" / "merged.csv"
    assert chall.config.data.path == str(manifest) and chall.config.data.text_column == "text"
    with manifest.open(newline="", encoding="utf-8") as fh:
        train = [r["text"] for r in csv.DictReader(fh) if r["split"] == "train"]
    assert chall.profile["raw"]["texts"] == len(train) == 48 + record["data"]["counts"]["original"]["train"]
