"""Batches with a reproducible order, so a run can resume mid-epoch.

The order of epoch ``e`` is a permutation drawn from ``seed + e``, and a batch is keyed
``(epoch, b, indices)``, so a dataset can seed per-batch randomness (augmentation) from the key.
Nothing depends on how many batches were drawn before, so resuming at batch ``b`` gives exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """One weight per item, 1 / (its class's count): drawn in proportion to them, every class comes up
    equally often (``data.sampler: balanced``).

    Example:
        >>> balanced_weights(torch.tensor([0, 0, 0, 1])).tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()


class EpochBatchSampler(Sampler[tuple[int, int, torch.Tensor]]):
    """Yields ``(epoch, batch_index, indices)``; shuffled per epoch from ``seed + epoch``.

    ``start_batch`` skips the batches a resumed run has already trained on. With ``weights`` (one per
    item), an epoch is ``n`` draws with replacement in proportion to them instead of a permutation: with
    1 / (its class's count) each, every class is drawn equally often (a balanced sampler).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = (
            n,
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.weights = weights
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        order = self.order()
        for b in range(self.start_batch, len(self)):
            yield self.epoch, b, order[b * self.batch_size : (b + 1) * self.batch_size]
