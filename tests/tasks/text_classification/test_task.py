"""The text-classification task: the tokenizer is fit on train only and travels in the bundle as state."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from torchkiln import api
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.components.models import MODELS, register_model
from torchkiln.core.errors import BundleError, ConfigError, DataError, PredictError
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate

TASK = get_task("text-classification")


@pytest.fixture
def config(tmp_path: Path, make_sentiment_csv, make_text_config) -> Callable[..., dict]:
    """``config(**data)``: the tiny BiLSTM config on generated reviews, with ``data`` keys replaced."""

    def make(**data: object) -> dict:
        path = data.pop("path", None) or make_sentiment_csv(tmp_path / "reviews.csv")
        cfg = make_text_config(path, tmp_path / "runs")
        cfg["data"] |= data
        return cfg

    return make


def write_split_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Reviews with an explicit split column; the word 'zqxjv' appears only in test rows."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment", "part"])
        for i, (text, label) in enumerate(rows):
            part = "test" if i % 6 == 0 else "val" if i % 6 == 1 else "train"
            w.writerow([f"{text} zqxjv" if part == "test" else text, label, part])
    return path


def test_the_tokenizer_is_fit_on_the_train_split_only(tmp_path: Path, config, make_sentiment_rows) -> None:
    path = write_split_csv(tmp_path / "split.csv", make_sentiment_rows(120, seed=1))
    cfg = config(path=str(path), split_column="part")
    cfg["data"]["tokenizer"] |= {"vocab_size": 400}
    resolved, data = TASK.prepare(validate(cfg))
    vocab = data.encoder.tokenizer.get_vocab()
    assert "zqxjv" not in vocab  # a test-only word never shapes the vocabulary
    assert "great" in vocab and "awful" in vocab
    assert resolved.data.tokenizer.vocab_size == len(vocab) and resolved.data.tokenizer.pad_id == 0
    assert resolved.data.classes == ["negative", "positive"]
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [80, 20, 20]
    assert all("zqxjv" in t for t in data.splits["test"].texts)


def test_the_bundle_carries_the_tokenizer_and_predicts_the_same(tiny_text_bundle: Path) -> None:
    bundle = load_bundle(tiny_text_bundle)
    run_state = (tiny_text_bundle.parent / "state" / "tokenizer.json").read_bytes()
    assert bundle.state_files == {"tokenizer.json": run_state}
    again = load_bundle(tiny_text_bundle)
    assert again.state.tokenizer.to_str() == bundle.state.tokenizer.to_str()
    texts = ["A wonderful, moving film.", "Dull and tedious.", "the plot"]
    p = load_predictor(tiny_text_bundle)
    x = p.preprocess(texts)
    assert x.dtype == torch.long and x.shape[0] == 3 and (x[2] == 0).any()  # padded to the longest
    first, second = p.predict(texts), load_predictor(tiny_text_bundle).predict(texts)
    assert first == second
    assert first[0]["label"] == "positive" and first[1]["label"] == "negative"


def test_a_changed_tokenizer_file_is_refused(tmp_path: Path, tiny_text_bundle: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny_text_bundle, tmp_path / "bundle"))
    (copy / "state" / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=re.escape("state/tokenizer.json does not match the SHA-256")):
        load_bundle(copy)
    (copy / "state" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=re.escape("but state/tokenizer.json is missing")):
        load_bundle(copy)


def test_collate_pads_requests_of_different_lengths(tiny_text_bundle: Path) -> None:
    p = load_predictor(tiny_text_bundle)
    parts = [p.preprocess(["great"]), p.preprocess(["the story was dull and the cast was bland"])]
    joined = p.collate(parts)
    assert joined.shape == (2, parts[1].shape[1])
    assert torch.allclose(p.forward(joined)[0], p.forward(parts[0])[0], atol=1e-5)  # padding is ignored
    summary = p.summarize(["great", "the story was dull and the cast was bland"], joined)
    assert [s["tokens"] for s in summary] == [int((r != 0).sum()) for r in joined]
    assert summary[0]["chars"] == 5 and len(summary[0]["sha256"]) == 64


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "No texts were given. Pass at least one text."),
        (["fine", "   "], "texts[1] is empty. Expected some text to classify."),
        ([3], "texts[0] is a int, not a string. Send text."),
    ],
)
def test_bad_prediction_inputs(tiny_text_bundle: Path, texts: list, message: str) -> None:
    with pytest.raises(PredictError, match=re.escape(message)):
        load_predictor(tiny_text_bundle).predict(texts)


def test_config_errors_name_the_fix(config) -> None:
    cfg = config()
    cfg["data"]["path"] = "movie-reviewz"
    with pytest.raises(DataError, match=re.escape("Did you mean 'movie-reviews'?")):
        TASK.prepare(validate(cfg))
    cfg = config()
    cfg["model"] = {"name": "minilm", "pretrained": True}
    cfg["data"]["tokenizer"] = {"kind": "bpe"}
    with pytest.raises(ConfigError, match=re.escape("is pretrained with its own tokenizer")):
        TASK.prepare(validate(cfg))
    cfg["data"]["tokenizer"] = {}
    cfg["model"] = {"name": "minilm"}
    with pytest.raises(ConfigError, match=re.escape("set model.pretrained: true (the packaged MiniLM)")):
        TASK.prepare(validate(cfg))
    cfg["model"] = {"name": "cnn"}
    with pytest.raises(ConfigError, match=re.escape("Model 'cnn' is an image-classification model")):
        TASK.prepare(validate(cfg))


def test_a_label_that_never_appears_in_train_is_refused(tmp_path: Path, config) -> None:
    path = tmp_path / "r.csv"
    path.write_text("review,sentiment,part\ngood film,pos,train\nbad film,neg,train\nodd film,meh,test\n")
    cfg = config(path=str(path), split_column="part")
    with pytest.raises(
        DataError, match=re.escape("the test split has class 'meh', which never appears in train")
    ):
        TASK.prepare(validate(cfg))


def test_layer_wise_lr_decay_gives_each_block_its_multiplier(config) -> None:
    cfg = config()
    cfg["model"] = {"name": "transformer", "args": {"d_model": 16, "nhead": 2, "num_layers": 2}}
    cfg["model"]["layer_lr_decay"] = 0.5
    resolved, _ = TASK.prepare(validate(cfg))
    model = TASK.build_model(resolved)
    groups = TASK.param_groups(resolved, model)
    assert [(g.name, g.lr_mult) for g in groups] == [
        ("block0", 0.125),
        ("block1", 0.25),
        ("block2", 0.5),
        ("head", 1.0),
    ]
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g.params) for g in groups) == n_params


def test_freeze_backbone_keeps_the_last_blocks_trainable(config) -> None:
    cfg = config()
    cfg["model"] = {"name": "transformer", "args": {"d_model": 16, "nhead": 2, "num_layers": 2}}
    cfg["model"] |= {"freeze_backbone": True, "unfreeze_last": 1}
    resolved, _ = TASK.prepare(validate(cfg))
    model = TASK.build_model(resolved)
    blocks = list(model.blocks)
    assert all(not p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in blocks[-1].parameters())


def test_evaluation_reports_the_most_confident_mistakes_with_their_text(
    tiny_text_bundle: Path, tmp_path
) -> None:
    result = api.evaluate(tiny_text_bundle, split="test", out_dir=tmp_path / "eval")
    html = result.report.read_text()
    assert "<th>Text</th>" in html and "Most confident mistakes" in html
    metrics = json.loads(result.metrics_file.read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["binary"]["positive"] == "positive"
    assert 0.0 <= metrics["binary"]["f1"] <= 1.0 and 0.0 <= metrics["binary"]["auc"] <= 1.0
    # metrics.json lists every mistake with its text and its place in the file (the CSV's line)
    assert len(metrics["mistakes"]) == metrics["num_samples"] - round(
        metrics["accuracy"] * metrics["num_samples"]
    )
    csv_file = Path(load_bundle(tiny_text_bundle).config.data.path)
    lines = csv_file.read_text().splitlines()
    for w in metrics["mistakes"]:
        file, line = w["source"].rsplit(":", 1)
        assert file == str(csv_file) and w["text"] in lines[int(line) - 1]


def test_a_resumed_run_reuses_its_saved_tokenizer(config, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config()
    cfg["train"] |= {"epochs": 1}
    run = api.train(api.load_config(cfg))
    saved = (run / "state" / "tokenizer.json").read_bytes()
    seen: list[dict[str, bytes]] = []
    load_state = type(TASK).load_state

    def spy(self, cfg, files):  # type: ignore[no-untyped-def]
        seen.append(dict(files))
        return load_state(self, cfg, files)

    monkeypatch.setattr(type(TASK), "load_state", spy)
    api.train(resume=run, epochs=2)  # a complete run is left alone: extend it, so that it trains again
    assert seen and seen[0] == {"tokenizer.json": saved}
    assert (run / "bundle" / "state" / "tokenizer.json").read_bytes() == saved


def test_a_run_started_from_a_bundle_keeps_its_tokenizer(
    tmp_path: Path, config, tiny_text_bundle: Path, make_sentiment_csv
) -> None:
    """model.init_from: the weights fit the bundle's token ids, so new data with new words must not refit
    the tokenizer (a refit moved "great" from one id to another and grew the vocabulary)."""
    new = make_sentiment_csv(tmp_path / "new.csv", 160, seed=7)
    new.write_text(new.read_text(encoding="utf-8").replace("great", "splendiferous"), encoding="utf-8")
    cfg = config(path=str(new))
    cfg["model"]["init_from"] = str(tiny_text_bundle)
    cfg["train"] |= {"epochs": 1}
    run = api.train(api.load_config(cfg))
    saved = (tiny_text_bundle / "state" / "tokenizer.json").read_bytes()
    assert (run / "bundle" / "state" / "tokenizer.json").read_bytes() == saved
    assert load_bundle(run / "bundle").config.data.tokenizer.vocab_size == (
        load_bundle(tiny_text_bundle).config.data.tokenizer.vocab_size
    )


@pytest.mark.parametrize("mode", ["dynamic", "static"])  # static calibrates on val: rows of another length
def test_lstm_bundle_exports_to_int8_onnx_that_predicts_like_the_eager_one(
    tiny_text_bundle: Path, tmp_path: Path, mode: str
) -> None:
    run = Path(shutil.copytree(tiny_text_bundle.parent, tmp_path / "run"))
    result = api.export(run, quantize=mode, bench_seconds=0.01)
    assert result.passed, [c.detail for c in result.checks]
    assert [r.name for r in result.rows] == ["torch fp32 (eager)", "onnx fp32", f"onnx int8 {mode}"]
    assert result.rows[1].max_abs_diff is not None and result.rows[1].max_abs_diff < 1e-4
    if mode == "dynamic":  # the embedding is stored in int8 too (static's QDQ nodes outweigh a tiny model)
        assert result.rows[2].file_bytes < result.rows[1].file_bytes
    assert (result.variant / "state" / "tokenizer.json").read_bytes() == (
        tiny_text_bundle / "state" / "tokenizer.json"
    ).read_bytes()
    texts = ["a great film", "dull and tedious", "a truly wonderful, moving and funny film with a great cast"]
    eager = load_predictor(run / "bundle").predict(texts)
    int8 = load_predictor(result.variant).predict(texts)  # rows of three lengths, padded in one batch
    assert [a["label"] for a in int8] == [a["label"] for a in eager]


# ---- runtime checks (they hold under python -O: no assert does the checking) ---------------------------


def test_a_config_of_another_task_names_its_data_section(make_forecast_config) -> None:
    cfg = validate(make_forecast_config("series.csv"))
    with pytest.raises(ConfigError) as exc:
        TASK.bundle_meta(cfg)
    assert str(exc.value) == (
        "The text-classification task got a config whose data section is of type TimeSeriesDataConfig "
        "(task.kind 'forecasting'); expected a TextDataConfig. Fix: build the config with "
        "torchkiln.tasks.base.validate (or load_config), which picks the data section by task.kind, and "
        "hand it to the task of that kind (torchkiln.tasks.get_task)."
    )


@pytest.mark.parametrize(
    ("what", "field"),
    [("build_model", "data.classes"), ("collate_inputs", "data.tokenizer.pad_id")],
)
def test_an_unresolved_config_is_refused_with_the_field_prepare_fills_in(
    config, what: str, field: str
) -> None:
    cfg = validate(config())  # not through prepare: no classes, no tokenizer
    calls = {
        "build_model": lambda: TASK.build_model(cfg),
        "collate_inputs": lambda: TASK.collate_inputs(cfg, [torch.ones(1, 2), torch.ones(1, 3)]),
    }
    with pytest.raises(ConfigError) as exc:
        calls[what]()
    assert str(exc.value) == (
        f"{what} needs a resolved config, but {field} is not set; expected the config that task.prepare "
        f"returns, which fills it in from the data (a bundle's config is resolved too). Fix: pass the "
        f"config from `cfg, data = task.prepare(cfg)`, or the bundle's."
    )


def test_a_registered_builder_that_returns_no_text_classifier_is_refused(
    config, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = MODELS.of("text-classification")
    monkeypatch.setattr(models, "_entries", dict(models._entries))  # the registration ends with the test

    @register_model("bare-linear", summary="returns a bare network", task="text-classification")
    def bare_linear(*, num_classes: int, vocab_size: int, pad_id: int, max_length: int, pretrained=False):
        return torch.nn.Linear(4, num_classes)

    raw = config()
    raw["model"] = {"name": "bare-linear"}
    raw["data"] |= {"classes": ["negative", "positive"], "tokenizer": {"vocab_size": 200, "pad_id": 0}}
    cfg = validate(raw)  # resolved by hand
    model = TASK.build_model(cfg)
    with pytest.raises(ConfigError) as exc:
        TASK.param_groups(cfg, model)
    assert str(exc.value) == (
        "The text model 'bare-linear' is a Linear, not a TextClassifier; expected its registered builder "
        "to return a TextClassifier, whose blocks and head get their own learning rates. Fix: return a "
        "TextClassifier from the builder, as the built-in text models do, or set model.name to one of "
        "those ('kiln list models')."
    )


@pytest.mark.parametrize("bucket", [True, False])
def test_a_balanced_sampler_draws_each_class_about_equally(
    tmp_path: Path, config, make_sentiment_rows, bucket: bool
) -> None:
    """data.sampler: balanced on 9:1 data, with and without length buckets; the same draws from the seed."""
    rows = make_sentiment_rows(200, seed=2)
    rows = [r for r in rows if r[1] == "positive"][:90] + [r for r in rows if r[1] == "negative"][:10]
    path = tmp_path / "skewed.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("review", "sentiment"), *rows])
    cfg = config(path=str(path), sampler="balanced", bucket=bucket, split={"val": 0.1, "test": 0.1})
    cfg["train"]["batch_size"] = 8
    resolved, data = TASK.prepare(validate(cfg))
    negative = resolved.data.classes.index("negative")

    def share(loader) -> tuple[float, torch.Tensor]:
        drawn = torch.cat([y for _, y in loader] + [y for _, y in loader])  # two epochs
        return (drawn == negative).float().mean().item(), drawn

    balanced, drawn = share(TASK.loader(resolved, data, "train", train=True))
    assert 0.35 < balanced < 0.65, balanced
    assert torch.equal(share(TASK.loader(resolved, data, "train", train=True))[1], drawn)
    plain, _ = share(
        TASK.loader(
            resolved.model_copy(update={"data": resolved.data.model_copy(update={"sampler": "shuffle"})}),
            data,
            "train",
            train=True,
        )
    )
    assert plain == pytest.approx(0.1, abs=0.03)


def test_a_split_column_says_it_wins_over_data_split(
    tmp_path: Path, config, make_sentiment_rows, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_split_csv(tmp_path / "split.csv", make_sentiment_rows(120, seed=1))
    cfg = config(path=str(path), split_column="part", split={"test": 0.3})
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        _, data = TASK.prepare(validate(cfg))
    assert len(data.splits["test"]) == 20  # the file's 20 test rows, not 30 % of the texts
    (said,) = [m for m in caplog.messages if "brings its own split" in m]
    assert said.startswith(f"'{path}' brings its own split (a split column or train/val/test parts), which ")
    assert "wins over data.split.test (0.3): it is not used." in said
