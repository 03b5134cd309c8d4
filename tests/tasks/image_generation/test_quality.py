"""GAN quality figures: FID/KID against torchmetrics and a closed form, precision/recall on known sets, the
feature classifier (shapes, refusals, the packaged bundle's accuracy) and the per-epoch metric."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from torchkiln.artifacts.bundle import save_bundle
from torchkiln.components.catalog import load_fashion_mnist
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.base import get_task, validate
from torchkiln.tasks.image_generation.example import example_config
from torchkiln.tasks.image_generation.quality import (
    REFERENCE_FEATURES,
    ClassifierFeatures,
    GenerationQuality,
    extract,
    feature_bundle_path,
    generative_quality,
    load_features,
    nearest_neighbours,
    real_vs_real,
)

FAST = {"kid_subset_size": 200, "kid_subsets": 10}  # KID's defaults (1000 x 50) cost seconds


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance of Gaussians fitted to ``a`` and ``b`` (Heusel et al. 2017), with sqrtm."""
    x, y = a.numpy(), b.numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.fixture(scope="module")
def features() -> ClassifierFeatures:
    return load_features(REFERENCE_FEATURES)


@pytest.fixture(scope="module")
def fashion_test() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_fashion_mnist()
    test = np.flatnonzero(data.splits == "test")[:300]
    return torch.from_numpy(data.images[test]).unsqueeze(1), torch.from_numpy(data.labels[test])


def test_fid_is_zero_on_identical_sets_and_the_squared_shift_between_shifted_ones() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = gaussian(600, 8, 0)
    shift = torch.linspace(-1, 1, 8, dtype=torch.float64)
    fake = real + shift  # the same covariance: FID = ||shift||^2 exactly
    assert generative_quality(real, real.clone(), **FAST)["fid"] == pytest.approx(0.0, abs=1e-6)
    fid = generative_quality(real, fake, **FAST)["fid"]
    assert fid == pytest.approx(float(shift.square().sum()), rel=1e-6)
    assert fid == pytest.approx(scipy_fid(real, fake), rel=1e-6)

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    other = gaussian(600, 8, 1) * 1.5 + 0.3  # another covariance too: the trace term matters
    direct = FrechetInceptionDistance(feature=Identity())
    direct.update(real, real=True)
    direct.update(other, real=False)
    ours = generative_quality(real, other, **FAST)["fid"]
    assert ours == pytest.approx(float(direct.compute()), rel=1e-6)
    assert ours == pytest.approx(scipy_fid(real, other), rel=1e-4)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one() -> None:
    real = gaussian(600, 8, 0)
    same = generative_quality(real, real.clone(), **FAST)
    # Identical sets share items between the subsets, whose self-similarity biases KID a little below 0.
    assert abs(same["kid"]) < 0.05
    fresh = generative_quality(real, gaussian(600, 8, 1), **FAST)  # the same distribution, other items
    assert abs(fresh["kid"]) < 3 * fresh["kid_std"] + 0.01
    shifted = generative_quality(real, real + 1.0, **FAST)
    assert shifted["kid"] > 0.5 and shifted["kid"] > 10 * shifted["kid_std"]


def test_figures_repeat_with_the_seed() -> None:
    real, fake = gaussian(400, 8, 0), gaussian(400, 8, 1) + 0.2
    first = generative_quality(real, fake, **FAST, seed=3)
    assert generative_quality(real, fake, **FAST, seed=3) == first
    assert generative_quality(real, fake, **FAST, seed=4)["kid"] != first["kid"]  # other subsets
    assert first["n_real"] == first["n_fake"] == 400


def test_precision_and_recall_on_identical_shifted_and_collapsed_sets() -> None:
    real = gaussian(500, 8, 0)
    same = generative_quality(real, real.clone(), **FAST)
    assert same["precision"] == same["recall"] == 1.0
    far = generative_quality(real, real + 3.0, **FAST)
    assert far["precision"] < 0.5 and far["recall"] < 0.5
    collapsed = generative_quality(real, torch.zeros(500, 8, dtype=torch.float64), **FAST)
    assert collapsed["precision"] == 1.0  # every fake sits at the data's centre: realistic...
    assert collapsed["recall"] == 0.0  # ... and covers none of it (mode collapse)


def test_kid_subset_size_is_clamped_and_too_few_items_are_refused() -> None:
    figures = generative_quality(gaussian(50, 4, 0), gaussian(30, 4, 1), kid_subset_size=1000, kid_subsets=5)
    assert math.isfinite(figures["kid"])
    with pytest.raises(ValueError, match=r"at least k \+ 1 = 4 items per set; got 3 real"):
        generative_quality(gaussian(3, 4, 0), gaussian(30, 4, 1))


def test_nearest_neighbours_finds_the_copies() -> None:
    pool = gaussian(300, 8, 0)
    queries = pool[[7, 42, 99]] + 1e-4
    distances, indices = nearest_neighbours(queries, pool, k=2, chunk=2)
    assert indices[:, 0].tolist() == [7, 42, 99]
    assert (distances[:, 0] < 1e-3).all() and (distances[:, 1] > distances[:, 0]).all()


def test_real_vs_real_draws_n_of_each() -> None:
    figures = real_vs_real(gaussian(800, 8, 0), gaussian(500, 8, 1), n=300, seed=0)
    assert figures["n_real"] == figures["n_fake"] == 300
    assert figures["fid"] < 0.5 and figures["precision"] > 0.8 and figures["recall"] > 0.8


def test_the_packaged_classifier_classifies_real_test_images(features, fashion_test) -> None:
    images, labels = fashion_test
    logits = features.model(images[:100])
    assert (logits.argmax(1) == labels[:100]).float().mean() >= 0.85
    assert features.num_features == 128 and not features.training
    assert not any(p.requires_grad for p in features.parameters())


def test_features_of_grey_28_and_rgb_32_images(features, fashion_test) -> None:
    grey = fashion_test[0][:6]  # (6, 1, 28, 28)
    f = features(grey)
    assert f.shape == (6, 128) and f.dtype == torch.float32
    rgb = torch.nn.functional.pad(grey, (2, 2, 2, 2)).expand(-1, 3, -1, -1)  # (6, 3, 32, 32), grey as RGB
    g = features(rgb)
    assert g.shape == (6, 128)
    assert torch.nn.functional.cosine_similarity(f, g).mean() > 0.8  # the same garments, framed wider
    assert extract(features, torch.cat([grey] * 3), batch_size=4).shape == (18, 128)


def test_the_per_epoch_metric(features, fashion_test) -> None:
    images = fashion_test[0]
    metric = GenerationQuality(features, max_items=200)
    assert metric.empty() and set(metric.compute()) == {"fid", "kid", "precision", "recall"}
    assert list(metric.state_dict()) == ["real", "fake"]  # the classifier is no part of a checkpoint
    with torch.inference_mode():  # as the engine validates
        for i in range(0, 300, 100):
            metric.update(images[i : i + 100], images.flip(0)[i : i + 100].roll(1, dims=3))
    assert not metric.empty() and metric.real.shape == (200, 128)
    figures = metric.compute()
    assert set(figures) == {"fid", "kid", "precision", "recall"}
    assert all(math.isfinite(v) for v in figures.values())
    again = GenerationQuality(features, max_items=200)
    again.load_state_dict(metric.state_dict())  # a resumed epoch's states, of another size than fresh ones
    assert torch.equal(again.fake, metric.fake)
    assert again.to("cpu").features is features


def test_feature_sources_that_cannot_be_used(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        feature_bundle_path("fashion-mnist-cn")
    assert str(info.value) == (
        "task.features is 'fashion-mnist-cn', which is neither the built-in feature classifier nor a bundle "
        "folder. Did you mean 'fashion-mnist-cnn'? Expected 'fashion-mnist-cnn' or the path of an "
        "image-classification bundle (RUN_DIR/bundle). Fix: set task.features: fashion-mnist-cnn, train a "
        "classifier with `kiln train` and point at its bundle, or set task.features: none to skip the "
        "quality figures."
    )
    task = get_task("image-generation")  # a GAN's own bundle: the likely mistake
    cfg, _ = task.prepare(validate(example_config(tmp_path)))
    train = task.train_module(cfg)
    gan = save_bundle(
        tmp_path / "gan", cfg=cfg, task=task, modules=train.build_modules(cfg), serves=train.serves
    )
    with pytest.raises(ConfigError) as info:
        load_features(gan)
    assert str(info.value) == (
        f"task.features '{gan}' is a bundle of the image-generation task; expected an image-classification "
        "bundle, whose penultimate features measure the images. Fix: point at a classifier's bundle, or use "
        "the built-in 'fashion-mnist-cnn'."
    )
