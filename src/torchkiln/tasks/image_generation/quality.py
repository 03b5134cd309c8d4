"""How good a generator's images are, measured in the feature space of a Fashion-MNIST classifier.

FID needs Inception-v3 weights, which cannot be downloaded here, so the figures are measured on the
penultimate features of a classifier torchkiln trains itself and ships as a bundle: the reference
``fashion-mnist-cnn`` in ``reference/fashion-mnist-cnn/``. Its figures are comparable with each other,
not with published Inception FIDs.

The reference classifier: ``kiln train examples/fashion-classifier.yaml`` (cnn conv32-conv64 -> fc128 ->
fc10, 8 epochs, AdamW one-cycle, flips), trained on Fashion-MNIST's 60,000 train images (6,000 carved for
validation): 92.36 % accuracy (macro-F1 0.9235) on the 10,000 held-out test images (``kiln evaluate RUN
--split test``), val 92.60 %. Training took 361.6 s (6.4 minutes of wall time with data loading) on 2 CPU
cores that a GAN run shared. Features: the 128 post-ReLU units of the hidden layer. Weights: 1.7 MB.
``bench/gan_real_vs_real.py`` prints the real-versus-real floor and degraded fakes, so the scale of the
figures can be read.

- :func:`generative_quality`: FID and KID (torchmetrics, over precomputed features) and the improved
  precision and recall of Kynkäänniemi et al. (2019) on two feature sets ``(N, D)``.
- :class:`ClassifierFeatures` and :func:`load_features`: uint8 images of any size -> ``(N, D)`` features.
- :class:`GenerationQuality`: the per-epoch validation metric of a GAN run.
- :func:`real_vs_real` (the honest floor) and :func:`nearest_neighbours` (does the generator copy?).

torchmetrics is imported inside the functions that use it: importing it costs seconds.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchkiln.artifacts.bundle import Bundle, load_bundle
from torchkiln.components.metric import Metric
from torchkiln.core.errors import ConfigError, DataError, did_you_mean
from torchkiln.tasks.image_generation.train import to_uint8

REFERENCE_FEATURES = "fashion-mnist-cnn"
REFERENCE_DIR = Path(__file__).parent / "reference"
CLASSIFIER_KIND = "image-classification"  # a kind string: this family never imports another
FIGURES = ("fid", "kid", "precision", "recall")  # what GenerationQuality reports per epoch
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def feature_bundle_path(source: str | Path) -> Path:
    """The bundle folder ``source`` names: the built-in ``"fashion-mnist-cnn"``, or a bundle (run) path.

    Raises:
        ConfigError: neither a built-in name nor an existing folder.

    Example:
        >>> feature_bundle_path("fashion-mnist-cnn").name
        'fashion-mnist-cnn'
    """
    if str(source) == REFERENCE_FEATURES:
        return REFERENCE_DIR / REFERENCE_FEATURES
    path = Path(source)
    if path.is_dir():
        return path
    hint = did_you_mean(str(source), [REFERENCE_FEATURES])
    raise ConfigError(
        f"task.features is '{source}', which is neither the built-in feature classifier nor a bundle "
        f"folder.{hint} Expected '{REFERENCE_FEATURES}' or the path of an image-classification bundle "
        f"(RUN_DIR/bundle). Fix: set task.features: {REFERENCE_FEATURES}, train a classifier with `kiln "
        f"train` and point at its bundle, or set task.features: none to skip the quality figures."
    )


class ClassifierFeatures(nn.Module):
    """uint8 images ``(N, C, H, W)`` -> the classifier's penultimate features ``(N, D)`` float32.

    Any size and 1 or 3 channels: images are converted to the classifier's channels (grey <-> RGB) and
    sized as its training images were (shorter side to its size, antialiased bilinear, center crop).
    Frozen and always in eval mode.

    Attributes:
        num_features: D (torchmetrics' FID reads it).
        image_size, channels: what the classifier takes.
        classes: its class names, in label order (:meth:`predict` indexes them).
    """

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        self.task = bundle.task
        self.model = bundle.model
        self.image_size = int(bundle.config.data.image_size)
        self.channels = int(bundle.config.data.channels)
        self.source = str(bundle.path)
        self.classes = list(bundle.config.data.classes or [])  # the classifier's labels, in its order
        self.requires_grad_(False)
        self.eval()
        probe = torch.zeros(1, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        self.num_features = int(self(probe).shape[1])

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # BatchNorm statistics and dropout never change

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> uint8 ``(N, channels, image_size, image_size)``: what the classifier
        reads."""
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
            raise DataError(
                f"Feature images have dtype {images.dtype} and shape {tuple(images.shape)}; expected uint8 "
                f"(N, 1 or 3, H, W). Fix: convert generated [-1, 1] images with train.to_uint8 first."
            )
        x = images.float()
        if x.shape[1] == 3 and self.channels == 1:
            x = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        h, w, s = x.shape[2], x.shape[3], self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (size[0] - s) // 2, (size[1] - s) // 2
            x = x[:, :, top : top + s, left : left + s]
        return x.round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class index (into ``classes``) of each image ``(N,)``."""
        outputs, _ = self.task.forward_features(self.model, self.prepare(images))
        return outputs.argmax(dim=1).cpu()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, features = self.task.forward_features(self.model, self.prepare(images))
        return features.float()  # (N, D)


def load_features(source: str | Path, device: str | torch.device = "cpu") -> ClassifierFeatures:
    """The feature extractor of an image-classification bundle (or the built-in ``"fashion-mnist-cnn"``).

    Raises:
        ConfigError: no such bundle, or a bundle of another task or an exported (ONNX) one.
        BundleError: the bundle is broken (missing files, checksum mismatch).

    Example:
        >>> features = load_features("fashion-mnist-cnn")
        >>> features(images).shape  # images: uint8 (N, 1, 28, 28)
        torch.Size([N, 128])
    """
    bundle = load_bundle(feature_bundle_path(source))
    if bundle.task.kind != CLASSIFIER_KIND:
        raise ConfigError(
            f"task.features '{source}' is a bundle of the {bundle.task.kind} task; expected an "
            f"image-classification bundle, whose penultimate features measure the images. Fix: point at a "
            f"classifier's bundle, or use the built-in '{REFERENCE_FEATURES}'."
        )
    if bundle.meta.get("runtime", "torch") != "torch":
        raise ConfigError(
            f"task.features '{source}' is an exported {bundle.meta['runtime']} bundle, which gives outputs "
            f"only; expected a trained (torch) bundle. Fix: point at the bundle it was exported from."
        )
    return ClassifierFeatures(bundle).to(device)


@torch.no_grad()
def extract(features: ClassifierFeatures, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Features ``(N, D)`` (on the CPU) of uint8 images ``(N, C, H, W)``, ``batch_size`` at a time.

    Example:
        >>> extract(load_features("fashion-mnist-cnn"), test_images).shape
        torch.Size([10000, 128])
    """
    device = _device(features)
    parts = [features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, features.num_features)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class _Precomputed(nn.Module):
    """torchmetrics' ``feature`` module over features already extracted: the identity."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def nearest_neighbours(
    queries: torch.Tensor, pool: torch.Tensor, k: int = 1, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``pool`` to each query, by Euclidean distance: ``(distances, indices)``,
    each ``(Q, k)``, nearest first. ``chunk`` queries at a time bound the memory to ``chunk x P`` distances.

    Example:
        >>> d, i = nearest_neighbours(extract(f, samples), extract(f, train_images))  # copies: d near 0
    """
    if k > len(pool):
        raise ValueError(f"nearest_neighbours: k={k} but the pool holds {len(pool)} rows; expected k <= that")
    pool = pool.double()
    found = [torch.cdist(q.double(), pool).topk(k, dim=1, largest=False) for q in queries.split(chunk)]
    if not found:
        return torch.zeros(0, k, dtype=torch.float64), torch.zeros(0, k, dtype=torch.long)
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def _coverage(queries: torch.Tensor, refs: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """The share of ``queries`` inside at least one ref's ball (centre ``refs[j]``, radius ``radii[j]``)."""
    refs = refs.double()
    inside = [(torch.cdist(q.double(), refs) <= radii).any(dim=1) for q in queries.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets ``(N, D)``.

    Each set's manifold is the union of balls around its points, of radius the distance to the point's
    k-th nearest neighbour in its own set. Precision: the share of fakes inside the real manifold (are
    the images realistic?); recall: the share of reals inside the fake manifold (is all of the data
    covered?). A collapsed generator scores a high precision and a recall near 0.
    """
    real_radii = nearest_neighbours(real, real, k + 1, chunk)[0][:, k]  # column 0 is the point itself
    fake_radii = nearest_neighbours(fake, fake, k + 1, chunk)[0][:, k]
    return _coverage(fake, real, real_radii, chunk), _coverage(real, fake, fake_radii, chunk)


def generative_quality(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k: int = 3,
    kid_subset_size: int = 1000,
    kid_subsets: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID (mean and std over subsets), precision and recall of two feature sets ``(N, D)``.

    FID and KID are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` fed the
    features through an identity ``feature`` module. KID's subsets (of ``min(kid_subset_size, N_real,
    N_fake)`` items) are drawn from a generator seeded with ``seed``, so the figures repeat exactly.

    Returns:
        ``{"fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake"}``.

    Raises:
        ValueError: fewer than ``k + 1`` items in a set, or sets of different widths.

    Example:
        >>> generative_quality(extract(f, test_images), extract(f, samples))["fid"]
        12.3
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = len(real), len(fake)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"generative_quality needs two feature sets (N, D) of the same D; got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}. Pass extract(features, images) of each set."
        )
    if min(n_real, n_fake) < k + 1:
        raise ValueError(
            f"generative_quality needs at least k + 1 = {k + 1} items per set; got {n_real} real and "
            f"{n_fake} fake. Measure more images."
        )
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    identity = _Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity, reset_real_features=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    subset = min(kid_subset_size, n_real, n_fake)
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer": it is meant to
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=identity, subsets=kid_subsets, subset_size=subset)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch.randperm
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    precision, recall = precision_recall(real, fake, k=k)
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "precision": precision,
        "recall": recall,
        "n_real": float(n_real),
        "n_fake": float(n_fake),
    }


def real_vs_real(
    train_feats: torch.Tensor, test_feats: torch.Tensor, n: int, seed: int = 0
) -> dict[str, float]:
    """The floor: the figures of ``n`` test images (as the real set) against ``n`` train images (as the
    fakes of a generator that reproduces its training data perfectly), both drawn with ``seed``.

    A generator's figures are read against this: no generator of the train distribution beats it at
    the same ``n`` except by chance (FID is biased upwards at small ``n``). With ``fashion-mnist-cnn``:
    FID 6.2 at n = 1000, 0.96 at 5000, 0.37 at 10000; precision and recall about 0.84-0.88.

    Example:
        >>> real_vs_real(extract(f, train_images), extract(f, test_images), n=5000)["fid"]
        0.958
    """
    g = torch.Generator().manual_seed(seed)
    if n > min(len(train_feats), len(test_feats)):
        raise ValueError(
            f"real_vs_real: n={n} but there are {len(train_feats)} train and {len(test_feats)} "
            "test features; expected n <= both"
        )
    train = train_feats[torch.randperm(len(train_feats), generator=g)[:n]]
    test = test_feats[torch.randperm(len(test_feats), generator=g)[:n]]
    return generative_quality(test, train, seed=seed)


class GenerationQuality(Metric):
    """FID, KID, precision and recall of a validation epoch: held-out real images against generated ones.

    ``update(fake, real)`` takes the generated batch (the outputs) and the real one (the targets) and
    keeps the first ``max_items`` features of each (as buffers, so a checkpoint of the epoch in progress
    holds them); ``compute`` measures them. The
    feature classifier is not part of the state (it belongs to no GAN checkpoint) but follows ``.to()``.
    The engine makes a fresh metric per epoch, so no ``reset`` is needed.

    Example:
        >>> metric = GenerationQuality(load_features("fashion-mnist-cnn"), max_items=5000)
        >>> metric.update(generator(z), real_uint8)
        >>> sorted(metric.compute())
        ['fid', 'kid', 'precision', 'recall']
    """

    def __init__(self, features: ClassifierFeatures, *, max_items: int) -> None:
        super().__init__()
        self._features = (features,)  # a tuple: not a submodule, so not in state_dict()
        self.max_items = max_items
        # (n, D), grows to max_items; processes concatenate theirs
        self.add_state("real", torch.zeros(0, features.num_features), reduce="cat")
        self.add_state("fake", torch.zeros(0, features.num_features), reduce="cat")

    @property
    def features(self) -> ClassifierFeatures:
        return self._features[0]

    def _apply(self, fn: Any, recurse: bool = True) -> GenerationQuality:
        super()._apply(fn, recurse)
        self.features._apply(fn)  # .to(device) moves the classifier with the states
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("real", "fake"):  # the states grow: take the saved sizes before copying into them
            if prefix + name in state_dict:
                saved = state_dict[prefix + name]
                setattr(self, name, saved.new_zeros(saved.shape, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """A batch of generated images (the model's outputs: uint8, or float in [-1, 1]) and of real ones
        (the targets, uint8), in the order every task's metric takes ``(outputs, targets)``."""
        if fake.is_floating_point():
            fake = to_uint8(fake)
        device = _device(self.features)  # the real batch comes from the loader, on the CPU
        for name, images in (("real", real), ("fake", fake)):
            kept = getattr(self, name)
            room = self.max_items - len(kept)
            if room > 0:
                setattr(self, name, torch.cat([kept, self.features(images[:room].to(device)).to(kept)]))

    def empty(self) -> bool:
        return min(len(self.real), len(self.fake)) < 4  # generative_quality's k + 1 with k = 3

    def compute(self) -> dict[str, float]:
        """The figures; NaN for each while :meth:`empty` (the engine then reports none, but reads the names
        from a fresh metric to check ``train.monitor``)."""
        if self.empty():
            return dict.fromkeys(FIGURES, math.nan)
        figures = generative_quality(self.real, self.fake)
        return {name: figures[name] for name in FIGURES}
