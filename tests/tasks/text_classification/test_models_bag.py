"""The fastText bag of n-grams: hashing, padding, all-padding rows, the unigram-only form, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchkiln.components.models import MODELS
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.text_classification.models import create_text_model
from torchkiln.tasks.text_classification.models_bag import PRIME, FastText

VOCAB, PAD, BUCKETS, CLASSES = 50, 1, 97, 3


def build(**args: object) -> FastText:
    torch.manual_seed(0)
    model = create_text_model(
        "fasttext", num_classes=CLASSES, vocab_size=VOCAB, pad_id=PAD, max_length=16,
        args={"embed_dim": 8, "buckets": BUCKETS} | args,
    )  # fmt: skip
    assert isinstance(model, FastText)
    return model.eval()


def test_registered_with_blocks_and_head() -> None:
    assert MODELS.of("text-classification").get("fasttext").task == "text-classification"
    model = build()
    assert model.blocks[0].weight.shape == (VOCAB + BUCKETS, 8)
    assert build(ngrams=1).blocks[0].weight.shape == (VOCAB, 8)  # no bigram rows
    split = {id(p) for p in [*model.blocks.parameters(), *model.head.parameters()]}
    assert split == {id(p) for p in model.parameters()}


def test_bag_reads_tokens_then_hashed_bigrams() -> None:
    ids = torch.tensor([[5, 7, 9, PAD, PAD], [3, PAD, PAD, PAD, PAD]])
    rows, real = build().bag(ids)
    bigram = [VOCAB + (a * PRIME + b) % BUCKETS for a, b in [(5, 7), (7, 9)]]
    assert rows[0].tolist() == [5, 7, 9, PAD, PAD, *bigram, PAD, PAD]
    assert real[0].tolist() == [True] * 3 + [False] * 2 + [True] * 2 + [False] * 2
    assert real[1].tolist() == [True] + [False] * 8  # one token: no bigram
    assert build(ngrams=1).bag(ids)[0].tolist() == ids.tolist()


def test_padding_does_not_change_logits_and_all_padding_is_finite() -> None:
    model = build()
    with torch.no_grad():  # a padding row that is not zero: the mask alone must keep it out
        model.blocks[0].weight[PAD].fill_(3.0)
    ids = torch.tensor([[5, 7, 9, 11, PAD, PAD], [4, 6, PAD, PAD, PAD, PAD], [PAD] * 6])
    together = model(ids)
    for row, n in enumerate([4, 2]):
        torch.testing.assert_close(together[row : row + 1], model(ids[row : row + 1, :n]), atol=1e-6, rtol=0)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[2], model.head[-1].bias)  # nothing to average: the bias alone


def test_bigrams_change_the_logits_of_rows_with_two_tokens() -> None:
    both, words = build(), build(ngrams=1)
    with torch.no_grad():  # the same word rows and head: only the bigrams differ
        both.blocks[0].weight[:VOCAB] = words.blocks[0].weight
        both.head.load_state_dict(words.head.state_dict())
    ids = torch.tensor([[5, 7, 9], [3, PAD, PAD]])
    with torch.inference_mode():
        a, b = both(ids), words(ids)
    assert not torch.allclose(a[0], b[0])  # bigrams (5, 7) and (7, 9) join the mean
    torch.testing.assert_close(a[1], b[1])  # a single word has no bigram


def test_trains_the_embedding_and_the_head() -> None:
    model = build().train()
    ids = torch.tensor([[5, 7, 9], [3, 4, PAD]])
    F.cross_entropy(model(ids), torch.tensor([0, 2])).backward()
    grad = model.blocks[0].weight.grad
    assert grad is not None and model.head[-1].weight.grad is not None
    touched = grad.abs().sum(1).nonzero().flatten().tolist()
    assert set(touched) == {
        3,
        4,
        5,
        7,
        9,
        *(VOCAB + (a * PRIME + b) % BUCKETS for a, b in [(5, 7), (7, 9), (3, 4)]),
    }


def test_bad_arguments_fail_with_the_setting_named() -> None:
    with pytest.raises(ConfigError) as info:
        build(ngrams=3)
    assert str(info.value) == (
        "The 'ngrams' parameter of fasttext must be 1 (words) or 2 (words and bigrams). Got 3 instead. "
        "Set model.args.ngrams to 1 or 2."
    )
    with pytest.raises(ConfigError) as info:
        build(buckets=0)
    assert str(info.value) == (
        "The 'buckets' parameter of fasttext must be an int >= 1. Got 0 instead. "
        "Set model.args.buckets to a positive value."
    )
    with pytest.raises(ConfigError, match=r"^Model 'fasttext' has no packaged pretrained weights\."):
        create_text_model(
            "fasttext", num_classes=2, vocab_size=VOCAB, pad_id=PAD, max_length=8, pretrained=True
        )
