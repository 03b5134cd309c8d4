"""Whole batches of an image split, keyed ``(epoch, b, indices)``, reproducibly augmented, built on the CPU
or on the run's device (device-resident data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset

from torchkiln.components.augment import Augment
from torchkiln.components.batches import EpochBatchSampler, balanced_weights
from torchkiln.components.images import to_model_input
from torchkiln.core.errors import DataError
from torchkiln.tasks.image_classification.data import SplitData


def batch_seed(seed: int, epoch: int, b: int) -> int:
    """The augmentation seed of batch ``b`` of ``epoch``: independent of worker count and of where a run
    resumed."""
    return (seed * 1_000_003 + epoch) * 100_003 + b


class BatchSet(Dataset):
    """Builds whole batches: ``(epoch, b, indices) -> (images (B, C, S, S) uint8, labels (B,))``.

    With ``device``, an in-memory split is copied there once and every batch is indexed and augmented
    there (device-resident data); without it, batches are built where the split is (the CPU).
    """

    def __init__(
        self,
        split: SplitData,
        *,
        size: int,
        channels: int,
        augment: Augment | None,
        seed: int,
        device: torch.device | None = None,
    ) -> None:
        self.split, self.size, self.channels, self.augment, self.seed = split, size, channels, augment, seed
        self.images, self.labels = split.images, split.labels
        if device is not None:
            assert self.images is not None, (
                "device-resident batches need an in-memory split"
            )  # make_loader checks
            self.images, self.labels = self.images.to(device), self.labels.to(device)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, b, idx = key
        if self.images is not None:
            idx = _to(idx, self.images.device)
            x = self.images[idx]
        else:  # a SplitData holds images or paths: __post_init__ refuses neither
            paths = cast(tuple[Path, ...], self.split.paths)
            x = torch.stack(
                [
                    to_model_input(paths[i], size=self.size, channels=self.channels, clahe=self.split.clahe)
                    for i in idx
                ]
            )
        if self.augment is not None:
            x = self.augment(x, seed=batch_seed(self.seed, epoch, b))
        return x, self.labels[idx]


def _to(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch's indices (B,) on ``device``. To a GPU through pinned memory: a copy from pageable memory
    would wait for the GPU to finish the steps queued before it, a host sync per batch."""
    if device.type == "cuda":
        return idx.pin_memory().to(device, non_blocking=True)
    return idx.to(device)


def make_loader(
    split: SplitData,
    *,
    batch_size: int,
    size: int,
    channels: int,
    augment: Augment | None = None,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | str = "auto",
    pin_memory: bool = False,
    balanced: bool = False,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader over whole batches (``batch_size=None``); its sampler is an :class:`EpochBatchSampler`.

    ``balanced`` (training only) draws every class equally often: each item weighs 1 / its class's count.
    ``device`` keeps the split's images and labels there (see :func:`data_device`): batches are built
    and augmented there in the loading process, with no workers and no pinning.

    Raises:
        DataError: ``device`` for a split read from files on demand.
    """
    if device is not None:
        if split.images is None:
            raise DataError(ON_DEVICE_FILES)
        num_workers, pin_memory = 0, False
    if num_workers == "auto":
        # In-memory data is one tensor index per batch and batched augmentation a few ops per batch:
        # worker processes would only add IPC and steal the cores that the model's threads use.
        # Decoding files is the slow case that workers pay off for.
        num_workers = 0 if split.images is not None else min(4, os.cpu_count() or 1)
    # Training drops a ragged last batch (a batch of 1 breaks BatchNorm); evaluation keeps every item.
    drop_last = shuffle and len(split) > batch_size
    weights = balanced_weights(split.labels) if balanced and shuffle and len(split) else None
    sampler = EpochBatchSampler(
        len(split), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, weights=weights
    )
    return DataLoader(
        BatchSet(split, size=size, channels=channels, augment=augment, seed=seed, device=device),
        batch_size=None,
        sampler=sampler,
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        persistent_workers=False,
        # Its own generator: iterating must not consume the global RNG that dropout draws from,
        # or a resumed run would see other dropout masks than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


ON_DEVICE_FILES = (
    "data.on_device is true, but this split is read from image files on demand (data.cache: none, or the "
    "decoded images would pass the in-memory budget); expected images decoded in memory, which is what "
    "is copied to the device. Fix: set data.cache: memory if the images fit, or data.on_device: auto "
    "(or false) to build batches on the CPU."
)
ON_DEVICE_SHARE = 0.25  # auto: a split goes to the GPU when it takes at most this share of free memory


def data_device(on_device: bool | str, device: torch.device | None, split: SplitData) -> torch.device | None:
    """Where ``split``'s batches are built: ``device``, or None for the CPU (today's loader).

    ``auto`` keeps an in-memory split on a CUDA device when it takes at most a quarter of the free GPU
    memory; ``true`` keeps it on ``device`` whatever it is (the CPU too, which tests use); ``false``
    never. ``device`` None (the run's device cannot be resolved here) means the CPU.

    Raises:
        DataError: ``true`` for a split read from files on demand.

    Example:
        >>> split = SplitData(torch.zeros(2), images=torch.zeros(2, 1, 4, 4))
        >>> data_device(True, torch.device("cpu"), split)
        device(type='cpu')
    """
    if on_device is True and split.images is None:
        raise DataError(ON_DEVICE_FILES)
    if on_device is False or device is None or split.images is None:
        return None
    if on_device is True:
        return device
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    need = split.images.nbytes + split.labels.nbytes
    return device if need <= ON_DEVICE_SHARE * free else None
