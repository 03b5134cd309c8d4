"""Latency and throughput of a model callable, measured the same way for every runtime."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

MIN_RUNS = 100  # p99 from fewer runs is one outlier
MAX_RUNS = 20_000


def measure(
    fn: Callable[[np.ndarray], object], batch: np.ndarray, *, seconds: float = 2.0
) -> dict[str, float]:
    """Time ``fn(batch)``: warm up, then run for ``seconds`` and at least ``MIN_RUNS`` times.

    Returns:
        ``p50_ms``, ``p99_ms``, ``mean_ms``, ``runs`` and ``items_per_s`` (batch size / mean latency).

    Example:
        >>> measure(lambda a: session.run(None, {"input": a}), np.zeros((1, 1, 28, 28), np.uint8))
        {'p50_ms': 0.05, ...}
    """
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    for i in range(1000):  # warm-up: allocator, thread pool, lazy kernel selection
        fn(batch)
        if i >= 4 and time.perf_counter() > warm_until:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_RUNS:
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
        if len(times) >= MIN_RUNS and t0 - start >= seconds:
            break
    ms = np.asarray(times) * 1e3
    mean = float(ms.mean())
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(mean, 4),
        "runs": len(times),
        "items_per_s": round(len(batch) / (mean / 1e3), 1),
    }
