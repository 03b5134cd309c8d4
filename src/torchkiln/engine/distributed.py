"""Several processes training one model: torchrun's process group, sharded batches, synced figures.

``torchrun --nproc-per-node N -m torchkiln.train CONFIG`` (or ``kiln train CONFIG --nproc N``) starts N
copies of a run; :func:`init_from_env` joins them into one process group (NCCL on CUDA, gloo on the CPU).
Every rank builds the same loaders; :class:`ShardedBatches` then gives rank r its contiguous part of each
*global* batch, so ``train.batch_size`` is the batch of the whole group, every rank takes the same number of
steps, and an epoch covers each item exactly once: no padding duplicates to bias an evaluation.

Outside a process group (one process) every function here is a no-op: the engine calls them always.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from torchkiln.core.errors import ConfigError

log = logging.getLogger(__name__)


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """The process that writes checkpoints, bundles, history and tracking (rank 0, or the only one)."""
    return rank() == 0


def describe() -> str:
    """``rank 1 of 4`` for messages; empty in a single process."""
    return f"rank {rank()} of {world_size()}" if active() else ""


def init_from_env(*, timeout_s: float = 600.0) -> bool:
    """Join the process group that torchrun describes in ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``.

    NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. ``timeout_s`` bounds
    every collective: a rank whose peer died fails after it instead of waiting forever.

    Returns:
        True if a process group of more than one process was started.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return active()
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"Local rank {local} has no GPU: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s). Start at most {torch.cuda.device_count()} processes per node (--nproc)."
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """A rank's own GPU (``cuda:LOCAL_RANK``) in a process group; ``device`` as it is otherwise."""
    if active() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


class ShardedBatches(Sampler[tuple[int, int, torch.Tensor]]):
    """Rank r's part of each ``(epoch, b, indices)`` batch of ``inner``: a contiguous slice of ``indices``.

    The shard's key is ``(epoch, b + r * len(inner), part)``. Datasets seed per-batch randomness from the
    key (augmentation, a GAN's noise), so every shard draws its own; rank 0's keys are those of one
    process. Shards differ by at most one item. A training batch must give every rank an item (DDP all-reduces
    every step); an evaluation skips a rank's empty shard (a short last batch).
    """

    def __init__(self, inner: Any, *, rank: int, world: int, train: bool) -> None:
        self.inner, self.rank, self.world, self.train = inner, rank, world, train
        self._items: dict[int, int] = {}  # batch index -> items in the whole batch (all shards)

    def batch_items(self, b: int) -> int:
        """Items in the whole batch ``b`` of the epoch being iterated (every rank's shard together)."""
        return self._items[b]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.inner.set_epoch(epoch, start_batch=start_batch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        self._items = {}
        for epoch, b, indices in self.inner:
            self._items[b] = len(indices)
            if self.train and len(indices) < self.world:
                raise ConfigError(
                    f"Training batch {b} has {len(indices)} item(s) for {self.world} processes; every "
                    f"process needs at least one. Use train.batch_size >= {self.world} with at least "
                    f"{self.world} training items, or fewer processes (--nproc)."
                )
            part = torch.tensor_split(indices, self.world)[self.rank]
            if len(part):
                yield epoch, b + self.rank * len(self.inner), part


def shard_loader(loader: DataLoader, *, train: bool) -> DataLoader:
    """``loader`` over this rank's shard of every batch (the loader itself outside a process group).

    The loader must batch through its sampler (``batch_size=None``, a sampler of ``(epoch, b, indices)``
    with ``set_epoch``), as every task's loader does.
    """
    if not active():
        return loader
    if loader.batch_size is not None or not hasattr(loader.sampler, "set_epoch"):
        raise ConfigError(
            "This task's loader cannot be split between processes: multi-process training needs a DataLoader "
            "with batch_size=None over a sampler of (epoch, batch, indices) with set_epoch, like "
            "torchkiln.components.batches.EpochBatchSampler. Train this task in one process."
        )
    return DataLoader(
        loader.dataset,
        batch_size=None,
        sampler=ShardedBatches(loader.sampler, rank=rank(), world=world_size(), train=train),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        generator=loader.generator,
    )


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks (``t`` itself in one process); float64 sums stay exact across ranks."""
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank (a time budget that one rank ran out of stops them all)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _wire() -> torch.device:
    """Where collectives' tensors live: this rank's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (tensors and plain containers), in rank order; ``[obj]`` in one process.

    Objects travel as ``torch.save`` bytes and are read back with ``weights_only=True``: no pickle.
    """
    if not active():
        return [obj]
    device = _wire()
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(data)] = data
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    blobs = [p[: int(s.item())].cpu().numpy().tobytes() for p, s in zip(parts, sizes, strict=True)]
    return [torch.load(io.BytesIO(b), map_location="cpu", weights_only=True) for b in blobs]


def broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (the run directory that rank 0 created)."""
    return gather(text)[0] if active() else text


def average_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks, in one flat all-reduce (what DDP does per bucket)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks, so that the weights
    rank 0 checkpoints and evaluates saw every rank's batches; integer buffers (counts) are equal."""
    if not active():
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world_size()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a module)."""
    if not active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def sync_metric(metric: torch.nn.Module) -> None:
    """Combine a :class:`~torchkiln.components.metric.Metric`'s states over ranks, in place: sums
    all-reduced, ``cat`` states concatenated in rank order. Every rank then computes the same figures."""
    if not active():
        return
    for module in metric.modules():
        reductions = getattr(module, "state_reductions", {})
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            if reductions.get(name, "sum") == "cat":
                module._buffers[name] = torch.cat([t.to(buf.device) for t in gather(buf)])
            else:
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
