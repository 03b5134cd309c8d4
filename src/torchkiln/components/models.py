"""The model registry and the one shape every classifier takes: ordered backbone blocks, then a head.

Keeping ``blocks`` ordered from input to output is what makes transfer learning uniform:
freeze the backbone, unfreeze the last N blocks, give the backbone a smaller learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkiln.core.errors import ConfigError
from torchkiln.core.registry import Entry, Registry, check_kwargs


class Classifier(nn.Module):
    """``head(blocks(x))``; ``blocks`` is the backbone, ordered from input to output.

    Args:
        blocks: backbone stages; ``x: (B, C, H, W) -> features``.
        head: features -> logits ``(B, num_classes)``.
    """

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


ModelBuilder = Callable[..., Classifier]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        builder: for image models ``builder(*, num_classes, in_channels, image_size, pretrained, **args)
            -> Classifier``; for text models ``builder(*, num_classes, vocab_size, pad_id, max_length,
            pretrained, **args) -> nn.Module`` (see :mod:`torchkiln.tasks.text_classification.models`);
            for forecasters
            ``builder(*, lookback, horizon, num_targets, num_covariates, num_quantiles, season, **args)`` (see
            :mod:`torchkiln.tasks.forecasting.models`).
        summary: one line for ``kiln list models``.
        default_image_size: input size used when the config gives none and the data sizes vary.
        pretrained_stats: (mean, std) the packaged weights were trained with, if any.
        packaged_weights: whether ``pretrained: true`` works without a file.
        in_channels: channel count the architecture needs (3 for ImageNet models), or None if any.
        task: the task kind whose inputs the model takes.
        own_tokenizer: a pretrained text model that only reads its own tokenizer's ids (BERT family).
        packaged_weights_if: for a model whose ``pretrained: true`` depends on its ``model.args`` (a text
            model with ``embeddings: minilm``): whether these args have packaged weights to give.
    """

    builder: ModelBuilder
    summary: str
    default_image_size: int | None = None
    pretrained_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    packaged_weights: bool = False
    in_channels: int | None = None
    task: str = ""
    own_tokenizer: bool = False
    packaged_weights_if: Callable[[Mapping[str, Any]], bool] | None = None

    def has_packaged_weights(self, args: Mapping[str, Any]) -> bool:
        """Whether ``pretrained: true`` means something for a model built with ``args``."""
        return self.packaged_weights or (
            self.packaged_weights_if is not None and self.packaged_weights_if(args)
        )


class ModelRegistry:
    """Registered models by task kind, then by name: a name is unique within a task, not across tasks.

    Each family registers its models (``register_model(..., task=...)``) when it is loaded; ``kiln list
    models`` shows every task's.

    Example:
        >>> MODELS.of("image-classification").get("cnn").summary
    """

    def __init__(self) -> None:
        self._by_task: dict[str, Registry[ModelSpec]] = {}

    def of(self, task: str) -> Registry[ModelSpec]:
        """The models of ``task`` (an empty registry for a task that has none)."""
        return self._by_task.setdefault(task, Registry("model"))

    def add(self, name: str, spec: ModelSpec) -> None:
        self.of(spec.task).add(name, spec, summary=spec.summary)

    def tasks(self) -> list[str]:
        """The task kinds that have models."""
        return sorted(t for t, models in self._by_task.items() if models.names())

    def tasks_with(self, name: str) -> list[str]:
        """The task kinds that have a model called ``name``."""
        return [t for t in self.tasks() if name in self._by_task[t]]

    def __iter__(self) -> Iterator[Entry[ModelSpec]]:
        """Every model, by task kind, then by name."""
        for task in self.tasks():
            yield from self._by_task[task]


MODELS = ModelRegistry()
# Set by torchkiln from the data and the config, never in model.args.
RESERVED_ARGS = frozenset(
    {"num_classes", "in_channels", "image_size", "pretrained", "vocab_size", "pad_id", "max_length"}
    | {"lookback", "horizon", "num_targets", "num_covariates", "num_quantiles", "season"}
)


def register_model(
    name: str,
    *,
    summary: str,
    default_image_size: int | None = None,
    pretrained_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    packaged_weights: bool = False,
    in_channels: int | None = None,
    task: str,
    own_tokenizer: bool = False,
    packaged_weights_if: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register a builder under ``name`` in :data:`MODELS`."""

    def deco(builder: ModelBuilder) -> ModelBuilder:
        spec = ModelSpec(
            builder,
            summary,
            default_image_size,
            pretrained_stats,
            packaged_weights,
            in_channels,
            task,
            own_tokenizer,
            packaged_weights_if,
        )
        MODELS.add(name, spec)
        return builder

    return deco


def check_model(name: str, *, args: dict[str, Any], pretrained: bool | str, task: str) -> ModelSpec:
    """The checks that need no data: name, task, arguments, and where pretrained weights come from.

    Runs at config time so a typo fails before the data is scanned. Returns the model's spec.
    """
    models = MODELS.of(task)
    if name not in models and (others := MODELS.tasks_with(name)):
        fitting = ", ".join(models.names()) or "none"
        raise ConfigError(
            f"Model '{name}' is {'an' if others[0][0] in 'aeiou' else 'a'} {others[0]} model, but the task "
            f"is {task}. Set model.name to one of: "
            f"{fitting} ('kiln list models' describes them)."
        )
    spec = models.get(name)  # an unknown name: did-you-mean among this task's models
    reserved = sorted(set(args) & RESERVED_ARGS)
    if reserved:
        raise ConfigError(
            f"model.args sets '{reserved[0]}', which torchkiln derives from the data or from "
            f"model.pretrained. Remove it from model.args (set data.image_size / data.channels / "
            f"data.lookback / data.horizon / model.pretrained instead)."
        )
    check_kwargs(spec.builder, args, what=f"Model '{name}'", exclude=RESERVED_ARGS)
    if pretrained is True and not spec.has_packaged_weights(args):
        raise ConfigError(
            f"Model '{name}' has no packaged pretrained weights. Set model.pretrained to the path of a "
            f"local .safetensors or .pth file, or to false to train from scratch."
        )
    if isinstance(pretrained, str) and not Path(pretrained).exists():
        what = "A model folder" if spec.own_tokenizer else "Weights file"
        expected = (
            "an existing Hugging Face model folder (config.json, model.safetensors, tokenizer.json)"
            if spec.own_tokenizer
            else "an existing .safetensors or .pth file"
        )
        raise ConfigError(
            f"{what} '{pretrained}' does not exist. Set model.pretrained to {expected}, or to false."
        )
    return spec


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Weights file '{path}' does not exist. Set model.pretrained to an existing .safetensors "
            f"or .pth file, or to false."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"Weights file '{path}' could not be read as a weights-only state dict ({exc}). "
            f"Save it with torch.save(model.state_dict(), path) or as .safetensors."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"Weights file '{path}' holds a {type(state).__name__}, not a state dict.")
    return state


def load_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], *, skip_prefixes: Sequence[str]
) -> None:
    """Load ``state`` into ``model``, leaving out the old classifier head (``skip_prefixes``).

    Raises:
        ConfigError: a backbone tensor is missing or has the wrong shape.
    """
    kept = {k: v for k, v in state.items() if not any(k.startswith(p) for p in skip_prefixes)}
    own = model.state_dict()
    bad = [k for k, v in kept.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ConfigError(
            f"Pretrained weights do not fit the architecture: {len(bad)} tensors have other shapes "
            f"(first: '{bad[0]}'). Use weights saved from the same architecture."
        )
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if not any(k.startswith(p) for p in skip_prefixes)]
    if missing or unexpected:
        raise ConfigError(
            f"Pretrained weights do not match the architecture: {len(missing)} missing "
            f"(first: {missing[:1]}), {len(unexpected)} unexpected (first: {unexpected[:1]}). "
            f"Use weights saved from the same architecture."
        )


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Shrink layers in place to the shapes in ``state``; returns how many tensors changed shape.

    A channel-pruned model keeps its architecture's layer graph but has narrower Conv, BatchNorm,
    Linear and LayerNorm layers. Its bundle stores only safetensors weights, so loading rebuilds the
    original architecture from the config and then resizes each layer to the stored tensors.
    """
    changed = 0
    for prefix, module in model.named_modules():
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        weight_shape = tensors["weight"].shape if "weight" in tensors else None
        for name, t in tensors.items():
            new = state.get(f"{prefix}.{name}" if prefix else name)
            if new is None or new.shape == t.shape:
                continue
            fresh = torch.empty(new.shape, dtype=t.dtype)
            if isinstance(t, nn.Parameter):
                setattr(module, name, nn.Parameter(fresh, requires_grad=t.requires_grad))
            else:
                module.register_buffer(name, fresh)
            changed += 1
        if weight_shape is not None and module.weight.shape != weight_shape:
            _fix_layer_attributes(module)
    return changed


def _fix_layer_attributes(module: nn.Module) -> None:
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels:  # depthwise: one group per channel
            module.groups = w.shape[0]
        module.out_channels = w.shape[0]
        module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = w.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(w.shape)
