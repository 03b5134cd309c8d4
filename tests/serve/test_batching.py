"""The dynamic batcher on its own: how it gathers, waits, refuses and fails."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from torchkiln.serve.batching import DynamicBatcher, QueueFullError

GUARD_S = 30.0  # only bounds a broken test's hang; no assertion depends on how long anything takes


class Recorder:
    """A batch function that remembers each call's sizes and the thread it ran in.

    With ``hold=True`` every call sets ``started`` and then blocks until the test sets ``release``: the test
    knows a batch is in the model, and decides when it finishes.
    """

    def __init__(self, delay_s: float = 0.0, fail: bool = False, hold: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s, self.fail = delay_s, fail
        self.started, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, xs: Sequence[torch.Tensor], options: Sequence[Any]) -> list[Any]:
        self.calls.append([len(x) for x in xs])
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if not self.release.wait(GUARD_S):
            raise TimeoutError(f"the test did not release the model within {GUARD_S} s")
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


async def ticks_until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run, one step at a time, until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what}: still not so after 1000 event-loop steps")


def test_a_lone_request_goes_alone_once_max_wait_passes() -> None:
    """Nobody else comes: the max-wait timer sends the request as a batch of one, not a full batch later."""
    run = Recorder()

    async def go() -> None:
        b = batcher(run, max_batch_size=8, max_wait_s=0.01)
        # Nothing else is submitted until it is answered: only the timer can have sent it.
        assert await asyncio.wait_for(b.submit(torch.ones(1, 1), options="a"), GUARD_S) == (1.0, "a")
        assert run.calls == [[1]]
        assert await asyncio.wait_for(b.submit(torch.ones(2, 1), options="b"), GUARD_S) == (2.0, "b")
        assert run.calls == [[1], [2]]  # a later request is a batch of its own
        await b.stop()

    asyncio.run(go())


def test_a_request_waits_for_company_while_max_wait_runs() -> None:
    """A request that comes while the first one's window is open joins its batch.

    The window (an hour) cannot close during the test; the batch goes once it is full.
    """
    run = Recorder()

    async def go() -> None:
        b = batcher(run, max_batch_size=2, max_wait_s=3600)
        first = asyncio.ensure_future(b.submit(torch.ones(1, 1), options=1))
        await asyncio.sleep(0)  # submit() ran up to its await: the request is queued
        assert b.depth == 1
        await ticks_until(lambda: b.depth == 0, "the gatherer took the first request")
        assert not first.done() and run.calls == []  # taken, and held back for company
        second = asyncio.ensure_future(b.submit(torch.ones(1, 1), options=2))
        answers = await asyncio.wait_for(asyncio.gather(first, second), GUARD_S)
        assert answers == [(1.0, 1), (1.0, 2)]
        assert run.calls == [[1, 1]]  # one model call for both
        await b.stop()

    asyncio.run(go())


def test_a_full_queue_refuses_at_once() -> None:
    run = Recorder(hold=True)

    async def go() -> None:
        b = batcher(run, max_queue=2, max_batch_size=1, max_wait_s=0)
        try:
            first = asyncio.ensure_future(b.submit(torch.ones(1, 1)))
            assert await asyncio.to_thread(run.started.wait, GUARD_S), "the first request never ran"
            # The first is in the model, held there; two more fill the queue.
            queued = [asyncio.ensure_future(b.submit(torch.ones(1, 1))) for _ in range(2)]
            await asyncio.sleep(0)
            assert b.depth == 2 and run.calls == [[1]]
            refused = asyncio.ensure_future(b.submit(torch.ones(1, 1)))
            await asyncio.sleep(0)  # one step: submit() either raised or waits
            assert refused.done(), "submit() on a full queue waited instead of refusing"
            assert isinstance(refused.exception(), QueueFullError)
            assert refused.exception().retry_after_s >= 1.0
            assert run.calls == [[1]] and not first.done()  # refused while the model was still busy
        finally:
            run.release.set()
        await asyncio.wait_for(asyncio.gather(first, *queued), GUARD_S)
        assert run.calls == [[1], [1], [1]]  # the refused request never reached the model
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
