"""What the prediction log and metrics cost: ``kiln serve`` with them on and off, paired rounds, same load.

Each round starts one server per variant, one at a time, and drives it with the same wrk load as
``bench/serve_throughput.py`` (its helpers are reused). The order of the variants alternates from one
round to the next, so that neither always runs first. Per run the script records the throughput (200
answers per second) and the server's CPU time per answer: its process and its children (the prediction
log's writer process), from just before the load to ``--settle`` seconds after it, so the writer's last
batch counts.

The cost is read from the pairs, not from pooled medians: for each round, the relative difference of a
variant against "off" in the same round (``on / off - 1``), then the mean of those differences over the
rounds with a 95 % confidence interval (Student's t, and a percentile bootstrap as a check). Pairing
removes the drift of the shared machine between rounds. CPU time per answer does not count the time the
server waited for a core that something else held, but contention still inflates it (caches, spinning
threads), so both measures are reported.

``--log-only`` adds a variant with the log on and metrics off, to split the cost. ``--before SRC`` adds a
variant with the log on that runs another checkout's ``src/`` (e.g. a ``git worktree`` of an older
commit), to measure a change. Before the rounds the script times ``PredictionLog.log()`` itself, in this
process, with its writer running.

    apt-get install wrk
    .venv/bin/python bench/serve_log_ab.py --bundle RUN_DIR/bundle-onnx-int8-static [--rounds 30]
        [--conns 16] [--log-only] [--before /tmp/old/src] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import serve_throughput as st
from torchkiln.serve.predlog import PredictionLog, PredictionRecord


def log_call_us(calls: int) -> list[float]:
    """Microseconds per ``PredictionLog.log()`` call, five runs of ``calls``, with the writer running."""
    folder = Path(tempfile.mkdtemp())
    plog = PredictionLog(f"sqlite:///{folder}/predictions.db")
    plog.start()
    top = [
        {"label": "Bag", "score": 0.91},
        {"label": "Shirt", "score": 0.05},
        {"label": "Coat", "score": 0.02},
    ]
    summary = {"sha256": "a" * 64, "bytes": 812, "mean": 0.41, "std": 0.3, "channel_means": [0.41]}
    runs = []
    for k in range(5):
        records = [
            PredictionRecord(
                request_id=f"{k}-{i:030x}",
                time=datetime.now(UTC),
                model="fashion",
                version="3",
                arm="champion",
                shadow=False,
                latency_ms=3.2,
                route="/v1/models/fashion/predict",
                items=1,
                outputs=[{"label": "Bag", "score": 0.91, "top_k": top}],
                input_summary=[summary],
            )
            for i in range(calls)
        ]
        start = time.perf_counter()
        for r in records:
            plog.log(r)
        runs.append((time.perf_counter() - start) / calls * 1e6)
        plog.flush(30)
    plog.close()
    shutil.rmtree(folder, ignore_errors=True)
    return runs


def interval(diffs: list[float], *, resamples: int = 10_000) -> dict:
    """Mean of paired relative differences with 95 % intervals: Student's t and a percentile bootstrap."""
    x = np.asarray(diffs, dtype=float)
    n, mean = len(x), float(x.mean())
    out: dict = {"n": n, "mean": mean, "t95": None, "bootstrap95": None}
    if n < 2:
        return out
    sem = float(x.std(ddof=1)) / np.sqrt(n)
    try:
        from scipy.stats import t  # optional: the forecast extra brings it

        half = float(t.ppf(0.975, n - 1)) * sem
        out["t95"] = (mean - half, mean + half)
    except ImportError:
        pass
    means = np.random.default_rng(0).choice(x, size=(resamples, n), replace=True).mean(axis=1)
    out["bootstrap95"] = tuple(float(q) for q in np.percentile(means, [2.5, 97.5]))
    return out


def fmt_interval(name: str, ci: dict) -> str:
    def pct(lo_hi: tuple[float, float] | None) -> str:
        return "n/a" if lo_hi is None else f"[{lo_hi[0] * 100:+.1f}, {lo_hi[1] * 100:+.1f}] %"

    half = (ci["t95"][1] - ci["t95"][0]) / 2 * 100 if ci["t95"] else float("nan")
    return (
        f"  {name:22s} mean {ci['mean'] * 100:+.1f} %  95 % t-interval {pct(ci['t95'])} "
        f"(half-width {half:.1f} points)  bootstrap {pct(ci['bootstrap95'])}  ({ci['n']} pairs)"
    )


def run_variant(a: argparse.Namespace, name: str, variant: tuple, files: dict, load: argparse.Namespace):
    on, metrics, src = variant
    port, folder = st.free_port(), Path(tempfile.mkdtemp())
    config = st.serve_yaml(folder, log=on, metrics=metrics)
    cmd = st.kiln_cmd(a.bundle, port, config, batch=a.batch, wait_ms=a.wait_ms)
    env = {"PYTHONPATH": str(src)} if src is not None else None
    try:
        with st.server(cmd, port=port, ready="/readyz", log=folder / "log", env=env) as proc:
            base = st.Row(name, a.bundle.name, a.conns, 1, on)
            return st.measure(proc, port, st.KILN_PATH, base, load, files, settle=a.settle)[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarize(results: dict[str, list[st.Row]], log_us: list[float]) -> dict:
    summary: dict = {"log_call_us": log_us}
    for name, rows in results.items():
        rps, cpu = [r.rps for r in rows], [r.cpu_ms_per_answer for r in rows]
        summary[name] = {"rps": rps, "cpu_ms_per_answer": cpu, "p99_ms": [r.p99_ms for r in rows]}
        print(
            f"{name:12s} req/s median {statistics.median(rps):.0f} (range {min(rps):.0f}-{max(rps):.0f})  "
            f"CPU ms/answer median {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})  "
            f"p99 median {statistics.median(summary[name]['p99_ms']):.1f} ms"
        )
    off = results["off"]
    for name, rows in results.items():
        if name == "off":
            continue
        print(f"\n{name} against off, paired by round (relative difference, {name} / off - 1):")
        pairs = list(zip(rows, off, strict=True))
        cpu = interval([r.cpu_ms_per_answer / o.cpu_ms_per_answer - 1 for r, o in pairs])
        rps = interval([r.rps / o.rps - 1 for r, o in pairs])
        print(fmt_interval("CPU time per answer", cpu))
        print(fmt_interval("throughput", rps))
        summary[f"{name} vs off"] = {"cpu_ms_per_answer": cpu, "rps": rps}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=0.0)
    p.add_argument("--warm", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--settle", type=float, default=0.5, help="seconds after the load the CPU still counts")
    p.add_argument("--before", type=Path, help="a src/ folder of another checkout: its server, log on")
    p.add_argument("--log-only", action="store_true", help="add a variant with the log on, metrics off")
    p.add_argument("--log-calls", type=int, default=4000, help="log() calls per timing run (0: skip)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("This benchmark drives the servers with wrk, which is not on PATH: apt-get install wrk")
    log_us = log_call_us(a.log_calls) if a.log_calls else []
    if log_us:
        print(f"PredictionLog.log(): {', '.join(f'{x:.1f}' for x in log_us)} us per call "
              f"(median {statistics.median(log_us):.1f})", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    files = {"dir": tmp, "lua": tmp / "post.lua", "bodies": tmp / "bodies.jsonl"}
    files["lua"].write_text(st.LUA)
    st.make_bodies(256, files["bodies"])
    load = argparse.Namespace(concurrency=[a.conns], warm=a.warm, seconds=a.seconds, max_requests=1_000_000)
    variants = {"on": (True, True, None), "off": (False, False, None)}  # name: log, metrics, src
    if a.log_only:
        variants["log only"] = (True, False, None)
    if a.before is not None:
        variants["on, before"] = (True, True, a.before)
    results: dict[str, list[st.Row]] = {name: [] for name in variants}
    for k in range(a.rounds):
        order = list(variants) if k % 2 == 0 else list(reversed(variants))
        print(f"round {k + 1} of {a.rounds}: {', '.join(order)}", flush=True)
        for name in order:
            results[name].append(run_variant(a, name, variants[name], files, load))  # st.measure prints it
    shutil.rmtree(tmp, ignore_errors=True)
    print()
    summary = summarize(results, log_us)
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
