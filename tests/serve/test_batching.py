"""The dynamic batcher on its own: how it gathers, waits, refuses and fails."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from torchkiln.serve.batching import DynamicBatcher, QueueFullError


class Recorder:
    """A batch function that remembers each call's sizes and the thread it ran in."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s, self.fail = delay_s, fail

    def __call__(self, xs: Sequence[torch.Tensor], options: Sequence[Any]) -> list[Any]:
        self.calls.append([len(x) for x in xs])
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail:
            raise ValueError("model exploded")
        return [(x.sum().item(), opt) for x, opt in zip(xs, options, strict=True)]


def batcher(run: Recorder, **kw: Any) -> DynamicBatcher:
    settings = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 100, "name": "t"} | kw
    b = DynamicBatcher(run, **settings)
    b.start()
    return b


def test_concurrent_requests_share_model_calls_and_get_their_own_answers() -> None:
    run = Recorder()

    async def go() -> list[Any]:
        b = batcher(run)
        out = await asyncio.gather(*(b.submit(torch.full((1, 2), float(i)), options=i) for i in range(8)))
        await b.stop()
        return out

    out = asyncio.run(go())
    assert out == [(2.0 * i, i) for i in range(8)]
    assert run.calls == [[1] * 8]  # one model call for all eight
    assert run.threads == {"kiln-t_0"} and threading.current_thread().name not in run.threads


def test_a_batch_never_exceeds_max_batch_size_in_inputs() -> None:
    run = Recorder()

    async def go() -> None:
        b = batcher(run, max_batch_size=4)
        await asyncio.gather(*(b.submit(torch.ones(n, 1)) for n in (3, 2, 2, 1, 4)))
        await b.stop()

    asyncio.run(go())
    assert all(sum(c) <= 4 for c in run.calls) and sum(map(sum, run.calls)) == 12, run.calls


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def go() -> float:
        b = batcher(Recorder(), max_wait_s=0.03)
        start = time.perf_counter()
        await b.submit(torch.ones(1, 1))
        took = time.perf_counter() - start
        await b.stop()
        return took

    assert 0.025 < asyncio.run(go()) < 0.5


def test_a_full_queue_refuses_at_once() -> None:
    async def go() -> None:
        b = batcher(Recorder(delay_s=0.2), max_queue=2, max_batch_size=1, max_wait_s=0)
        first = asyncio.ensure_future(b.submit(torch.ones(1, 1)))
        await asyncio.sleep(0.05)  # the first is in the model now; two more fill the queue
        queued = [asyncio.ensure_future(b.submit(torch.ones(1, 1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as info:
            await b.submit(torch.ones(1, 1))
        assert info.value.retry_after_s >= 1.0
        await asyncio.gather(first, *queued)
        await b.stop()

    asyncio.run(go())


def test_a_model_error_fails_only_its_batch() -> None:
    async def go() -> None:
        run = Recorder(fail=True)
        b = batcher(run, max_wait_s=0)
        with pytest.raises(ValueError, match="model exploded"):
            await b.submit(torch.ones(1, 1))
        run.fail = False
        assert await b.submit(torch.ones(1, 1), options="ok") == (1.0, "ok")
        await b.stop()

    asyncio.run(go())


def test_cancelled_requests_are_left_out_and_stop_drains_the_queue() -> None:
    run = Recorder(delay_s=0.05)

    async def go() -> None:
        b = batcher(run, max_batch_size=1, max_wait_s=0)
        busy = asyncio.ensure_future(b.submit(torch.ones(1, 1)))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit(torch.ones(2, 1)))  # size 2: recognisable in the calls
        kept = asyncio.ensure_future(b.submit(torch.ones(3, 1)))
        await asyncio.sleep(0)
        gone.cancel()
        await b.stop()  # waits for what is queued
        assert busy.done() and kept.done() and gone.cancelled()
        with pytest.raises(RuntimeError, match="being unloaded"):
            await b.submit(torch.ones(1, 1))

    asyncio.run(go())
    assert run.calls == [[1], [3]]
