"""Every registered image model, through the image task: forward, backward, bundle save and reload, ONNX
export with output parity, and structured pruning."""

from __future__ import annotations

import pytest
import torch

from torchkiln.artifacts.bundle import load_bundle, save_bundle
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.components.models import MODELS
from torchkiln.exporter.onnx import export_onnx
from torchkiln.exporter.prune import prune_structured
from torchkiln.tasks import get_task
from torchkiln.tasks.base import validate

CLASSES = ["a", "b", "c"]
IMAGE_MODELS = MODELS.of("image-classification").names()


def resolved_config(model: str, channels: int) -> object:
    size = 64 if model.startswith(("efficientnet", "mobilenet")) else 32
    return validate(
        {
            "task": "image-classification",
            "data": {
                "path": "unused",
                "classes": CLASSES,
                "image_size": size,
                "channels": channels,
                "mean": [0.5] * channels,
                "std": [0.25] * channels,
            },
            "model": {"name": model},
        }
    )


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward_bundle_roundtrip(name: str, channels: int, tmp_path) -> None:
    cfg = resolved_config(name, channels)
    task = get_task("image-classification")
    torch.manual_seed(0)
    model = task.build_model(cfg)
    size = cfg.data.image_size
    x = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)

    model.train()
    logits = model(x)
    assert logits.shape == (2, len(CLASSES))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.inference_mode():
        expected = model(x)
    save_bundle(tmp_path / "bundle", model=model, cfg=cfg, task=task)
    bundle = load_bundle(tmp_path / "bundle")
    with torch.inference_mode():
        got = bundle.model(x)
    assert torch.equal(got, expected)
    assert bundle.meta["labels"] == CLASSES
    answers = task.postprocess(cfg, got, top_k=2)
    assert [len(a["top_k"]) for a in answers] == [2, 2]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_freeze_backbone_trains_only_the_last_blocks(name: str) -> None:
    cfg = resolved_config(name, 3)
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"freeze_backbone": True, "unfreeze_last": 1})}
    )
    task = get_task("image-classification")
    model = task.build_model(cfg)
    blocks = list(model.net.blocks)
    assert all(not p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in model.net.head.parameters())
    groups = {g.name: g for g in task.param_groups(cfg, model)}
    assert len(groups["backbone"].params) == sum(1 for p in blocks[-1].parameters())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_onnx_export_matches_eager(name: str, tmp_path) -> None:
    """Every model exports with a dynamic batch axis and ONNX Runtime gives the eager outputs."""
    cfg = resolved_config(name, 3)
    torch.manual_seed(0)
    model = get_task("image-classification").build_model(cfg).eval()
    size = cfg.data.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    export_onnx(model, example, tmp_path / "model.onnx")
    onnx_model = OnnxModel(tmp_path / "model.onnx")
    for batch in (1, 5):  # neither is the export batch: the batch axis really is dynamic
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        with torch.inference_mode():
            expected = model(x)
        got = onnx_model(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_structured_pruning_shrinks_and_the_bundle_reloads(name: str, tmp_path) -> None:
    """Half the channels go, every coupled layer follows, and the smaller bundle loads back."""
    cfg = resolved_config(name, 3)
    task = get_task("image-classification")
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    size = cfg.data.image_size
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    before = sum(p.numel() for p in model.parameters())
    sparsity = prune_structured(model, 0.5, x)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.6 * before and sparsity > 0.4
    with torch.inference_mode():
        expected = model(x)
    assert expected.shape == (2, len(CLASSES))
    save_bundle(tmp_path / "b", model=model, cfg=cfg, task=task, extra={"pruning": {"structured": True}})
    reloaded = load_bundle(tmp_path / "b").model
    assert sum(p.numel() for p in reloaded.parameters()) == after
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)
