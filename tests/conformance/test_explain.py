"""Every registered image model, explained through the image task: Grad-CAM and Grad-CAM++ heatmaps over
the last convolutional block, with the model left as it was. A model without convolutions is refused."""

from __future__ import annotations

import pytest
import torch

from torchkiln.core.errors import PredictError
from torchkiln.tasks import get_task
from torchkiln.tasks.base import explainer

from .test_models import CLASSES, IMAGE_MODELS, resolved_config

NO_CONV = {"mlp"}  # flattened pixels: no feature map to weigh


@pytest.mark.parametrize("name", [m for m in IMAGE_MODELS if m not in NO_CONV])
def test_every_cnn_is_explained_over_its_last_block(name: str) -> None:
    cfg = resolved_config(name, 3)
    task = explainer(get_task("image-classification"))
    torch.manual_seed(0)
    model = task.build_model(cfg)  # type: ignore[attr-defined]
    size = cfg.data.image_size
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    model.eval()
    with torch.inference_mode():
        expected = model(x)
    seen: list[torch.Size] = []
    model.net.blocks[-1].register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
    for method in ("gradcam", "gradcam++"):
        cams = task.explain(cfg, model, x, method=method)
        assert cams.heatmaps.shape == (2, size, size) and cams.heatmaps.dtype == torch.float32
        assert float(cams.heatmaps.min()) >= 0.0 and float(cams.heatmaps.max()) <= 1.0
        assert torch.allclose(cams.outputs, expected, atol=1e-5)
        assert cams.targets.tolist() == expected.argmax(1).tolist()
    assert len(seen) == 2 and len(seen[0]) == 4  # the last block is the layer: a feature map (B, C, h, w)
    other = task.explain(cfg, model, x, target=[len(CLASSES) - 1, 0])
    assert other.targets.tolist() == [len(CLASSES) - 1, 0]
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 1  # only this test's own


@pytest.mark.parametrize("name", sorted(NO_CONV))
def test_a_model_without_convolutions_is_refused(name: str) -> None:
    cfg = resolved_config(name, 1)
    task = explainer(get_task("image-classification"))
    model = task.build_model(cfg).eval()  # type: ignore[attr-defined]
    x = torch.randint(0, 256, (1, 1, cfg.data.image_size, cfg.data.image_size), dtype=torch.uint8)
    with pytest.raises(PredictError) as err:
        task.explain(cfg, model, x)
    assert str(err.value) == (
        f"Model '{name}' has no convolutional layer, so Grad-CAM has no feature map to weigh. Heatmaps "
        "need a convolutional network (cnn, a resnet, a mobilenet or efficientnet_lite0; kiln list models): "
        "explain a bundle trained with one of them."
    )


def test_tasks_without_explain_are_refused_by_kind() -> None:
    with pytest.raises(PredictError) as err:
        explainer(get_task("text-classification"))
    assert str(err.value) == (
        "Task 'text-classification' cannot explain its answers: it has no explain method; heatmaps exist for "
        "image-classification. Explain a bundle of that task instead."
    )
