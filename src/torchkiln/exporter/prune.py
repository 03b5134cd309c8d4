"""L1 pruning that changes something: sparse weights, or layers that are really narrower.

- ``l1-unstructured``: the smallest-|w| fraction of all Conv/Linear weights (ranked globally) is
  zeroed with ``torch.nn.utils.prune``; the masks stay on during the fine-tune, then
  ``prune.remove`` makes the zeros permanent. Dense kernels do not skip zeros, so the file size and
  latency stay the same; the report says so.
- ``l1-structured``: whole output channels (and hidden units) with the smallest L1 norm are removed.
  Torch-Pruning's dependency graph rebuilds every coupled layer (the next conv's input channels,
  BatchNorm, the first Linear after a flatten, residual adds), so the model really shrinks. The
  classifier's output layer is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from torchkiln.core.errors import ExportError

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PruneResult:
    method: str
    requested: float
    params_before: int
    params_after: int
    weight_sparsity: float  # zero weights / all weights, over the prunable layers
    channel_sparsity: float  # removed output channels / prunable output channels (structured)

    def as_json(self) -> dict[str, float | int | str | bool]:
        return {
            "method": self.method,
            "structured": self.method == "l1-structured",
            "requested": self.requested,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "weight_sparsity": round(self.weight_sparsity, 4),
            "channel_sparsity": round(self.channel_sparsity, 4),
        }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_layer(model: nn.Module) -> nn.Module:
    """The last Conv/Linear layer: it produces the classes (or targets), so it keeps its width."""
    layers = [m for m in model.modules() if isinstance(m, _PRUNABLE)]
    if not layers:
        raise ExportError(
            f"{type(model).__name__} has no Conv or Linear layer to prune. Export without --prune."
        )
    return layers[-1]


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, _PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def _out_channels(model: nn.Module, skip: nn.Module) -> int:
    return sum(m.weight.shape[0] for m in model.modules() if isinstance(m, _PRUNABLE) and m is not skip)


def add_unstructured_masks(model: nn.Module, amount: float) -> None:
    """Mask the ``amount`` fraction of smallest-|w| Conv/Linear weights, ranked across all layers.

    The masks are a reparametrization (``weight = weight_orig * weight_mask``), so a fine-tune
    cannot revive pruned weights; :func:`make_permanent` removes it afterwards.
    """
    targets = [(m, "weight") for m in model.modules() if isinstance(m, _PRUNABLE)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Fold ``weight_orig * weight_mask`` into a plain ``weight`` parameter."""
    for m in model.modules():
        if torch_prune.is_pruned(m) and hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")


def prune_structured(model: nn.Module, amount: float, example: torch.Tensor) -> float:
    """Remove ``amount`` of the output channels of every Conv/Linear layer but the output layer.

    Layers shrink in place (``model`` is modified). Returns the channel sparsity achieved.

    Raises:
        ExportError: the dependency graph cannot be traced (e.g. data-dependent control flow).
    """
    import torch_pruning as tp

    head = output_layer(model)
    before = _out_channels(model, head)
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=example,
            importance=tp.importance.MagnitudeImportance(p=1),  # L1 norm per channel (group-summed)
            pruning_ratio=amount,
            ignored_layers=[head],
        )
        pruner.step()
    except Exception as exc:  # Torch-Pruning raises plain Python errors while tracing
        raise ExportError(
            f"Structured pruning of {type(model).__name__} failed while tracing its layer dependencies: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Use --prune-method "
            f"l1-unstructured for this model."
        ) from None
    return 1.0 - _out_channels(model, head) / max(before, 1)
