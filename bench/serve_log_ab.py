"""What the prediction log and metrics cost: ``kiln serve`` with them on and off, interleaved, same load.

Each round starts one server per variant, one at a time, and drives it with the same wrk load as
``bench/serve_throughput.py`` (its helpers are reused). Rounds are interleaved so that the machine's
drift hits every variant alike; the medians are what to read. ``--before SRC`` adds a variant with the
log on that runs another checkout's ``src/`` (e.g. a ``git worktree`` of an older commit), to measure a
change.

    apt-get install wrk
    .venv/bin/python bench/serve_log_ab.py --bundle RUN_DIR/bundle-onnx-int8-static [--rounds 5]
        [--conns 16] [--before /tmp/old/src] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import serve_throughput as st


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
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    files = {"dir": tmp, "lua": tmp / "post.lua", "bodies": tmp / "bodies.jsonl"}
    files["lua"].write_text(st.LUA)
    st.make_bodies(256, files["bodies"])
    args = argparse.Namespace(concurrency=[a.conns], warm=a.warm, seconds=a.seconds, max_requests=1_000_000)
    variants = {"on": (True, None), "off": (False, None)}
    if a.before is not None:
        variants["on, before"] = (True, a.before)
    results: dict[str, list[st.Row]] = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (on, src) in variants.items():
            port, folder = st.free_port(), Path(tempfile.mkdtemp())
            cmd = st.kiln_cmd(a.bundle, port, a.batch, a.wait_ms, st.serve_yaml(folder, on=on))
            env = {"PYTHONPATH": str(src)} if src is not None else None
            with st.server(cmd, port=port, ready="/readyz", log=folder / "log", env=env) as proc:
                row = st.measure(proc, port, st.KILN_PATH, st.Row(name, a.bundle.name, a.conns, a.batch,
                                                                  a.wait_ms, on), args, files)[0]  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
            results[name].append(row)
            print(st.fmt_row(row), flush=True)
    print()
    summary = {}
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
