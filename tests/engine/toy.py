"""Toy data for the engine's tests: rows of tensors, batched the way every task's loader batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from torchkiln.components.batches import EpochBatchSampler


class Rows(Dataset):
    """``(epoch, b, indices) -> (x[indices], y[indices])``, as the engine's samplers key batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[key[2]], self.y[key[2]]


def rows_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False, drop_last: bool = False
) -> DataLoader:
    """Whole batches of ``Rows(x, y)`` from an :class:`EpochBatchSampler` seeded 0."""
    sampler = EpochBatchSampler(len(x), batch_size, shuffle=shuffle, seed=0, drop_last=drop_last)
    # Its own generator: a DataLoader draws its base seed from the global RNG otherwise, per epoch.
    return DataLoader(Rows(x, y), batch_size=None, sampler=sampler, generator=torch.Generator())
