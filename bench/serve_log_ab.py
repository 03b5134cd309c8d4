"""What the prediction log and metrics cost: ``kiln serve`` with them on and off, interleaved, same load.

Each round starts one server per variant, one at a time, and drives it with the same wrk load as
``bench/serve_throughput.py`` (its helpers are reused). Rounds are interleaved so that the machine's
drift hits every variant alike; the medians are what to read. ``--log-only`` adds a variant with the log
on and metrics off, to split the cost. ``--before SRC`` adds a variant with the log on that runs another
checkout's ``src/`` (e.g. a ``git worktree`` of an older commit), to measure a change. The server's CPU
counts its child processes too (the prediction log's writer process), and before the rounds the script
times ``PredictionLog.log()`` itself, in this process, with its writer running.

    apt-get install wrk
    .venv/bin/python bench/serve_log_ab.py --bundle RUN_DIR/bundle-onnx-int8-static [--rounds 5]
        [--conns 16] [--log-only] [--before /tmp/old/src] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import serve_throughput as st
from torchkiln.serve.predlog import PredictionLog, PredictionRecord


def settings_yaml(folder: Path, *, log: bool, metrics: bool) -> Path:
    """The serve settings of a variant (``kiln serve --log-url off`` falls back to the default log)."""
    path = folder / "serve.yaml"
    url = f"sqlite:///{folder / 'predictions.db'}" if log else "null"
    path.write_text(f"log_url: {url}\nmetrics: {str(metrics).lower()}\n")
    return path


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--wait-ms", type=float, default=0.0)
    p.add_argument("--warm", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--before", type=Path, help="a src/ folder of another checkout: its server, log on")
    p.add_argument("--log-only", action="store_true", help="add a variant with the log on, metrics off")
    p.add_argument("--log-calls", type=int, default=4000, help="log() calls per timing run (0: skip)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    log_us = log_call_us(a.log_calls) if a.log_calls else []
    if log_us:
        print(f"PredictionLog.log(): {', '.join(f'{x:.1f}' for x in log_us)} us per call "
              f"(median {statistics.median(log_us):.1f})", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    files = {"dir": tmp, "lua": tmp / "post.lua", "bodies": tmp / "bodies.jsonl"}
    files["lua"].write_text(st.LUA)
    st.make_bodies(256, files["bodies"])
    args = argparse.Namespace(concurrency=[a.conns], warm=a.warm, seconds=a.seconds, max_requests=1_000_000)
    variants = {"on": (True, True, None), "off": (False, False, None)}  # name: log, metrics, src
    if a.log_only:
        variants["log only"] = (True, False, None)
    if a.before is not None:
        variants["on, before"] = (True, True, a.before)
    results: dict[str, list[st.Row]] = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (on, metrics, src) in variants.items():
            port, folder = st.free_port(), Path(tempfile.mkdtemp())
            cmd = st.kiln_cmd(
                a.bundle, port, a.batch, a.wait_ms, settings_yaml(folder, log=on, metrics=metrics)
            )
            env = {"PYTHONPATH": str(src)} if src is not None else None
            with st.server(cmd, port=port, ready="/readyz", log=folder / "log", env=env) as proc:
                row = st.measure(proc, port, st.KILN_PATH, st.Row(name, a.bundle.name, a.conns, a.batch,
                                                                  a.wait_ms, on), args, files)[0]  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
            results[name].append(row)  # st.measure printed it
    print()
    summary: dict = {"log_call_us": log_us}
    for name, rows in results.items():
        rps = [r.rps for r in rows]
        cpu = [r.server_cores / r.rps * 1000 for r in rows]
        summary[name] = {
            "rps": rps,
            "rps_median": statistics.median(rps),
            "cpu_ms_per_answer_median": round(statistics.median(cpu), 3),
            "p99_ms_median": statistics.median(r.p99_ms for r in rows),
        }
        print(
            f"{name:12s} req/s {', '.join(f'{x:.0f}' for x in rps)}  median {statistics.median(rps):.0f}  "
            f"CPU ms/answer {statistics.median(cpu):.2f}  p99 {summary[name]['p99_ms_median']:.1f} ms"
        )
    on, off = summary["on"]["rps_median"], summary["off"]["rps_median"]
    print(f"\nlog + metrics cost {100 * (1 - on / off):.1f} % of throughput (medians; target <= 5 %)")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
