"""The penultimate-layer features of a model: what its last linear layer reads.

Drift monitoring compares these between a bundle's reference sample and live traffic, so every family
defines them the same way: the input of the model's last ``nn.Linear`` (the classifier or forecast
layer), caught with a forward pre-hook during one ordinary forward pass. The model needs no second
method, and the outputs and the features come from the same call.
"""

from __future__ import annotations

import torch
from torch import nn

from torchkiln.core.errors import PredictError


def last_linear(module: object, what: str) -> nn.Linear:
    """The last ``nn.Linear`` registered under ``module`` (its output layer).

    Raises:
        PredictError: ``module`` is not a torch module (an ONNX Runtime model) or holds no linear layer.

    Example:
        >>> last_linear(model.net.head, "the image model's head").in_features
        256
    """
    found = [m for m in module.modules() if isinstance(m, nn.Linear)] if isinstance(module, nn.Module) else []
    if not found:
        raise PredictError(
            f"Penultimate features need {what} to be a torch module with a final nn.Linear; got "
            f"{type(module).__name__}. An exported (ONNX) bundle gives outputs only: compute features with "
            f"the trained torch bundle it came from."
        )
    return found[-1]


def forward_with_features(
    model: nn.Module, x: torch.Tensor, layer: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(x), features (B, D) float32)``: the features are ``layer``'s input, flattened per item.

    Example:
        >>> outputs, features = forward_with_features(model, x, last_linear(model.net.head, "head"))
    """
    caught: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _module, args: caught.append(args[0].detach()))
    try:
        outputs = model(x)
    finally:
        handle.remove()
    if len(caught) != 1:
        raise RuntimeError(f"the output layer ran {len(caught)} times in one forward pass; expected once")
    return outputs, caught[0].flatten(1).float()  # (B, D); a sequence model's (B, H, D) -> (B, H * D)
