"""Text classifiers trained from scratch: LSTM/GRU, TextCNN and a small Transformer encoder.

Every model takes right-padded token ids ``(B, L)`` and returns logits ``(B, num_classes)``; padding never
changes a row's logits. Like the image models, each keeps its backbone in ``blocks`` (ordered from input to
output) and its classifier in ``head``, so freezing, gradual unfreezing and layer-wise learning rates work the
same way. Their embeddings start random or from MiniLM's word vectors (``embeddings: minilm``, see
:mod:`~torchkiln.tasks.text_classification.embeddings`). fastText is in
:mod:`~torchkiln.tasks.text_classification.models_bag`; MiniLM itself (Hugging Face ``transformers``) in
:mod:`torchkiln.tasks.text_classification.models_hf`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torchkiln.components.models import check_model, load_backbone_weights, load_state_file, register_model
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.text_classification.embeddings import (
    Embeddings,
    embedding_width,
    init_embedding,
    uses_minilm,
)

TASK = "text-classification"


class TextClassifier(nn.Module):
    """Base of the text models: ``blocks`` is the backbone (input to output), ``head`` gives the logits.

    Subclasses implement ``forward(ids: (B, L) int64) -> (B, num_classes)``.
    """

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module, *, pad_id: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.pad_id = pad_id


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # x: (B, L, D), mask: (B, L) True at tokens. masked_fill, not a product: padded outputs may be NaN.
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(1)
    return total / mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, D)


def check_ranges(model: str, *, rates: dict[str, float], sizes: dict[str, int]) -> None:
    # Checked here rather than in torch so that the message names the model and the setting.
    for arg, rate in rates.items():
        if not 0.0 <= rate < 1.0:
            raise ConfigError(
                f"The '{arg}' parameter of {model} must be a float in [0, 1). Got {rate} instead. "
                f"Set model.args.{arg} to a value such as 0.1."
            )
    for arg, size in sizes.items():
        if size < 1:
            raise ConfigError(
                f"The '{arg}' parameter of {model} must be an int >= 1. Got {size} instead. "
                f"Set model.args.{arg} to a positive value."
            )


def load_weights(
    model: TextClassifier, name: str, pretrained: bool | str, *, packaged: bool = False
) -> TextClassifier:
    """Load a weights file saved from the same architecture into ``model``, leaving out its head.

    Args:
        model: the freshly built model.
        name: its registered name, for messages.
        pretrained: the path of a ``.safetensors`` or ``.pth`` file, or ``False`` (nothing to load).
            ``True`` only with ``packaged``.
        packaged: the builder has already given ``pretrained=True`` its meaning (MiniLM's embeddings).

    Returns:
        ``model``, with the file's backbone weights.

    Raises:
        ConfigError: ``pretrained`` is ``True`` (a from-scratch model has no packaged weights), or the file
            does not fit the architecture.

    Example:
        >>> model = load_weights(model, "lstm", "lstm.safetensors")
    """
    if pretrained is True and not packaged:
        raise ConfigError(
            f"Model '{name}' has no packaged pretrained weights. Set model.pretrained to the path of a "
            f".safetensors or .pth file saved from '{name}', or to false."
        )
    if isinstance(pretrained, str) and pretrained:
        load_backbone_weights(model, load_state_file(pretrained), skip_prefixes=("head.",))
    return model


# --- LSTM / GRU ---------------------------------------------------------------------------------------------


class RNNClassifier(TextClassifier):
    """Embedding -> (bi)directional LSTM or GRU -> features -> dropout -> Linear.

    Features (``pool``): ``last``, the last layer's final forward and backward hidden states; ``max``,
    the element-wise maximum of the outputs over the text's own time steps.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        *,
        pad_id: int,
        pool: Literal["last", "max"] = "last",
        embed_dropout: float = 0.0,
    ) -> None:
        super().__init__(blocks, head, pad_id=pad_id)
        self.pool = pool
        self.embed_drop = nn.Dropout(embed_dropout)  # drops whole embedding features: a regularizer

    def _features(
        self, out: torch.Tensor, hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor], pad: torch.Tensor
    ) -> torch.Tensor:
        if self.pool == "max":  # out: (B, L, directions * H); padded steps never win
            return out.masked_fill(pad[:, : out.shape[1], None], float("-inf")).amax(dim=1)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # LSTM: (h_n, c_n)
        rnn = self.blocks[1]
        directions = 2 if rnn.bidirectional else 1
        # h_n: (num_layers * directions, B, H) -> last layer, forward and backward: (B, directions * H)
        return torch.cat(list(h_n[-directions:]), dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedding, rnn = self.blocks
        pad = ids == self.pad_id
        lengths = (~pad).sum(1).clamp(min=1).cpu()  # pack_padded_sequence wants CPU int64
        x = self.embed_drop(embedding(ids))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, hidden = rnn(packed)  # hidden comes back in the batch's own order
        if self.pool == "max":
            out, _ = pad_packed_sequence(out, batch_first=True, padding_value=float("-inf"))
        return self.head(self._features(out, hidden, _after_first(pad)))

    def forward_unpacked(self, ids: torch.Tensor) -> torch.Tensor:
        """The RNN over the padded tensor without packing; equals :meth:`forward` on rows without padding."""
        embedding, rnn = self.blocks
        out, hidden = rnn(self.embed_drop(embedding(ids)))
        return self.head(self._features(out, hidden, _after_first(ids == self.pad_id)))

    def for_export(self) -> MaskedRNNClassifier:
        """The same model without packed sequences, which the ONNX exporters cannot trace; same outputs."""
        return MaskedRNNClassifier(self)


class MaskedRNNClassifier(nn.Module):
    """An :class:`RNNClassifier`'s exact forward on right-padded rows, from ops ONNX has (LSTM/GRU, Gather).

    Each layer and direction runs as its own one-layer RNN over the whole padded tensor. The forward
    direction sees a row's tokens before its padding, so its outputs at the row's steps are exact. The
    backward direction runs over each row reversed *within its length* (a gather), so it too starts at
    the row's last token. Final states are the outputs at the last real step, not ``h_n``, which has
    run through the padding. Eval only: the weights are copies, and dropout is left out.
    """

    def __init__(self, model: RNNClassifier) -> None:
        super().__init__()
        embedding, rnn = model.blocks
        if not isinstance(rnn, nn.LSTM | nn.GRU):
            raise TypeError(f"expected an LSTM or GRU block, got {type(rnn).__name__}")
        self.embedding, self.head = copy.deepcopy(embedding), copy.deepcopy(model.head)
        self.pad_id, self.pool = model.pad_id, model.pool
        self.directions = 2 if rnn.bidirectional else 1
        self.layers = nn.ModuleList()
        for layer in range(rnn.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                width = rnn.input_size if layer == 0 else rnn.hidden_size * self.directions
                one = type(rnn)(width, rnn.hidden_size, 1, batch_first=True, bias=rnn.bias)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if rnn.bias else 2]:
                    getattr(one, f"{name}_l0").data.copy_(getattr(rnn, f"{name}_l{layer}{suffix}").detach())
                self.layers.append(one)
        self.eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == self.pad_id
        lengths = (~pad).sum(1, keepdim=True).clamp(min=1)  # (B, 1); an all-padding row counts 1 step
        steps = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)  # (1, L)
        # Reversed within each row's length; padded steps stay where they are. Its own inverse.
        flip = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, L)
        x = self.embedding(ids)
        for i in range(0, len(self.layers), self.directions):
            outs = [self.layers[i](x)[0]]
            if self.directions == 2:
                outs.append(_take(self.layers[i + 1](_take(x, flip))[0], flip))
            x = torch.cat(outs, dim=-1)  # (B, L, directions * H)
        if self.pool == "max":
            features = x.masked_fill(_after_first(pad).unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            hidden = x.shape[-1] // self.directions
            last = _take(x[..., :hidden], lengths - 1)[:, 0]  # forward: its output at the last real step
            features = torch.cat([last, x[:, 0, hidden:]], dim=-1) if self.directions == 2 else last
        return self.head(features)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, t]]`` for each row: x (B, L, D), index (B, T) -> (B, T, D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _after_first(pad: torch.Tensor) -> torch.Tensor:
    """The padding mask without the first step, which an all-padding row keeps (its length counts as 1)."""
    return pad & (torch.arange(pad.shape[1], device=pad.device) > 0)


def _rnn(
    kind: type[nn.LSTM | nn.GRU],
    name: str,
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    pretrained: bool | str,
    embed_dim: int | None,
    hidden_size: int,
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    pool: Literal["last", "max"],
    embed_dropout: float,
    embeddings: Embeddings,
    freeze_embeddings: bool,
) -> RNNClassifier:
    embed_dim = embedding_width(name, "embed_dim", embed_dim, embeddings=embeddings, default=128)
    sizes = {"embed_dim": embed_dim, "hidden_size": hidden_size, "num_layers": num_layers}
    check_ranges(name, rates={"dropout": dropout, "embed_dropout": embed_dropout}, sizes=sizes)
    if pool not in ("last", "max"):
        raise ConfigError(f"Model '{name}': pool must be 'last' or 'max'; got {pool!r}. Set model.args.pool.")
    rnn = kind(
        embed_dim,
        hidden_size,
        num_layers,
        batch_first=True,
        bidirectional=bidirectional,
        dropout=dropout if num_layers > 1 else 0.0,  # between layers only
    )
    blocks = [nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id), rnn]
    width = (2 if bidirectional else 1) * hidden_size
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))
    model = RNNClassifier(blocks, head, pad_id=pad_id, pool=pool, embed_dropout=embed_dropout)
    init_embedding(blocks[0], name, embeddings=embeddings, pretrained=pretrained, freeze=freeze_embeddings)
    return load_weights(model, name, pretrained, packaged=embeddings == "minilm")


@register_model(
    "lstm", summary="Bidirectional LSTM over packed sequences", task=TASK, packaged_weights_if=uses_minilm
)
def lstm(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    embed_dim: int | None = None,
    hidden_size: int = 128,
    num_layers: int = 1,
    bidirectional: bool = True,
    dropout: float = 0.3,
    pool: Literal["last", "max"] = "last",
    embed_dropout: float = 0.0,
    embeddings: Embeddings = "random",
    freeze_embeddings: bool = False,
) -> RNNClassifier:
    """LSTM classifier: blocks ``[embedding, lstm]``, head ``dropout -> Linear``.

    Args:
        num_classes: size of the output layer.
        vocab_size: rows of the embedding; ``pad_id`` is its padding row.
        pad_id: the id that right-pads each row; padded steps are skipped (packed sequences).
        max_length: unused; an LSTM takes any length.
        pretrained: path to a weights file saved from ``lstm`` (its head is dropped), ``False``, or, with
            ``embeddings: minilm``, ``True``: copy MiniLM's word embeddings (the text task sets this).
        embed_dim: width of the token embeddings: 128 by default, 384 (MiniLM's) with ``minilm``.
        hidden_size: LSTM width per direction.
        num_layers: stacked LSTM layers; ``dropout`` also applies between them.
        bidirectional: read both ways; features are the final forward and backward hidden states.
        dropout: before the Linear head.
        pool: ``last`` (final hidden states) or ``max`` (max over the outputs of the text's time steps).
        embed_dropout: dropout on the token embeddings.
        embeddings: ``random`` (learned from scratch) or ``minilm``: MiniLM's word embeddings, which
            need MiniLM's tokenizer (vocab_size 30522; the text task picks it).
        freeze_embeddings: keep the token embeddings as they start (MiniLM's vectors stay as they are).

    Raises:
        ConfigError: an argument is out of range, ``pretrained`` is ``True`` with random embeddings or a
            file that does not fit, or ``minilm`` with another width or tokenizer, or MiniLM not installed.

    Example:
        >>> model = lstm(num_classes=2, vocab_size=1000, pad_id=0, max_length=128)
        >>> tuned = lstm(num_classes=2, vocab_size=30522, pad_id=0, max_length=64, pretrained=True,
        ...              embeddings="minilm")
    """
    return _rnn(
        nn.LSTM,
        "lstm",
        num_classes=num_classes,
        vocab_size=vocab_size,
        pad_id=pad_id,
        pretrained=pretrained,
        embed_dim=embed_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=dropout,
        pool=pool,
        embed_dropout=embed_dropout,
        embeddings=embeddings,
        freeze_embeddings=freeze_embeddings,
    )


@register_model(
    "gru", summary="Bidirectional GRU over packed sequences", task=TASK, packaged_weights_if=uses_minilm
)
def gru(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    embed_dim: int | None = None,
    hidden_size: int = 128,
    num_layers: int = 1,
    bidirectional: bool = True,
    dropout: float = 0.3,
    pool: Literal["last", "max"] = "last",
    embed_dropout: float = 0.0,
    embeddings: Embeddings = "random",
    freeze_embeddings: bool = False,
) -> RNNClassifier:
    """GRU classifier: blocks ``[embedding, gru]``; same head and arguments (embeddings included) as
    :func:`lstm`.

    Example:
        >>> model = gru(num_classes=2, vocab_size=1000, pad_id=0, max_length=128, hidden_size=64)
    """
    return _rnn(
        nn.GRU,
        "gru",
        num_classes=num_classes,
        vocab_size=vocab_size,
        pad_id=pad_id,
        pretrained=pretrained,
        embed_dim=embed_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=dropout,
        pool=pool,
        embed_dropout=embed_dropout,
        embeddings=embeddings,
        freeze_embeddings=freeze_embeddings,
    )


# --- TextCNN ------------------------------------------------------------------------------------------------


class TextCNN(TextClassifier):
    """Kim (2014): parallel Conv1d over the embeddings, ReLU, max over the windows that hold tokens."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedding, convs = self.blocks
        # widest - 1 more padding gives every kernel at least one window. Always, not only for short
        # rows: a shape-dependent branch would be frozen into an exported graph at the example's length.
        widest = max(conv.kernel_size[0] for conv in convs)
        ids = F.pad(ids, (0, widest - 1), value=self.pad_id)
        tokens = (ids != self.pad_id).sum(1, keepdim=True)  # (B, 1)
        x = embedding(ids).transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in convs:
            k = conv.kernel_size[0]
            c = F.relu(conv(x))  # (B, F, L - k + 1); window t covers tokens t .. t + k - 1
            # Keep the windows inside the row's tokens; a row shorter than k keeps its first window.
            # Either way the kept windows do not depend on how much padding follows.
            starts = torch.arange(c.shape[-1], device=ids.device)
            keep = starts < (tokens - k + 1).clamp(min=1)  # (B, L - k + 1)
            pooled.append(c.masked_fill(~keep.unsqueeze(1), float("-inf")).amax(-1))  # (B, F)
        return self.head(torch.cat(pooled, dim=-1))


@register_model(
    "textcnn",
    summary="TextCNN (Kim 2014): parallel 1-D convolutions, max over time",
    task=TASK,
    packaged_weights_if=uses_minilm,
)
def textcnn(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    embed_dim: int | None = None,
    filters: int = 100,
    kernel_sizes: Sequence[int] = (3, 4, 5),
    dropout: float = 0.5,
    embeddings: Embeddings = "random",
    freeze_embeddings: bool = False,
) -> TextCNN:
    """TextCNN: blocks ``[embedding, convs]``, head ``dropout -> Linear``.

    Args:
        num_classes: size of the output layer.
        vocab_size: rows of the embedding; ``pad_id`` is its padding row.
        pad_id: the id that right-pads each row; windows over padding are left out of the max.
        max_length: unused; inputs shorter than the widest kernel are padded inside the model.
        pretrained: path to a weights file saved from ``textcnn`` (its head is dropped), ``False``, or,
            with ``embeddings: minilm``, ``True``: copy MiniLM's word embeddings.
        embed_dim: width of the token embeddings: 128 by default, 384 (MiniLM's) with ``minilm``.
        filters: output channels of each convolution.
        kernel_sizes: one convolution per window width.
        dropout: before the Linear head.
        embeddings: ``random`` or ``minilm`` (MiniLM's word embeddings and tokenizer), as for :func:`lstm`.
        freeze_embeddings: keep the token embeddings as they start.

    Raises:
        ConfigError: an argument is out of range, ``pretrained`` is ``True`` with random embeddings or a
            file that does not fit, or ``minilm`` with another width or tokenizer, or MiniLM not installed.

    Example:
        >>> model = textcnn(num_classes=2, vocab_size=1000, pad_id=0, max_length=128)
    """
    if not kernel_sizes:
        raise ConfigError("textcnn needs at least one kernel size. Set model.args.kernel_sizes: [3, 4, 5].")
    embed_dim = embedding_width("textcnn", "embed_dim", embed_dim, embeddings=embeddings, default=128)
    sizes = {"embed_dim": embed_dim, "filters": filters} | {"kernel_sizes": min(kernel_sizes)}
    check_ranges("textcnn", rates={"dropout": dropout}, sizes=sizes)
    convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, k) for k in kernel_sizes)
    embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
    init_embedding(
        embedding, "textcnn", embeddings=embeddings, pretrained=pretrained, freeze=freeze_embeddings
    )
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(filters * len(kernel_sizes), num_classes))
    model = TextCNN([embedding, convs], head, pad_id=pad_id)
    return load_weights(model, "textcnn", pretrained, packaged=embeddings == "minilm")


# --- Transformer --------------------------------------------------------------------------------------------


class PositionalEmbedding(nn.Module):
    """``embedding(ids) * sqrt(d_model)`` + the sinusoidal encoding of Vaswani et al. (2017), then dropout."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int, max_length: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        # Unit-variance inputs after the sqrt(d_model) scale, as in the paper.
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(d_model)
        position = torch.arange(max_length).unsqueeze(1)  # (max_length, 1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_length, d_model)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)  # a function of the config, not a weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length, limit = ids.shape[1], self.pe.shape[0]
        if length > limit:
            raise DataError(
                f"The input has {length} tokens, but the transformer model was built for at most "
                f"max_length={limit}. Truncate inputs to {limit} tokens, or train with a larger max_length."
            )
        return self.dropout(self.embedding(ids) * self.scale + self.pe[:length])  # (B, L, d_model)


class TransformerClassifier(TextClassifier):
    """Pre-norm Transformer encoder -> mean over the tokens -> LayerNorm -> dropout -> Linear."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == self.pad_id  # (B, L), True where attention must not look
        x = self.blocks[0](ids)  # (B, L, d_model)
        for layer in self.blocks[1:]:
            x = layer(x, src_key_padding_mask=pad)
        return self.head(masked_mean(x, ~pad))


@register_model(
    "transformer",
    summary="Small Transformer encoder trained from scratch, mean-pooled",
    task=TASK,
    packaged_weights_if=uses_minilm,
)
def transformer(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    d_model: int | None = None,
    nhead: int = 4,
    num_layers: int = 2,
    dim_feedforward: int = 256,
    dropout: float = 0.1,
    embeddings: Embeddings = "random",
    freeze_embeddings: bool = False,
) -> TransformerClassifier:
    """Transformer encoder: blocks ``[embedding + positions, layer 1, ..., layer N]``, head
    ``LayerNorm -> dropout -> Linear`` on the mean of the token states.

    Args:
        num_classes: size of the output layer.
        vocab_size: rows of the embedding; ``pad_id`` is its padding row.
        pad_id: the id that right-pads each row; attention and pooling skip it.
        max_length: the longest input (size of the positional encoding).
        pretrained: path to a weights file saved from ``transformer`` (its head is dropped), ``False``,
            or, with ``embeddings: minilm``, ``True``: copy MiniLM's word embeddings.
        d_model: width of the token states; a multiple of ``nhead``. 128 by default, 384 (MiniLM's) with
            ``minilm``.
        nhead: attention heads per layer.
        num_layers: encoder layers (pre-norm, GELU).
        dim_feedforward: hidden width of each layer's MLP.
        dropout: on the embeddings, inside each layer, and before the Linear head.
        embeddings: ``random`` or ``minilm`` (MiniLM's word embeddings and tokenizer), as for :func:`lstm`;
            MiniLM's vectors are scaled by ``sqrt(d_model)`` like random ones (their std, 0.056, becomes
            about 1).
        freeze_embeddings: keep the token embeddings as they start.

    Raises:
        ConfigError: an argument is out of range, ``pretrained`` is ``True`` with random embeddings or a
            file that does not fit, or ``minilm`` with another width or tokenizer, or MiniLM not installed.

    Example:
        >>> model = transformer(num_classes=2, vocab_size=1000, pad_id=0, max_length=256)
    """
    d_model = embedding_width("transformer", "d_model", d_model, embeddings=embeddings, default=128)
    sizes = {"d_model": d_model, "nhead": nhead, "num_layers": num_layers, "dim_feedforward": dim_feedforward}
    check_ranges("transformer", rates={"dropout": dropout}, sizes=sizes | {"max_length": max_length})
    if d_model % nhead:
        raise ConfigError(
            f"The 'd_model' parameter of transformer must be a multiple of nhead={nhead}. Got {d_model} "
            f"instead. Set model.args.d_model to {nhead * max(1, round(d_model / nhead))}."
        )
    layers = [
        nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        for _ in range(num_layers)
    ]
    positions = PositionalEmbedding(vocab_size, d_model, pad_id, max_length, dropout)
    # After PositionalEmbedding's own initialisation, so MiniLM's vectors are the ones kept.
    init_embedding(
        positions.embedding,
        "transformer",
        embeddings=embeddings,
        pretrained=pretrained,
        freeze=freeze_embeddings,
    )
    head = nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(dropout), nn.Linear(d_model, num_classes))
    model = TransformerClassifier([positions, *layers], head, pad_id=pad_id)
    return load_weights(model, "transformer", pretrained, packaged=embeddings == "minilm")


def create_text_model(
    name: str,
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    args: dict[str, Any] | None = None,
) -> TextClassifier:
    """Build a registered text model; the text counterpart of
    :func:`torchkiln.tasks.image_classification.models.create_model`.

    Args:
        name: a text-classification name from ``kiln list models``.
        num_classes: size of the output layer.
        vocab_size: the tokenizer's vocabulary size.
        pad_id: the tokenizer's padding id.
        max_length: the longest input, in tokens.
        pretrained: ``True`` for packaged weights, a path for local weights, ``False`` for random.
        args: model-specific keyword arguments, checked against the builder's signature.

    Raises:
        RegistryError: unknown model name or argument.
        ConfigError: the model is not a text model, or pretrained weights cannot be had.

    Example:
        >>> model = create_text_model("lstm", num_classes=2, vocab_size=1000, pad_id=0, max_length=64)
    """
    spec = check_model(name, args=args or {}, pretrained=pretrained, task=TASK)
    sizes = {"num_classes": num_classes, "vocab_size": vocab_size, "pad_id": pad_id, "max_length": max_length}
    return spec.builder(**sizes, pretrained=pretrained, **(args or {}))
