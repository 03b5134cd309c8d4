"""ImageNet architectures for transfer learning: ResNet, MobileNetV3 (torchvision) and EfficientNet-Lite0.

Each builder splits the original network into ordered backbone blocks and a new head sized for
``num_classes``. Weights given as a path are read in the original network's key format (a torchvision
``state_dict`` for ResNet and MobileNetV3) and are loaded *before* the split, so any file saved from the
original architecture fits. Only EfficientNet-Lite0 ships weights (``pretrained: true``), from the optional
``torchkiln[pretrained]`` packages, which are imported only when that model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision import models as tvm

from torchkiln.components.efficientnet_lite import lite0, lite0_weights_file, lite_stages
from torchkiln.components.models import (
    Classifier,
    check_model,
    load_backbone_weights,
    load_state_file,
    register_model,
)
from torchkiln.core.errors import ConfigError

TASK = "image-classification"  # the task these models are for
_INSTALL_HINT = "pip install 'torchkiln[pretrained]'"


# torchvision's ImageNet weights expect RGB input normalized with these statistics; they apply when
# model.pretrained points at such a file (training from scratch uses the data's own statistics).
TORCHVISION_WEIGHTS: dict[str, Any] = {
    "task": TASK,
    "in_channels": 3,
    "pretrained_stats": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _check_args(model: str, in_channels: int, pretrained: bool | str, rates: dict[str, float]) -> None:
    # Checked here rather than in nn.Dropout so that the message names the model and the setting.
    for arg, rate in rates.items():
        if not 0.0 <= rate < 1.0:
            raise ConfigError(
                f"The '{arg}' parameter of {model} must be a float in [0, 1). Got {rate} instead. "
                f"Set model.args.{arg} to a value such as 0.2."
            )
    if pretrained and in_channels != 3:
        raise ConfigError(
            f"Pretrained model '{model}' needs 3 input channels; got {in_channels}. "
            f"Set data.channels: 3 (grayscale images are then repeated per channel), or set "
            f"model.pretrained: false to train a {in_channels}-channel model from scratch."
        )


def _load_original(net: nn.Module, model: str, pretrained: bool | str, skip: str) -> None:
    """Load a weights file in ``net``'s own key format, leaving out the 1000-class layer ``skip``."""
    if pretrained is True:
        raise ConfigError(
            f"Model '{model}' has no packaged pretrained weights. Set model.pretrained to the path of a "
            f"local .safetensors or .pth file saved from torchvision's {model}, or to false."
        )
    if isinstance(pretrained, str) and pretrained:
        load_backbone_weights(net, load_state_file(pretrained), skip_prefixes=(skip,))


def _rechannel(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh copy of the stem conv ``conv`` taking ``in_channels`` inputs (e.g. 1 for grayscale)."""
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


def _linear_head(width: int, num_classes: int, dropout: float) -> nn.Sequential:
    # (B, C, H, W) -> (B, C) -> (B, num_classes)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
    )


# --- ResNet -------------------------------------------------------------------------------------------------


def _resnet(
    factory: Callable[..., tvm.ResNet],
    model: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool | str,
    dropout: float,
) -> Classifier:
    _check_args(model, in_channels, pretrained, {"dropout": dropout})
    net = factory(weights=None)
    _load_original(net, model, pretrained, skip="fc.")
    net.conv1 = _rechannel(net.conv1, in_channels)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)  # (B, 64, H/4, W/4)
    blocks = [stem, net.layer1, net.layer2, net.layer3, net.layer4]  # layer4: (B, 512|2048, H/32, W/32)
    return Classifier(blocks, _linear_head(net.fc.in_features, num_classes, dropout))


@register_model(
    "resnet18",
    summary="ResNet-18 (torchvision, 11.7M params); weights from a local file",
    **TORCHVISION_WEIGHTS,
)
def resnet18(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.0,
) -> Classifier:
    """ResNet-18: blocks ``[stem, layer1, layer2, layer3, layer4]``, head ``pool -> dropout -> Linear``.

    Args:
        num_classes: size of the output layer.
        in_channels: 3, or any count when training from scratch (the stem conv is replaced).
        image_size: unused; the network takes any size of at least 32.
        pretrained: path to a torchvision ``resnet18`` state dict (.pth or .safetensors); its ``fc`` is
            dropped. ``False`` for random weights.
        dropout: dropout before the final Linear (torchvision's ResNet has none).

    Raises:
        ConfigError: ``pretrained`` is ``True``, the file does not fit, or ``in_channels != 3`` with weights.

    Example:
        >>> model = resnet18(num_classes=10, in_channels=3, image_size=224, pretrained="resnet18.pth")
    """
    return _resnet(tvm.resnet18, "resnet18", num_classes, in_channels, pretrained, dropout)


@register_model(
    "resnet34",
    summary="ResNet-34 (torchvision, 21.8M params); weights from a local file",
    **TORCHVISION_WEIGHTS,
)
def resnet34(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.0,
) -> Classifier:
    """ResNet-34; same blocks, head and arguments as :func:`resnet18`.

    Example:
        >>> model = resnet34(num_classes=10, in_channels=1, image_size=64)
    """
    return _resnet(tvm.resnet34, "resnet34", num_classes, in_channels, pretrained, dropout)


@register_model(
    "resnet50",
    summary="ResNet-50 (torchvision, 25.6M params); weights from a local file",
    **TORCHVISION_WEIGHTS,
)
def resnet50(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.0,
) -> Classifier:
    """ResNet-50 (bottleneck blocks, 2048 features); same blocks, head and arguments as :func:`resnet18`.

    Example:
        >>> model = resnet50(num_classes=10, in_channels=3, image_size=224)
    """
    return _resnet(tvm.resnet50, "resnet50", num_classes, in_channels, pretrained, dropout)


# --- MobileNetV3 --------------------------------------------------------------------------------------------


def _mobilenet_v3(
    factory: Callable[..., tvm.MobileNetV3],
    model: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool | str,
    dropout: float,
) -> Classifier:
    _check_args(model, in_channels, pretrained, {"dropout": dropout})
    net = factory(weights=None, dropout=dropout)
    _load_original(net, model, pretrained, skip="classifier.3.")
    net.features[0][0] = _rechannel(net.features[0][0], in_channels)
    # features: stem conv, the inverted-residual blocks, a 1x1 conv to 576 | 960 channels at H/32.
    blocks = list(net.features)
    fc1, act, drop, fc2 = net.classifier  # keep the (pretrained) 576->1024 | 960->1280 layer
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc1, act, drop, nn.Linear(fc2.in_features, num_classes)
    )
    return Classifier(blocks, head)


@register_model(
    "mobilenet_v3_small",
    summary="MobileNetV3-Small (torchvision, 2.5M params); weights from a local file",
    **TORCHVISION_WEIGHTS,
)
def mobilenet_v3_small(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.2,
) -> Classifier:
    """MobileNetV3-Small: each entry of ``features`` is a block; head keeps the 1024-wide hidden layer.

    Args:
        num_classes: size of the output layer.
        in_channels: 3, or any count when training from scratch (the stem conv is replaced).
        image_size: unused; the network takes any size of at least 32.
        pretrained: path to a torchvision ``mobilenet_v3_small`` state dict; its last Linear
            (``classifier.3``) is dropped, the hidden ``classifier.0`` is kept. ``False`` for random weights.
        dropout: dropout before the final Linear (torchvision's default, 0.2).

    Raises:
        ConfigError: ``pretrained`` is ``True``, the file does not fit, or ``in_channels != 3`` with weights.

    Example:
        >>> model = mobilenet_v3_small(num_classes=10, in_channels=3, image_size=224)
    """
    return _mobilenet_v3(
        tvm.mobilenet_v3_small, "mobilenet_v3_small", num_classes, in_channels, pretrained, dropout
    )


@register_model(
    "mobilenet_v3_large",
    summary="MobileNetV3-Large (torchvision, 5.5M params); weights from a local file",
    **TORCHVISION_WEIGHTS,
)
def mobilenet_v3_large(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.2,
) -> Classifier:
    """MobileNetV3-Large (1280-wide hidden layer); blocks, head, arguments as :func:`mobilenet_v3_small`.

    Example:
        >>> model = mobilenet_v3_large(num_classes=10, in_channels=3, image_size=224)
    """
    return _mobilenet_v3(
        tvm.mobilenet_v3_large, "mobilenet_v3_large", num_classes, in_channels, pretrained, dropout
    )


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------------


@register_model(
    "efficientnet_lite0",
    summary="EfficientNet-Lite0 (4.7M params), packaged ImageNet weights via torchkiln[pretrained]",
    default_image_size=224,
    pretrained_stats=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    packaged_weights=True,
    in_channels=3,
    task=TASK,
)
def efficientnet_lite0(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    dropout: float = 0.2,
    drop_path: float = 0.2,
) -> Classifier:
    """EfficientNet-Lite0: blocks ``[stem, 7 MBConv stages, 1x1 conv to 1280]``, head as :func:`resnet18`.

    Args:
        num_classes: size of the output layer.
        in_channels: 3, or any count when training from scratch (the stem conv is replaced).
        image_size: input side; the TensorFlow-style "same" padding is fixed for it.
        pretrained: ``True`` for the packaged ImageNet weights (normalize with mean = std = 0.5), a path
            to a state dict of the original model (its ``_fc`` is dropped), or ``False``.
        dropout: dropout before the final Linear (the original's 0.2).
        drop_path: stochastic depth; MBConv block ``i`` of ``n`` is skipped with rate ``drop_path * i / n``.

    Raises:
        ConfigError: the ``torchkiln[pretrained]`` packages are missing, the file does not fit, or
            ``in_channels != 3`` with weights.

    Example:
        >>> model = efficientnet_lite0(num_classes=10, in_channels=3, image_size=224, pretrained=True)
    """
    _check_args("efficientnet_lite0", in_channels, pretrained, {"dropout": dropout, "drop_path": drop_path})
    net = lite0(in_channels, image_size, dropout, drop_path)
    if pretrained:
        path = lite0_weights_file() if pretrained is True else pretrained
        load_backbone_weights(net, load_state_file(path), skip_prefixes=("_fc.",))
    # The TF port's BatchNorm momentum (0.01) suits long ImageNet schedules. On a small data set its
    # running statistics lag far behind: from scratch, eval-mode outputs collapsed to one class (val
    # accuracy 0.10 after 8 epochs on 1,000 images), and fine-tuning keeps mostly ImageNet statistics
    # for a new domain. PyTorch's 0.1 adapts within the few hundred steps such runs have.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())  # (B, 32, H/2, W/2)
    conv_head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())  # (B, 320, H/32, W/32) -> (B, 1280, ...)
    blocks = [stem, *lite_stages(net, drop_path), conv_head]
    return Classifier(blocks, _linear_head(net._fc.in_features, num_classes, dropout))


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    args: dict[str, Any] | None = None,
) -> Classifier:
    """Build a registered model; the single typed entry point.

    Args:
        name: a name from ``kiln list models``.
        num_classes: size of the output layer.
        in_channels: 1 for grayscale, 3 for RGB.
        image_size: side of the square input images.
        pretrained: ``True`` for packaged weights, a path for a local weights file, ``False`` for random.
        args: model-specific keyword arguments, checked against the builder's signature.

    Raises:
        RegistryError: unknown model name or argument.
        ConfigError: pretrained weights were asked for but cannot be had.

    Example:
        >>> model = create_model("cnn", num_classes=10, in_channels=1, image_size=28)
    """
    spec = check_model(name, args=args or {}, pretrained=pretrained, task=TASK)
    if spec.in_channels is not None and in_channels != spec.in_channels and pretrained:
        raise ConfigError(
            f"Pretrained model '{name}' needs {spec.in_channels} input channels; got {in_channels}. "
            f"Set data.channels: {spec.in_channels} (grayscale images are then repeated per channel)."
        )
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return spec.builder(**sizes, pretrained=pretrained, **(args or {}))
