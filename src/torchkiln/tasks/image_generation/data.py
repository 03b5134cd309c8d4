"""From ``data.path`` to uint8 images with labels per split, and loaders whose batches carry their noise.

Every batch brings its own latent vectors, drawn from a generator seeded by ``(seed, epoch, batch)``, so
the noise a step sees depends on nothing but where it is in the run: a resumed run draws exactly what an
uninterrupted one would, whatever ran before.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from torchkiln.components import arrays, catalog
from torchkiln.components.batches import EpochBatchSampler
from torchkiln.components.images import convert_images, decode_all, scan_folder
from torchkiln.components.splits import SPLITS, make_splits
from torchkiln.core.errors import DataError, did_you_mean
from torchkiln.core.io import beside
from torchkiln.tasks.image_generation.config import GenerationDataConfig

SIZES = (28, 32, 56, 64)


@dataclass(frozen=True)
class GenerationSplit:
    images: torch.Tensor  # (N, C, S, S) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class GenerationData:
    classes: list[str]
    size: int
    channels: int
    splits: dict[str, GenerationSplit]
    problems: list[tuple[str, str]]
    source: str


def _read(
    cfg: GenerationDataConfig,
) -> tuple[arrays.ArrayData | None, torch.Tensor | None, list[str], np.ndarray | None, list]:
    """(array data, or decoded folder images with their label names and splits, and problems)."""
    path = Path(cfg.path)
    if path.is_dir():
        items = scan_folder(path)
        size = cfg.image_size or 32
        images, ok, problems = decode_all(items.paths, size=size, channels=cfg.channels or 3)
        labels = [items.labels[i] for i in ok]
        splits = np.array([items.splits[i] for i in ok]) if items.splits is not None else None
        return None, images, labels, splits, problems
    if path.is_file():
        name = "".join(path.suffixes).lower()
        data = arrays.load_npz(path) if name.endswith(".npz") else arrays.load_idx_dataset(path)
    elif cfg.path in catalog.DATASETS:
        data = catalog.load_image_catalog(cfg.path)
    else:
        hint = did_you_mean(cfg.path, beside(cfg.path) + catalog.DATASETS.names())
        raise DataError(
            f"data.path '{cfg.path}' is neither an existing file or folder nor a catalog dataset.{hint} "
            f"Expected an image folder (one subfolder per class), an .npz or IDX file, or a catalog name "
            f"such as fashion-mnist ('kiln list datasets')."
        )
    imgs = torch.from_numpy(np.ascontiguousarray(data.images))
    imgs = imgs.unsqueeze(1) if imgs.ndim == 3 else imgs.permute(0, 3, 1, 2)  # (N, C, H, W)
    return data, imgs, [data.classes[i] for i in data.labels], data.splits, []


def load_generation_data(
    cfg: GenerationDataConfig, *, seed: int, only_splits: Collection[str] | None = None
) -> GenerationData:
    """Read, split and convert the images ``cfg`` names to ``image_size`` and ``channels``.

    Raises:
        DataError: no such data, an image size this generator cannot draw, or a class with no images.

    Example:
        >>> data = load_generation_data(GenerationDataConfig(path="fashion-mnist"), seed=0)
        >>> data.splits["train"].images.shape
        torch.Size([54000, 1, 28, 28])
    """
    found, imgs, names, given, problems = _read(cfg)
    assert imgs is not None
    size = cfg.image_size or imgs.shape[-1]
    if size not in SIZES or (cfg.image_size is None and imgs.shape[-1] != imgs.shape[-2]):
        raise DataError(
            f"The images of '{cfg.path}' are {imgs.shape[-1]}x{imgs.shape[-2]}; the DCGAN draws square "
            f"images of {', '.join(map(str, SIZES))} pixels. Set data.image_size to one of them (images are "
            f"resized and centre-cropped to it)."
        )
    classes = _classes(cfg, names, found.classes if found is not None else sorted(set(names)))
    keep = np.array([n in classes for n in names])
    label_idx = np.array([classes.index(n) if n in classes else -1 for n in names], dtype=np.int64)
    splits = np.full(len(names), "unused", dtype=object).astype(str)
    splits[keep] = make_splits(cfg, label_idx[keep], given[keep] if given is not None else None, seed)
    wanted = list(only_splits) if only_splits else list(SPLITS)
    used = torch.from_numpy(np.isin(splits, wanted))
    imgs, label_idx, splits = imgs[used], label_idx[used.numpy()], splits[used.numpy()]
    channels = cfg.channels or imgs.shape[1]
    imgs = convert_images(imgs, channels=channels, size=size)
    out = {}
    for split in SPLITS:
        sel = torch.from_numpy(np.flatnonzero(splits == split))
        out[split] = GenerationSplit(imgs[sel], torch.from_numpy(label_idx)[sel])
    if only_splits is None or "train" in only_splits:
        empty = [c for i, c in enumerate(classes) if not (out["train"].labels == i).any()]
        if not len(out["train"]) or empty:
            which = f" of class {', '.join(empty)}" if empty else ""
            raise DataError(
                f"Dataset '{cfg.path}' has no training images{which}; "
                f"expected at least one per class. Add images, or leave the class out of data.classes."
            )
    return GenerationData(classes, size, channels, out, problems, str(cfg.path))


def _classes(cfg: GenerationDataConfig, names: list[str], order: list[str]) -> list[str]:
    """``data.classes`` (each must occur in the data), or every class the data holds, in its order."""
    present = set(names)
    if cfg.classes is None:
        return [c for c in order if c in present]
    for c in cfg.classes:
        if c not in present:
            shown = [c for c in order if c in present]
            raise DataError(
                f"data.classes names '{c}', which '{cfg.path}' does not hold.{did_you_mean(c, shown)} "
                f"Expected some of {', '.join(shown)}. Fix the name or leave it out."
            )
    return list(cfg.classes)


def seeded_noise(seeds: list[int], latent_dim: int) -> torch.Tensor:
    """One ``(latent_dim,)`` noise vector per seed, stacked: an image depends on its seed, not its batch."""
    return torch.stack([torch.randn(latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


class NoiseBatches(Dataset):
    """``(epoch, b, indices) -> (real uint8 (B, C, S, S), labels (B,), generator input (B, Z [+ K]),
    fake labels (B,))``.

    Fake labels are drawn from the real ones' batch (shuffled): the generator is asked for each class as
    often as the data holds it. Conditional (``num_classes`` > 0), the generator input ends with their
    one-hot encoding.
    """

    def __init__(
        self, split: GenerationSplit, *, latent_dim: int, num_classes: int, seed: int, flip: bool
    ) -> None:
        self.split, self.latent_dim, self.num_classes = split, latent_dim, num_classes
        self.seed, self.flip = seed, flip

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        epoch, b, idx = key
        x, y = self.split.images[idx], self.split.labels[idx]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + b)
        z = torch.randn(len(idx), self.latent_dim, generator=g)
        fake_y = y[torch.randperm(len(idx), generator=g)]
        if self.flip:
            mirror = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        if self.num_classes:
            z = torch.cat([z, F.one_hot(fake_y, self.num_classes).float()], dim=1)
        return x, y, z, fake_y


def make_loader(
    split: GenerationSplit,
    *,
    batch_size: int,
    latent_dim: int,
    num_classes: int,
    seed: int,
    train: bool,
    flip: bool,
) -> DataLoader:
    """Whole batches with their noise; training shuffles and drops a ragged last batch (BatchNorm)."""
    sampler = EpochBatchSampler(
        len(split), batch_size, shuffle=train, seed=seed, drop_last=train and len(split) > batch_size
    )
    return DataLoader(
        NoiseBatches(
            split,
            latent_dim=latent_dim,
            num_classes=num_classes,
            seed=seed if train else seed + 7919,  # validation's fixed noise differs from epoch 0's
            flip=flip and train,
        ),
        batch_size=None,
        sampler=sampler,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
