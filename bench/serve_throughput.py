"""Serving throughput: ``kiln serve`` (dynamic batching) against the book's FastAPI endpoint, same load.

The baseline is the deployment chapter's recipe (load the model, ``model.eval()``, a FastAPI endpoint,
one request one forward pass under ``torch.no_grad()``, JSON out). The chapter lists these steps but
shows no code and does not say ``def`` or ``async def``, so both spellings run: ``async def`` (what most
FastAPI examples write; the model runs on the event loop) and plain ``def`` (FastAPI runs it in its
thread pool). At each concurrency the faster of the two is the baseline. Two more FastAPI servers are
measured but are not baselines: the ``async def`` endpoint with ``torch.set_num_threads(1)`` (tuned),
and an endpoint that validates the same body and answers a constant (what FastAPI alone can do).

Every server is its own process under uvicorn (1 worker, no access log; one kiln serve row runs 2 uvicorn
workers under gunicorn, to use both cores), started one at a time and
driven by the same load generator at the same concurrencies: ``wrk`` (C, one thread, closed loop) with
a Lua script that POSTs ``{"image": <base64 PNG>}`` bodies of real Fashion-MNIST test images in
rotation and counts every status code. A raw-asyncio responder with a canned answer, measured the same
way, shows what the generator can do here. Before each load run a sample of answers is checked against
``load_predictor`` on the same bundle. Each row also reports the server's CPU time per answer and the
CPU the rest of the (shared) machine used meanwhile.

Targets: kiln serve (batching on, best backend) >= 5x the book's throughput with p99 <= 50 ms; the
prediction log + metrics cost <= 5 % of throughput.

    apt-get install wrk
    .venv/bin/python bench/serve_throughput.py --run RUN_DIR [--concurrency 8 16 32 64] [--json OUT]

``RUN_DIR`` holds ``bundle/`` and, to compare backends, ``bundle-onnx/`` and ``bundle-onnx-int8-static/``
(``kiln export RUN_DIR --format onnx`` and ``kiln export RUN_DIR --quantize static``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from pydantic import BaseModel

KILN = str(Path(sys.executable).with_name("kiln"))
BACKENDS = {"torch": "bundle", "onnx fp32": "bundle-onnx", "onnx int8 static": "bundle-onnx-int8-static"}
# (max_batch_size, max_wait_ms) tried on the best backend; (32, 2.0) is the default and runs anyway.
SWEEP = [(1, 0.0), (8, 2.0), (32, 0.0), (32, 5.0), (64, 2.0)]
P99_LIMIT_MS = 50.0
WORKERS = 2  # kiln serve --workers for the row that uses both cores
KILN_PATH = "/v1/models/fashion/predict"
NAIVE_PATH = "/predict"
# FastAPI servers other than kiln serve: the book's two spellings, a tuned one, and an empty endpoint.
NAIVE = {
    "async": "naive async def",  # the book
    "def": "naive def",  # the book
    "async-1thread": "naive async def, 1 thread",  # torch.set_num_threads(1): tuned, not the book
    "empty": "FastAPI, no model",  # validates the same body, answers a constant: the framework's ceiling
}
BOOK = ("naive async def", "naive def")

# One wrk thread. Each connection keeps one request in flight; bodies rotate. response() counts status
# codes per thread (done() merges them) and stops the thread after --max-requests answers.
LUA = r"""
local bodies, idx, seen, limit, threads = {}, 0, 0, 0, {}
counts, started, stopped = {}, 0, 0  -- globals: done() reads them from each thread with t:get()
local function now_s()  -- wall clock; wrk's Lua has none finer than os.time()
  local p = io.popen("date +%s.%N"); local t = p:read("*n"); p:close(); return t
end
function setup(thread) table.insert(threads, thread) end
function init(args)
  for line in io.lines(args[1]) do
    table.insert(bodies, wrk.format("POST", args[2], {["Content-Type"] = "application/json"}, line))
  end
  limit = tonumber(args[3])
  idx = math.random(#bodies)
  started = now_s()
end
function request() idx = idx % #bodies + 1; return bodies[idx] end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  seen = seen + 1
  if limit > 0 and seen == limit then stopped = now_s(); wrk.thread:stop() end
end
function done(summary, latency, requests)
  local merged, parts, limited = {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do merged[tostring(k)] = (merged[tostring(k)] or 0) + v end
    if t:get("stopped") > 0 then limited = math.max(limited, t:get("stopped") - t:get("started")) end
  end
  for k, v in pairs(merged) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  -- A run cut short by the request limit lasted until the limit, not the -d duration.
  local duration = limited > 0 and limited or summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_s": %.6f, "limited": %s, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "statuses": {%s}}\n',
    summary.requests, duration, tostring(limited > 0), e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, table.concat(parts, ", ")))
end
"""


@dataclass
class Row:
    server: str
    backend: str
    concurrency: int
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    log_and_metrics: bool | None = None
    workers: int = 1  # kiln serve --workers: uvicorn alone, or that many uvicorn workers under gunicorn
    rps: float = 0.0  # 200 answers per second
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: int = 0
    server_cores: float = 0.0  # CPU seconds of the server process per wall second
    wrk_cores: float = 0.0
    other_cores: float = 0.0  # CPU the rest of the (shared) machine used meanwhile: the noise
    correct: str = ""  # sampled answers that match load_predictor, e.g. "64/64"
    limited: bool = False  # stopped by --max-requests before --seconds


# --- the baseline, the way the book's deployment chapter writes it ----------------------------------------


class PredictRequest(BaseModel):
    image: str  # base64 PNG


def naive_app(bundle: Path, *, endpoint: str):
    """FastAPI + eager torch, one forward pass per request. ``endpoint``: a key of ``NAIVE``."""
    import torch
    from fastapi import FastAPI

    import torchkiln

    predictor = torchkiln.load_predictor(bundle)  # the model, its labels and preprocessing settings
    model = predictor.model.eval()
    classes = predictor.labels
    size, channels = predictor.bundle.config.data.image_size, predictor.bundle.config.data.channels
    app = FastAPI()

    def predict_one(req: PredictRequest) -> dict:
        img = Image.open(io.BytesIO(base64.b64decode(req.image))).convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)  # (S, S) or (S, S, 3); the model normalizes inside
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        score, index = probs.max(dim=0)
        return {"label": classes[int(index)], "score": float(score)}

    if endpoint == "async-1thread":
        torch.set_num_threads(1)
    if endpoint == "def":

        @app.post(NAIVE_PATH)
        def predict_sync(req: PredictRequest) -> dict:
            return predict_one(req)

    elif endpoint == "empty":

        @app.post(NAIVE_PATH)
        async def predict_nothing(req: PredictRequest) -> dict:
            return {"label": classes[0], "score": 1.0}

    else:

        @app.post(NAIVE_PATH)
        async def predict_async(req: PredictRequest) -> dict:
            return predict_one(req)

    return app


class _Trivial(asyncio.Protocol):
    """HTTP/1.1 keep-alive responder with a canned JSON answer: the load generator's ceiling."""

    ANSWER = b'{"label": "Bag", "score": 1.0}'
    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ANSWER),
        ANSWER,
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            n = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            self.buf = self.buf[end + 4 + n :]
            self.transport.write(self.RESPONSE)  # type: ignore[attr-defined]


def serve_trivial(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Trivial, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


# --- processes and the load generator ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that still run (kiln serve's prediction-log writer process)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
        found.append(p)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its running descendants, all threads."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


@contextmanager
def server(cmd: list[str], *, port: int, ready: str, log: Path, env: dict | None = None) -> Iterator:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} was not ready after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(port: int, path: str, *, lua: Path, bodies: Path, conns: int, seconds: float, limit: int) -> dict:
    """One wrk run; returns its BENCH_JSON summary plus the CPU wrk itself used (cores)."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(lua)]
    cmd += [f"http://127.0.0.1:{port}", "--", str(bodies), path, str(limit)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
    out = json.loads(line.removeprefix("BENCH_JSON "))
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out | {"wrk_cores": used / wall}


def measure(
    proc: subprocess.Popen, port: int, path: str, base: Row, args: argparse.Namespace, files: dict[str, Path]
) -> list[Row]:
    rows = []
    for conns in args.concurrency if base.concurrency == 0 else [base.concurrency]:
        wrk(port, path, lua=files["lua"], bodies=files["bodies"], conns=conns, seconds=args.warm, limit=0)
        cpu0, busy0 = cpu_seconds(proc.pid), busy_seconds()
        w = wrk(
            port,
            path,
            lua=files["lua"],
            bodies=files["bodies"],
            conns=conns,
            seconds=args.seconds,
            limit=args.max_requests,
        )
        cores = (cpu_seconds(proc.pid) - cpu0) / w["duration_s"]
        busy = (busy_seconds() - busy0) / w["duration_s"]
        ok = w["statuses"].get("200", 0)
        row = Row(**{**asdict(base), "concurrency": conns})
        row.rps, row.p50_ms, row.p99_ms = ok / w["duration_s"], w["p50_ms"], w["p99_ms"]
        row.requests, row.statuses, row.socket_errors = w["requests"], w["statuses"], w["socket_errors"]
        row.limited = w["limited"]
        row.server_cores, row.wrk_cores = round(cores, 2), round(w["wrk_cores"], 3)
        row.other_cores = round(max(0.0, busy - cores - w["wrk_cores"]), 2)
        rows.append(row)
        print(fmt_row(row), flush=True)
    return rows


def check_answers(port: int, path: str, samples: list[str], expected: list[str]) -> str:
    """Send a sample one by one; count answers whose top-1 label equals load_predictor's."""
    good = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for body, label in zip(samples, expected, strict=True):
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            r.raise_for_status()
            data = r.json()
            got = data["predictions"][0]["label"] if "predictions" in data else data["label"]
            good += got == label
    return f"{good}/{len(samples)}"


# --- the runs ----------------------------------------------------------------------------------------------


def make_bodies(n: int, path: Path) -> tuple[list[str], list[bytes], list[str]]:
    """``n`` Fashion-MNIST test images as JSON bodies (one per line), their PNG bytes and true labels."""
    from torchkiln.components.catalog import load_catalog

    data = load_catalog("fashion-mnist")
    test = np.flatnonzero(data.splits == "test") if data.splits is not None else np.arange(len(data.images))
    pick = np.random.default_rng(0).choice(test, size=n, replace=False)
    pngs = []
    for i in pick:
        buf = io.BytesIO()
        Image.fromarray(data.images[i]).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    bodies = [json.dumps({"image": base64.b64encode(p).decode()}) for p in pngs]
    path.write_text("\n".join(bodies) + "\n")
    return bodies, pngs, [data.classes[int(data.labels[i])] for i in pick]


def kiln_cmd(
    bundle: Path, port: int, batch: int, wait_ms: float, config: Path, workers: int = 1
) -> list[str]:
    return [
        KILN, "serve", str(bundle), "--config", str(config), "--name", "fashion", "--port", str(port),
        "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--workers", str(workers),
    ]  # fmt: skip


def serve_yaml(folder: Path, *, on: bool) -> Path:
    """The log and metrics settings. In a YAML file because ``kiln serve --log-url off`` does not switch
    the log off: it falls back to the default ``sqlite:///runs/serve/predictions.db``."""
    path = folder / "serve.yaml"
    db = folder / "predictions.db"
    path.write_text(f"log_url: sqlite:///{db}\nmetrics: true\n" if on else "log_url: null\nmetrics: false\n")
    return path


def check_log_and_metrics(proc: subprocess.Popen, port: int, folder: Path, *, on: bool) -> None:
    """While the server runs: is /metrics served, and does it (its log writer process) hold the database?"""
    links = []
    for pid in process_tree(proc.pid):
        with contextlib.suppress(OSError):  # exited meanwhile
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed meanwhile
                    links.append(os.readlink(fd))
    dbs = {link for link in links if link.endswith("predictions.db")}
    served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    expected = {str(folder / "predictions.db")} if on else set()
    if served != on or dbs != expected:
        raise RuntimeError(
            f"kiln serve runs with metrics={served} and log files {dbs}; expected {on}, {expected}"
        )


def run_kiln(
    args: argparse.Namespace,
    files: dict[str, Path],
    refs: dict[str, tuple[list[str], list[str]]],
    backend: str,
    *,
    batch: int = 32,
    wait_ms: float = 2.0,
    on: bool = True,
    concurrency: int = 0,
    workers: int = 1,
) -> list[Row]:
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="kiln-serve-bench-"))
    base = Row("kiln serve", backend, concurrency, batch, wait_ms, on, workers)
    cmd = kiln_cmd(args.run / BACKENDS[backend], port, batch, wait_ms, serve_yaml(tmp, on=on), workers)
    try:
        with server(cmd, port=port, ready="/readyz", log=tmp / "server.log") as proc:
            base.correct = check_answers(port, KILN_PATH, *refs[backend])
            check_log_and_metrics(proc, port, tmp, on=on)
            rows = measure(proc, port, KILN_PATH, base, args, files)
        if on:  # the log was written, not just opened
            with sqlite3.connect(tmp / "predictions.db") as db:
                logged = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
            if logged < sum(r.requests for r in rows):
                raise RuntimeError(f"the prediction log holds {logged} rows, fewer than the answers sent")
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_naive(args: argparse.Namespace, files: dict[str, Path], refs: dict, endpoint: str) -> list[Row]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-naive", endpoint, "--run", str(args.run), "--port", str(port)]
    with server(cmd, port=port, ready="/openapi.json", log=files["dir"] / f"naive-{endpoint}.log") as proc:
        base = Row(NAIVE[endpoint], "-" if endpoint == "empty" else "torch", 0)
        if endpoint != "empty":
            base.correct = check_answers(port, NAIVE_PATH, *refs["torch"])
        return measure(proc, port, NAIVE_PATH, base, args, files)


def run_trivial(args: argparse.Namespace, files: dict[str, Path]) -> list[Row]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-trivial", "--run", str(args.run), "--port", str(port)]
    short = argparse.Namespace(**{**vars(args), "warm": 1.0, "seconds": min(args.seconds, 5.0)})
    with server(cmd, port=port, ready="/", log=files["dir"] / "trivial.log") as proc:
        return measure(proc, port, NAIVE_PATH, Row("trivial (generator ceiling)", "-", 0), short, files)


def fmt_row(r: Row) -> str:
    settings = "" if r.max_batch_size is None else f"b{r.max_batch_size}/{r.max_wait_ms:g}ms"
    if r.log_and_metrics is not None:
        settings += " log+metrics" if r.log_and_metrics else " no log/metrics"
    if r.workers > 1:
        settings += f" x{r.workers}"
    other = {k: v for k, v in r.statuses.items() if k != "200"}
    return (
        f"  {r.server:28s} {r.backend:17s} {settings:24s} c={r.concurrency:<3d} {r.rps:8.1f} req/s  "
        f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  server {r.server_cores:.2f} cores  "
        f"wrk {r.wrk_cores:.3f}  others {r.other_cores:.2f}  {r.correct or '-':>7s}  "
        f"non-200: {other or '-'}  socket errors {r.socket_errors}"
    )


def best(rows: list[Row], *, conns: int, p99: float | None = None) -> Row | None:
    ok = [r for r in rows if r.concurrency == conns and (p99 is None or r.p99_ms <= p99)]
    return max(ok, key=lambda r: r.rps, default=None)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--run", type=Path, required=True, help="the trained run (holds bundle/)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8, 16, 32, 64], help="open connections"
    )
    parser.add_argument("--warm", type=float, default=3.0, help="warm-up seconds before each measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per configuration")
    parser.add_argument("--max-requests", type=int, default=100_000, help="... or this many answers")
    parser.add_argument("--images", type=int, default=256, help="distinct test images in rotation")
    parser.add_argument("--check", type=int, default=64, help="answers checked against load_predictor")
    parser.add_argument("--repeats", type=int, default=3, help="off/on pairs for the log+metrics overhead")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--serve-naive", choices=sorted(NAIVE), help=argparse.SUPPRESS)
    parser.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        import uvicorn

        app = naive_app(args.run / "bundle", endpoint=args.serve_naive)
        uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")
        return
    if args.serve_trivial:
        serve_trivial(args.port)
        return
    if shutil.which("wrk") is None:
        sys.exit("This benchmark drives the servers with wrk: apt-get install wrk")
    results = bench(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def bench(args: argparse.Namespace) -> dict:
    import torchkiln

    backends = [b for b, d in BACKENDS.items() if (args.run / d / "bundle.json").is_file()]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        files = {"dir": Path(tmp), "lua": Path(tmp) / "post.lua", "bodies": Path(tmp) / "bodies.jsonl"}
        files["lua"].write_text(LUA)
        bodies, pngs, truth = make_bodies(args.images, files["bodies"])
        refs = {}
        for b in backends:
            labels = [a["label"] for a in torchkiln.load_predictor(args.run / BACKENDS[b]).predict(pngs)]
            refs[b] = (bodies[: args.check], labels[: args.check])
            acc = np.mean([a == t for a, t in zip(labels, truth, strict=True)]) * 100
            print(f"{b}: load_predictor is right on {acc:.1f} % of the {len(pngs)} images", flush=True)
        print("load generator ceiling (wrk, 1 thread, against a canned answer):", flush=True)
        rows = run_trivial(args, files)
        print(
            "FastAPI endpoints (eager torch, one forward pass per request; and one with no model):",
            flush=True,
        )
        for endpoint in NAIVE:
            rows += run_naive(args, files, refs, endpoint)
        print("kiln serve, default settings (batch 32, wait 2 ms, prediction log + metrics):", flush=True)
        for backend in backends:
            rows += run_kiln(args, files, refs, backend)
        return summarize(args, files, refs, rows)


def summarize(args: argparse.Namespace, files: dict, refs: dict, rows: list[Row]) -> dict:
    kiln = [r for r in rows if r.server == "kiln serve"]
    # Tune at the concurrency where kiln serve answers most within the p99 limit; if it never stays
    # within it, at the lowest concurrency (closed loop: latency ~ concurrency / throughput).
    fits = [r for r in kiln if r.p99_ms <= P99_LIMIT_MS]
    top = max(fits or [r for r in kiln if r.concurrency == min(args.concurrency)], key=lambda r: r.rps)
    backend, conns = top.backend, top.concurrency
    print(f"settings sweep on {backend} at concurrency {conns}:", flush=True)
    for batch, wait in SWEEP:
        rows += run_kiln(args, files, refs, backend, batch=batch, wait_ms=wait, concurrency=conns)
    print(f"{WORKERS} workers under gunicorn ({backend}, batch 32, 2 ms, c={conns}):", flush=True)
    rows += run_kiln(args, files, refs, backend, concurrency=conns, workers=WORKERS)
    print(f"prediction log + metrics off vs on ({backend}, batch 32, 2 ms, c={conns}):", flush=True)
    pairs = []
    for _ in range(args.repeats):
        off = run_kiln(args, files, refs, backend, on=False, concurrency=conns)[0]
        on = run_kiln(args, files, refs, backend, on=True, concurrency=conns)[0]
        pairs.append((off, on))
        rows += [off, on]
    print_table(rows)
    kiln = [r for r in rows if r.server == "kiln serve"]
    book = [r for r in rows if r.server in BOOK]
    speedups = {}
    print("\nratios (200 answers per second, same load generator, same concurrency):")
    for c in args.concurrency:
        k, n = best(kiln, conns=c, p99=P99_LIMIT_MS), best(book, conns=c)
        tuned, empty = (
            best([r for r in rows if r.server == NAIVE[e]], conns=c) for e in ("async-1thread", "empty")
        )
        if k is None:
            k = best(kiln, conns=c)
            note = f"no kiln serve setting kept p99 <= {P99_LIMIT_MS:g} ms; best regardless"
        else:
            note = f"within p99 <= {P99_LIMIT_MS:g} ms"
        speedups[c] = {"ratio": k.rps / n.rps, "within_p99": k.p99_ms <= P99_LIMIT_MS}
        print(
            f"  c={c}: kiln serve {k.rps:.0f} req/s ({k.backend}, batch {k.max_batch_size}/"
            f"{k.max_wait_ms:g} ms, p99 {k.p99_ms:.1f} ms; {note}) vs {n.server} {n.rps:.0f} req/s "
            f"(p99 {n.p99_ms:.1f} ms): "
            f"{k.rps / n.rps:.2f}x; vs the tuned naive {k.rps / tuned.rps:.2f}x; "
            f"FastAPI with no model does {empty.rps:.0f} req/s = {empty.rps / n.rps:.2f}x the book's"
        )
    met = [c for c, v in speedups.items() if v["within_p99"] and v["ratio"] >= 5]
    ratio = max((v["ratio"] for v in speedups.values() if v["within_p99"]), default=0.0)
    verdict = "MET" if met else "MISSED"
    print(
        f"  target >= 5x the book's endpoint with p99 <= {P99_LIMIT_MS:g} ms: {verdict} (best {ratio:.2f}x)"
    )
    losses = [1 - on.rps / off.rps for off, on in pairs]
    loss = statistics.median(losses)
    print(
        f"  prediction log + metrics: {', '.join(f'{x * 100:+.1f} %' for x in losses)} of the throughput "
        f"lost (median {loss * 100:.1f} %; target <= 5 %: {'MET' if loss <= 0.05 else 'MISSED'}); p99 "
        f"{statistics.median(on.p99_ms for _, on in pairs):.1f} ms on vs "
        f"{statistics.median(off.p99_ms for off, _ in pairs):.1f} ms off"
    )
    return {
        "rows": [asdict(r) for r in rows],
        "tuned_at": {"backend": backend, "concurrency": conns},
        "speedup_by_concurrency": speedups,
        "log_metrics_loss": losses,
    }


def print_table(rows: list[Row]) -> None:
    """Markdown. "server CPU" is CPU time per answer; "others" is what the rest of the machine used."""
    print("\n| server | backend | batch / wait | log+metrics | conc. | req/s | p50 ms | p99 ms | non-200 | "
          "server CPU ms/answer | others (cores) | checked |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        settings = "—" if r.max_batch_size is None else f"{r.max_batch_size} / {r.max_wait_ms:g} ms"
        settings += f", {r.workers} workers" if r.workers > 1 else ""
        lm = "—" if r.log_and_metrics is None else ("on" if r.log_and_metrics else "off")
        other = sum(v for k, v in r.statuses.items() if k != "200") + r.socket_errors
        cpu = r.server_cores / r.rps * 1000 if r.rps else float("nan")
        print(
            f"| {r.server} | {r.backend} | {settings} | {lm} | {r.concurrency} | {r.rps:.0f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {other} | {cpu:.2f} | {r.other_cores:.2f} | "
            f"{r.correct or '—'} |"
        )


if __name__ == "__main__":
    main()
