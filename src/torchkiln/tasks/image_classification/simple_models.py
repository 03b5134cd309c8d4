"""Small models trained from scratch: a configurable CNN and an MLP."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from torchkiln.components.models import Classifier, load_backbone_weights, load_state_file, register_model
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.image_classification.models import TASK


def _conv_block(c_in: int, c_out: int, convs: int, dropout: float, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def _maybe_load(model: Classifier, pretrained: bool | str) -> Classifier:
    if isinstance(pretrained, str):
        load_backbone_weights(model, load_state_file(pretrained), skip_prefixes=("head.",))
    return model


@register_model("cnn", summary="Configurable CNN: conv-BN-ReLU blocks with pooling and dropout", task=TASK)
def cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    channels: Sequence[int] = (16, 32),
    convs_per_block: int = 1,
    dropout: float = 0.0,
    hidden: int = 256,
    head_dropout: float = 0.3,
    pool: int = 7,
) -> Classifier:
    """Conv blocks (each halves H and W), then ``adaptive avg-pool to pool x pool -> flatten ->
    [Linear(hidden) -> ReLU] -> Linear``. A larger ``pool`` keeps more of the spatial layout."""
    if not channels or convs_per_block < 1:
        raise ConfigError(f"cnn needs at least one block and one conv per block; got channels={channels}.")
    blocks = []
    c_in = in_channels
    for c in channels:
        blocks.append(_conv_block(c_in, c, convs_per_block, dropout, pool=True))
        c_in = c
    # Each block halves H and W; when that already gives pool x pool, the pooling would be an
    # identity op that still costs time (and is slow in int8 ONNX Runtime), so leave it out.
    reduced = image_size // 2 ** len(channels)
    squeeze = nn.Identity() if reduced == pool else nn.AdaptiveAvgPool2d(pool)
    head: list[nn.Module] = [squeeze, nn.Flatten()]  # (B, C * pool * pool)
    width = c_in * pool * pool
    if hidden:
        # Dropout only before the last layer: on the wide flattened features it costs ~10 % of a
        # CPU step (Bernoulli sampling) for no accuracy we could measure.
        head += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    head += [nn.Dropout(head_dropout), nn.Linear(width, num_classes)]
    return _maybe_load(Classifier(blocks, nn.Sequential(*head)), pretrained)


@register_model("mlp", summary="Multilayer perceptron on flattened pixels", task=TASK)
def mlp(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool | str = False,
    hidden: Sequence[int] = (512, 256),
    dropout: float = 0.2,
) -> Classifier:
    """``Flatten -> [Linear -> BN -> ReLU -> Dropout] * len(hidden) -> Linear``; fixed input size."""
    blocks: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for h in hidden:
        blocks.append(
            nn.Sequential(nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout))
        )
        width = h
    return _maybe_load(Classifier(blocks, nn.Linear(width, num_classes)), pretrained)
