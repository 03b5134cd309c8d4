"""Fine-tuning BERT-family encoders (the packaged MiniLM by default) through Hugging Face ``transformers``.

``transformers`` is imported only when ``minilm`` is built, so importing torchkiln stays cheap.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Literal

import torch
from torch import nn

from torchkiln.components.models import register_model
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.text_classification.embeddings import INSTALL_HINT, pretrained_dir
from torchkiln.tasks.text_classification.models import (
    TASK,
    TextClassifier,
    check_ranges,
    masked_mean,
)

# --- MiniLM and other BERT-family models (Hugging Face transformers) ----------------------------------------


def hf_config(pretrained: bool | str) -> dict[str, Any]:
    """The ``config.json`` of a model folder, as a dict; what ``minilm`` needs to rebuild without the folder.

    Args:
        pretrained: ``True`` for the packaged MiniLM, or the path of a local Hugging Face model folder.

    Returns:
        The parsed ``config.json``.

    Raises:
        ConfigError: the folder has no ``config.json``, or the packaged model is not installed.

    Example:
        >>> hf_config(True)["hidden_size"]
        384
    """
    return json.loads((pretrained_dir(pretrained) / "config.json").read_text())


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"Model 'minilm' needs the optional package transformers, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        ) from None
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in kiln's output
    return transformers


class HFTextClassifier(TextClassifier):
    """A Hugging Face encoder whose embeddings and layers are the ``blocks``, then pooling and a head.

    The encoder object itself is kept out of the module tree: its every tensor already sits in ``blocks``,
    and registering it too would store each weight twice in ``state_dict()`` (shared tensors, which
    safetensors refuses). ``train()`` is forwarded to it by hand.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, *, pad_id: int, pool: str) -> None:
        super().__init__([encoder.embeddings, *_encoder_layers(encoder)], head, pad_id=pad_id)
        self._encoder = (encoder,)  # a tuple, so nn.Module does not register it
        self.pool = pool
        self._token_types = "token_type_ids" in _forward_params(encoder)
        self.train()  # from_pretrained returns eval mode; nn.Module starts in train mode

    def train(self, mode: bool = True) -> HFTextClassifier:
        super().train(mode)
        self._encoder[0].train(mode)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id  # (B, L)
        extra = {"token_type_ids": torch.zeros_like(ids)} if self._token_types else {}
        states = self._encoder[0](input_ids=ids, attention_mask=mask.long(), **extra).last_hidden_state
        pooled = masked_mean(states, mask) if self.pool == "mean" else states[:, 0]  # (B, hidden)
        return self.head(pooled)


def _forward_params(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


def _encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    # BERT, RoBERTa, ELECTRA, MiniLM: encoder.layer; DistilBERT: transformer.layer.
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(encoder, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and hasattr(encoder, "embeddings"):
            return layers
    raise ConfigError(
        f"The model folder holds a {type(encoder).__name__}, which has no embeddings and encoder layers "
        f"where BERT-family models keep them. Set model.pretrained to a BERT-family encoder folder."
    )


def _check_covered(model: HFTextClassifier, encoder: nn.Module) -> None:
    """Every encoder tensor must live in ``blocks``, or ``.to()`` and ``state_dict()`` would miss it."""
    own = {id(t) for t in [*model.blocks.parameters(), *model.blocks.buffers()]}
    stray = [n for n, t in [*encoder.named_parameters(), *encoder.named_buffers()] if id(t) not in own]
    if stray:
        raise ConfigError(
            f"The {type(encoder).__name__} in the model folder has tensors outside its embeddings and "
            f"layers (first: '{stray[0]}'), which minilm cannot fine-tune. Use a BERT-family encoder folder."
        )


@register_model(
    "minilm",
    summary="MiniLM-L6 sentence encoder fine-tuned (packaged), or any local BERT-family folder",
    packaged_weights=True,
    own_tokenizer=True,
    task=TASK,
)
def minilm(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    config: dict[str, Any] | None = None,
    pool: Literal["mean", "cls"] = "mean",
    dropout: float = 0.1,
) -> HFTextClassifier:
    """A BERT-family encoder: blocks ``[embeddings, layer 1, ..., layer N]``, head ``dropout -> Linear``.

    Args:
        num_classes: size of the output layer.
        vocab_size: must equal the model's vocabulary size (use the model's own tokenizer).
        pad_id: must equal the model's ``pad_token_id``; attention and pooling skip it.
        max_length: the longest input; at most the model's ``max_position_embeddings``.
        pretrained: ``True`` for the packaged all-MiniLM-L6-v2 (6 layers, width 384), the path of a local
            Hugging Face model folder (``config.json`` + ``model.safetensors``), or ``False`` for random
            weights built from ``config`` (how a bundle is rebuilt before its weights are loaded).
        config: the model's ``config.json`` as a dict (see :func:`hf_config`); needed when ``pretrained`` is
            ``False``, ignored otherwise.
        pool: ``"mean"`` over the tokens, or the first (``[CLS]``) token's state.
        dropout: before the Linear head.

    Raises:
        ConfigError: transformers is not installed, ``config`` is missing, the tokenizer does not fit the
            model, ``max_length`` exceeds its positions, or an argument is out of range.

    Example:
        >>> model = minilm(num_classes=2, vocab_size=30522, pad_id=0, max_length=128, pretrained=True)
    """
    check_ranges("minilm", rates={"dropout": dropout}, sizes={})
    if pool not in ("mean", "cls"):
        raise ConfigError(f"The 'pool' parameter of minilm must be 'mean' or 'cls'. Got {pool!r} instead.")
    if pretrained:
        config = hf_config(pretrained)
    elif config is None:
        raise ConfigError(
            "Model 'minilm' with model.pretrained: false needs model.args.config, the model's config.json "
            "as a mapping. Set model.pretrained to true or to a local model folder instead."
        )
    _check_tokenizer(config, vocab_size, pad_id)
    positions = config.get("max_position_embeddings", max_length)
    if max_length > positions:
        raise ConfigError(
            f"max_length={max_length} is longer than the {positions} positions the model has. "
            f"Set the text max_length to at most {positions}."
        )
    transformers = _transformers()
    if pretrained:
        # dtype: transformers 5 would otherwise keep the file's dtype, which may be float16.
        encoder = transformers.AutoModel.from_pretrained(
            pretrained_dir(pretrained), local_files_only=True, dtype=torch.float32
        )
    else:
        encoder = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**config))
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # BERT's [CLS] pooler is not used; its weights would get no gradient
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.config.hidden_size, num_classes))
    model = HFTextClassifier(encoder, head, pad_id=pad_id, pool=pool)
    _check_covered(model, encoder)
    return model


def _check_tokenizer(config: dict[str, Any], vocab_size: int, pad_id: int) -> None:
    want = (config.get("vocab_size"), config.get("pad_token_id"))
    if want != (vocab_size, pad_id):
        raise ConfigError(
            f"The tokenizer does not fit the model: the model has vocab_size={want[0]} and "
            f"pad_token_id={want[1]}, the tokenizer gives vocab_size={vocab_size} and pad_id={pad_id}. "
            f"A pretrained text model needs its own tokenizer: use the tokenizer.json of the model folder."
        )
