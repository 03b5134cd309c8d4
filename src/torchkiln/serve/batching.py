"""Dynamic batching: gather requests into one model call, off the event loop, with a bounded queue.

A request joins a per-model queue. One gatherer takes the oldest request and adds more until the batch
holds ``max_batch_size`` inputs or ``max_wait_s`` has passed since it started waiting, then runs the
batch in the model's own thread. While that thread computes, new requests queue up, so under load
batches fill without waiting and at low load a request waits at most ``max_wait_s``. A full queue
refuses new work at once (the server answers 429) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

# (inputs of each request, options of each request) -> one result per request; runs in the model thread.
RunBatch = Callable[[Sequence[torch.Tensor], Sequence[Any]], list[Any]]


class ModelUnloadedError(RuntimeError):
    """A request reached a model that a reload has swapped out: pick the deployment's model again."""


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"queue full; retry after {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Job:
    x: torch.Tensor  # (n, ...) the request's preprocessed inputs
    options: Any
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Per-model request queue and gatherer. Create it inside a running event loop, then :meth:`start`.

    Example:
        >>> b = DynamicBatcher(run, max_batch_size=32, max_wait_s=0.002, max_queue=256, name="fashion")
        >>> b.start(); answers = await b.submit(x, options=3)
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        name: str,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch  # (inputs in the batch, seconds the model took)
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # One thread per model: calls into one model never overlap, and the event loop never computes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kiln-{name}")
        self._batch_s = 0.005  # running mean of a model call, for Retry-After

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch being computed)."""
        return len(self._jobs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: torch.Tensor, options: Any = None) -> Any:
        """Queue one request's inputs ``(n, ...)`` and wait for its result.

        Raises:
            QueueFullError: ``max_queue`` requests are waiting already.
            ModelUnloadedError: the batcher is stopping (a reload swapped its model out).
        """
        if self._stopping:
            raise ModelUnloadedError("the model is being unloaded")
        if len(self._jobs) >= self.max_queue:
            waves = len(self._jobs) * 1.0 / max(self.max_batch_size, 1) + 1
            raise QueueFullError(max(1.0, waves * self._batch_s))
        job = _Job(x, options, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued (up to ``timeout_s``), then stop the gatherer and the model thread."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(ModelUnloadedError("the model was unloaded before this request ran"))
        self._jobs.clear()
        self._executor.shutdown(wait=False)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._gather(loop)
            if batch:
                await self._run(loop, batch)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        batch = [self._jobs.popleft()]
        size = len(batch[0].x)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            if self._jobs:
                if size + len(self._jobs[0].x) > self.max_batch_size:
                    break  # it starts the next batch
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job.x)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopping:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return [j for j in batch if not j.future.done()]  # timed-out requests were cancelled

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, self.run, [j.x for j in batch], [j.options for j in batch]
            )
        except Exception as exc:  # a model failure fails this batch's requests, not the server
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        took = time.perf_counter() - start
        self._batch_s = 0.8 * self._batch_s + 0.2 * took
        if self.on_batch is not None:
            self.on_batch(sum(len(j.x) for j in batch), took)
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
