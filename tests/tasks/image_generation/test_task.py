"""The generation task's data, requests and answers: seeds, labels, PNGs and the exact errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.core.errors import ConfigError, DataError, PredictError
from torchkiln.tasks.base import RequestLimits, TooManyItemsError, validate
from torchkiln.tasks.image_generation.example import CLASSES, example_config
from torchkiln.tasks.image_generation.task import TASK, GenerateInput, GenerateRequest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gen")
    raw = example_config(root)
    raw["task"]["conditional"] = True
    cfg, data = TASK.prepare(validate(raw))
    return cfg, data


def test_prepare_resolves_classes_size_and_channels(prepared) -> None:
    cfg, data = prepared
    assert cfg.data.classes == list(CLASSES)
    assert (cfg.data.image_size, cfg.data.channels) == (28, 1)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [36, 9, 9]
    assert data.splits["train"].images.dtype == torch.uint8


def test_batches_bring_the_same_noise_whatever_ran_before(prepared) -> None:
    cfg, data = prepared
    loader = TASK.loader(cfg, data, "train", train=True)
    loader.sampler.set_epoch(1)
    first = list(loader)
    loader.sampler.set_epoch(1, start_batch=2)
    torch.manual_seed(123)  # the global RNG plays no part
    resumed = list(loader)
    for a, b in zip(first[2:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    z = first[0][2]
    assert z.shape == (len(first[0][0]), cfg.task.latent_dim + len(CLASSES))  # noise, then one-hot
    assert torch.equal(z[:, -3:].argmax(1), first[0][3])


def test_an_image_depends_on_its_seed_not_on_its_batch(prepared) -> None:
    cfg, _ = prepared
    g = TASK.build_model(cfg).eval()
    together = TASK.preprocess(cfg, [GenerateInput(5, "bar"), GenerateInput(6, "square")])
    alone = TASK.preprocess(cfg, [GenerateInput(6, "square")])
    assert torch.equal(together[1:], alone)
    with torch.inference_mode():
        answers = TASK.postprocess(cfg, g(together), top_k=1, raw=[GenerateInput(5, "bar"), GenerateInput(6)])
    assert [a["label"] for a in answers] == ["bar", CLASSES[6 % 3]]  # no label: the classes in turn
    png = Image.open(io.BytesIO(base64.b64decode(answers[0]["image"])))
    assert (png.size, png.mode) == ((28, 28), "L")
    assert answers[0] | {"image": ""} == {"image": "", "seed": 5, "label": "bar", "width": 28, "height": 28}


def test_requests_decode_to_consecutive_seeds() -> None:
    request = GenerateRequest.model_validate({"n": 3, "seed": 10, "label": "bar"})
    items = TASK.decode_request(request, limits=RequestLimits())
    assert items == [GenerateInput(10, "bar"), GenerateInput(11, "bar"), GenerateInput(12, "bar")]
    drawn = TASK.decode_request(GenerateRequest(n=2), limits=RequestLimits())
    assert drawn[1].seed == drawn[0].seed + 1  # a random first seed, returned in the answers
    with pytest.raises(TooManyItemsError, match="The request has 65 inputs; this server takes at most 64"):
        TASK.decode_request(GenerateRequest(n=65), limits=RequestLimits())


def test_an_unknown_label_is_refused_with_the_classes(prepared) -> None:
    cfg, _ = prepared
    with pytest.raises(PredictError) as info:
        TASK.preprocess(cfg, [GenerateInput(0, "squares")])
    assert str(info.value) == (
        "label 'squares' is not a class of this model. Did you mean 'square'? Expected one of bar, column, "
        "square."
    )


def test_a_label_for_an_unconditional_generator_is_refused(prepared) -> None:
    cfg, _ = prepared
    plain = validate(cfg.model_dump(mode="json") | {"task": cfg.task.model_dump() | {"conditional": False}})
    with pytest.raises(PredictError) as info:
        TASK.preprocess(plain, [GenerateInput(0, "bar")])
    assert str(info.value) == (
        "label 'bar' was given, but this generator is unconditional: it draws from every class at once. "
        "Leave the label out, or train with task.conditional: true."
    )


def test_uploads_are_refused() -> None:
    with pytest.raises(PredictError, match="A generator takes no uploaded files"):
        TASK.decode_uploads([b"x"], limits=RequestLimits())


def test_data_classes_must_exist(tmp_path: Path) -> None:
    raw = example_config(tmp_path)
    raw["data"]["classes"] = ["bar", "circle"]
    with pytest.raises(DataError) as info:
        TASK.prepare(validate(raw))
    assert str(info.value) == (
        f"data.classes names 'circle', which '{raw['data']['path']}' does not hold. Expected some of bar, "
        "column, square. Fix the name or leave it out."
    )


def test_a_subset_of_classes_trains_on_those_only(tmp_path: Path) -> None:
    raw = example_config(tmp_path)
    raw["data"]["classes"] = ["square"]
    _, data = TASK.prepare(validate(raw))
    assert len(data.splits["train"]) == 12 and set(data.splits["train"].labels.tolist()) == {0}


def test_an_image_size_the_dcgan_cannot_draw_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, x=np.zeros((6, 20, 20), np.uint8), y=np.arange(6) % 2)
    with pytest.raises(DataError) as info:
        TASK.prepare(validate({"task": "image-generation", "data": str(path), "runs_dir": str(tmp_path)}))
    assert str(info.value) == (
        f"The images of '{path}' are 20x20; the DCGAN draws square images of 28, 32, 56, 64 pixels. Set "
        "data.image_size to one of them (images are resized and centre-cropped to it)."
    )


def test_a_missing_feature_classifier_fails_before_the_data_loads(tmp_path: Path) -> None:
    raw = example_config(tmp_path)
    raw["task"]["features"] = "fashion-mnist-cn"
    raw["data"]["path"] = str(tmp_path / "not-written-yet.npz")
    with pytest.raises(ConfigError) as info:
        TASK.prepare(validate(raw))
    assert str(info.value).startswith(
        "task.features is 'fashion-mnist-cn', which is neither the built-in feature classifier nor a bundle "
        "folder. Did you mean 'fashion-mnist-cnn'?"
    )
