"""A fastText-style bag of n-grams (Joulin et al. 2016, "Bag of Tricks for Efficient Text Classification").

The text's word and bigram embeddings are averaged and fed to a linear layer. Bigrams are hashed into a
fixed number of buckets, so the model needs no bigram vocabulary: the trained tokenizer's ids are enough.
Everything is tensor arithmetic over the whole batch (no loop over tokens, no shape that depends on the
data), so the model exports to ONNX as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchkiln.components.models import register_model
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.text_classification.models import (
    TASK,
    TextClassifier,
    check_ranges,
    load_weights,
    masked_mean,
)

# Bigram (a, b) -> row vocab_size + (a * PRIME + b) % buckets. A prime above any vocabulary size the config
# allows (1,000,000) keeps (a, b) and (b, a) apart; a * PRIME + b stays far below 2**63 in int64.
PRIME = 1_000_003


class FastText(TextClassifier):
    """Mean of the text's unigram and hashed bigram embeddings -> dropout -> Linear.

    ``blocks`` is the one embedding table: rows ``0 .. vocab_size - 1`` for the tokens, then ``buckets``
    rows for the hashed bigrams (with ``ngrams=2``).
    """

    def __init__(
        self, blocks: Sequence[nn.Module], head: nn.Module, *, pad_id: int, vocab_size: int, buckets: int
    ) -> None:
        super().__init__(blocks, head, pad_id=pad_id)
        self.vocab_size, self.buckets = vocab_size, buckets  # buckets == 0: unigrams only

    def bag(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the embedding table that a text's n-grams read, and which of them are real.

        Args:
            ids: right-padded token ids ``(B, L)``, int64.

        Returns:
            ``(rows, real)``: rows ``(B, T)`` int64 and real ``(B, T)`` bool, with ``T = L`` for unigrams
            and ``T = 2L - 1`` with bigrams (the pair of steps ``t, t + 1`` is real when both are tokens).
            A padded slot reads the padding row, which ``real`` leaves out of the mean.

        Example:
            >>> rows, real = model.bag(torch.tensor([[5, 7, 0]]))  # pad_id 0: rows 5, 7, 0, hash(5, 7), ...
        """
        tokens = ids != self.pad_id  # (B, L)
        if not self.buckets:
            return ids, tokens
        first, second = ids[:, :-1], ids[:, 1:]  # (B, L - 1): consecutive pairs
        pairs = tokens[:, :-1] & tokens[:, 1:]
        hashed = self.vocab_size + (first * PRIME + second) % self.buckets
        hashed = hashed.masked_fill(~pairs, self.pad_id)
        return torch.cat([ids, hashed], dim=1), torch.cat([tokens, pairs], dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, real = self.bag(ids)
        # An all-padding row has nothing to average: masked_mean gives zeros, and the logits are the bias.
        return self.head(masked_mean(self.blocks[0](rows), real))  # (B, T, D) -> (B, D) -> (B, C)


@register_model("fasttext", summary="fastText: mean of word and hashed bigram embeddings, linear", task=TASK)
def fasttext(
    *,
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    pretrained: bool | str = False,
    embed_dim: int = 64,
    ngrams: int = 2,
    buckets: int = 100_000,
    dropout: float = 0.0,
) -> FastText:
    """fastText classifier: blocks ``[embedding]`` (tokens, then hashed bigrams), head ``dropout -> Linear``.

    Args:
        num_classes: size of the output layer.
        vocab_size: the tokenizer's vocabulary size: the first ``vocab_size`` rows of the embedding.
        pad_id: the id that right-pads each row; padding is left out of the mean.
        max_length: unused; the bag takes any length.
        pretrained: path to a weights file saved from ``fasttext`` with the same vocabulary, ``buckets`` and
            ``embed_dim`` (its head is dropped), or ``False``.
        embed_dim: width of the n-gram embeddings (fastText's ``dim``).
        ngrams: ``1`` for words only, ``2`` to add the text's bigrams (consecutive token pairs).
        buckets: rows the bigrams are hashed into (fastText's ``bucket``); ignored when ``ngrams`` is 1.
            The bundle holds ``(vocab_size + buckets) * embed_dim`` floats: 30 MB with the defaults and a
            16k vocabulary.
        dropout: on the averaged embedding, before the Linear head.

    Raises:
        ConfigError: an argument is out of range, or ``pretrained`` is ``True`` or does not fit.

    Example:
        >>> model = fasttext(num_classes=2, vocab_size=1000, pad_id=0, max_length=128, buckets=10_000)
    """
    check_ranges("fasttext", rates={"dropout": dropout}, sizes={"embed_dim": embed_dim, "buckets": buckets})
    if ngrams not in (1, 2):
        raise ConfigError(
            f"The 'ngrams' parameter of fasttext must be 1 (words) or 2 (words and bigrams). Got {ngrams} "
            f"instead. Set model.args.ngrams to 1 or 2."
        )
    rows = vocab_size + (buckets if ngrams == 2 else 0)
    embedding = nn.Embedding(rows, embed_dim, padding_idx=pad_id)
    # fastText's initialisation: uniform in +-1/dim, so a mean of n rows starts near zero.
    nn.init.uniform_(embedding.weight, -1.0 / embed_dim, 1.0 / embed_dim)
    with torch.no_grad():
        embedding.weight[pad_id].zero_()
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))
    model = FastText(
        [embedding], head, pad_id=pad_id, vocab_size=vocab_size, buckets=buckets if ngrams == 2 else 0
    )
    return load_weights(model, "fasttext", pretrained)
