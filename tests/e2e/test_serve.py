"""`kiln serve` as a user runs it: a real process on a loopback port, real HTTP, SIGTERM, the SQLite log.

Each server spends seconds importing torch before it listens, so the module starts every server it needs
at once when the first test asks for them; each test then waits for its own. Every server binds to
127.0.0.1 on a free port, works in its own folder, and is stopped (SIGTERM, then SIGKILL) when the module
ends. The refusal to start runs in-process: the same command code, without another torch import.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from torchkiln import api, load_predictor
from torchkiln.cli.main import app
from torchkiln.serve.predlog import read_predictions

from ..conftest import KILN

NAME = "shapes"
PREDICT = f"/v1/models/{NAME}/predict"
PREDICT_ROUTE = "/v1/models/{name}/predict"  # the route label in the metrics
SHUTDOWN_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 90.0  # four servers import torch at once on two cores, maybe beside other work
ADMIN_TOKEN = "e2e-admin-token-0123456789"
READ_TIMEOUT_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shape_png(cls: int, seed: int = 0, size: int = 16) -> bytes:
    """A PNG of class ``cls`` as the tiny bundle learned it: 0 a square, 1 a horizontal, 2 a vertical bar."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    mid = slice(size // 2 - 2, size // 2 + 2)
    if cls == 0:
        img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 230
    elif cls == 1:
        img[mid, :] = 230
    else:
        img[:, mid] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Server:
    """One `kiln serve` process; its stdout and stderr go to files, so a full pipe never blocks it."""

    proc: subprocess.Popen[bytes]
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_url(self) -> str:
        return f"sqlite:///{self.folder}/p.db"

    def stderr(self) -> str:
        return (self.folder / "stderr.txt").read_text(errors="replace")

    def explain(self) -> str:
        command = " ".join(map(str, self.proc.args[1:]))
        return f"kiln {command} -> {self.proc.poll()}\n--- stderr\n{self.stderr()}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited before it was ready:\n{self.explain()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        pytest.fail(f"/readyz did not answer 200 within {READY_TIMEOUT_S:g} s:\n{self.explain()}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self) -> None:
        try:
            self.proc.wait(SHUTDOWN_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def launch(folder: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    (folder / "tmp").mkdir(parents=True, exist_ok=False)
    port = free_port()
    cmd = [KILN, "serve", *args, "--port", str(port), "--log-url", f"sqlite:///{folder}/p.db"]
    # One torch thread per process: the servers and the test share two cores. TMPDIR: the metrics files of
    # gunicorn workers land in the server's own folder.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder / "tmp"), **(env or {})}
    with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=folder, env=full_env, stdout=out, stderr=err)
    return Server(proc, folder, port)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[dict[str, Server]]:
    """Every server this module needs, started together; they import torch side by side."""
    root = tmp_path_factory.mktemp("serve")
    model = [str(tiny_bundle), "--name", NAME]
    shutdown = {"KILN_SERVE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)}
    # The reload server serves a copy that the test replaces with another version, then reloads.
    (root / "reload").mkdir()
    reloadable = shutil.copytree(tiny_bundle, root / "reload" / "bundle")
    started: dict[str, Server] = {}
    try:
        # Short read timeouts: the tests hold connections open half-sent.
        timeouts = {
            "KILN_SERVE_HEADER_TIMEOUT_S": str(READ_TIMEOUT_S),
            "KILN_SERVE_BODY_TIMEOUT_S": str(READ_TIMEOUT_S),
        }
        started["steady"] = launch(root / "steady", *model, env=shutdown | timeouts)  # predictions, metrics
        started["burst"] = launch(root / "burst", *model, env=shutdown)  # SIGTERM in a burst of requests
        started["workers"] = launch(root / "workers", *model, "--workers", "2", env=shutdown)  # gunicorn
        admin = shutdown | timeouts | {"KILN_SERVE_ADMIN_TOKEN": ADMIN_TOKEN}
        started["reload"] = launch(
            root / "reload", str(reloadable), "--name", NAME, "--workers", "2", env=admin
        )
        yield started
    finally:
        for server in started.values():
            server.terminate()
        for server in started.values():
            server.wait_or_kill()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(sample name, labels): value}; the text must parse as Prometheus exposition."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over every label set that includes ``labels`` (e.g. over all versions)."""
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)


# --- predictions ----------------------------------------------------------------------------------------
def test_json_and_multipart_answers_equal_the_predictor(
    servers: dict[str, Server], tiny_bundle: Path
) -> None:
    server = servers["steady"]
    server.wait_ready()
    images = [shape_png(c, seed=c) for c in (0, 1, 2)]
    predictor = load_predictor(tiny_bundle)
    expected = predictor.predict(images, top_k=3)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        as_json = client.post(PREDICT, json={"images": [b64(i) for i in images], "top_k": 3})
        files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        as_upload = client.post(PREDICT, files=files, data={"top_k": "3"})
        one = client.post(PREDICT, json={"image": b64(images[1])})
    for response in (as_json, as_upload, one):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["arm"]) == (NAME, "champion")
        assert body["version"] == response.headers["x-model-version"] == predictor.version
        assert body["request_id"] == response.headers["x-request-id"]
    pairs = [
        *zip(as_json.json()["predictions"], expected, strict=True),
        *zip(as_upload.json()["predictions"], expected, strict=True),
        *zip(one.json()["predictions"], predictor.predict(images[1:2]), strict=True),
    ]
    for got, want in pairs:
        assert got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        assert [t["score"] for t in got["top_k"]] == pytest.approx(
            [t["score"] for t in want["top_k"]], abs=1e-5
        )


def test_metrics_count_every_answer_and_batch(servers: dict[str, Server]) -> None:
    """The counters move by exactly what this test sent (other tests may have used the server before)."""
    server = servers["steady"]
    server.wait_ready()
    bodies = [{"images": [b64(shape_png(i % 3, seed=i))] * (1 + i % 3)} for i in range(24)]
    bad = [{"images": []}, {"imgs": ["x"]}]
    before = scrape(server.url)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies + bad))

    responses = asyncio.run(send_all())
    after = scrape(server.url)
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * len(bodies) + [422] * len(bad), [
        r.text for r in responses if r.status_code != 200
    ]
    images = sum(len(b["images"]) for b in bodies)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    route = {"model": NAME, "route": PREDICT_ROUTE}
    assert delta("kiln_requests_total", **route, status="200") == len(bodies)
    assert delta("kiln_requests_total", **route, status="422") == len(bad)
    assert delta("kiln_request_duration_seconds_count", **route) == len(bodies) + len(bad)
    assert delta("kiln_batch_size_count", model=NAME) > 0
    assert delta("kiln_batch_size_sum", model=NAME) == images  # each answered input ran in exactly one batch
    assert delta("kiln_predicted_class_total", model=NAME) == images
    assert total(after, "kiln_model_info", model=NAME, arm="champion") == 1


# --- shutdown -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    sent_id: str
    response: httpx.Response | None = None
    error: str | None = None  # the transport error of a request that got no status


async def burst(server: Server, n: int, concurrency: int, sigterm_after: int) -> tuple[list[Outcome], float]:
    """Send ``n`` one-image requests, ``concurrency`` at a time; SIGTERM once ``sigterm_after`` are done.

    Returns:
        The outcome of each request, and when SIGTERM was sent (``time.monotonic()``).
    """
    outcomes = [Outcome(f"burst-{i:03d}") for i in range(n)]
    gate, done, signalled = asyncio.Semaphore(concurrency), 0, float("nan")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal done, signalled
            outcome, body = outcomes[i], {"images": [b64(shape_png(i % 3, seed=i))]}
            async with gate:
                try:
                    outcome.response = await client.post(
                        PREDICT, json=body, headers={"x-request-id": outcome.sent_id}
                    )
                except httpx.TransportError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
            done += 1
            if done == sigterm_after:
                server.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=60)
    return outcomes, signalled


def test_sigterm_in_a_burst_answers_what_was_accepted_and_logs_each_answer(
    servers: dict[str, Server],
) -> None:
    server = servers["burst"]
    server.wait_ready()
    n, after = 200, 50
    outcomes, signalled = asyncio.run(burst(server, n, concurrency=32, sigterm_after=after))
    try:
        returncode: int | None = server.proc.wait(max(0.0, signalled + SHUTDOWN_TIMEOUT_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = None
    exit_s = time.monotonic() - signalled

    answered = [o for o in outcomes if o.response is not None]
    ok = [o for o in answered if o.response.status_code == 200]
    errors = sorted({o.error for o in outcomes if o.error})
    summary = (
        f"{len(ok)} answered 200, {len(answered) - len(ok)} answered otherwise, "
        f"{n - len(answered)} never accepted (connection errors: {errors})"
    )
    # An accepted request gets its answer, or at most a clean 503 refusal; never a 5xx crash.
    others = {o.sent_id: (o.response.status_code, o.response.text) for o in answered if o not in ok}
    assert all(status == 503 for status, _ in others.values()), f"{summary}; {others}"
    assert len(ok) >= after, summary  # everything before the signal was answered
    assert len(ok) < n, f"SIGTERM did not interrupt the burst: {summary}"
    for o in ok:
        body = o.response.json()
        assert body["request_id"] == o.sent_id and len(body["predictions"]) == 1, body
    assert returncode is not None, (
        f"still running {SHUTDOWN_TIMEOUT_S:g} s after SIGTERM:\n{server.explain()}"
    )

    # The log holds one row per 200, and nothing else: no lost answer, no row for an unanswered request.
    rows = read_predictions(server.log_url)
    logged = sorted(r.request_id for r in rows)
    assert logged == sorted(o.sent_id for o in ok), (
        f"{summary}; {len(rows)} rows; missing: {sorted({o.sent_id for o in ok} - set(logged))}; "
        f"extra: {sorted(set(logged) - {o.sent_id for o in ok})}"
    )
    assert all(r.model == NAME and r.items == 1 and not r.shadow for r in rows)
    assert "Traceback" not in server.stderr(), server.explain()
    assert returncode == 0, f"exit code {returncode} after {exit_s:.1f} s; {summary}\n{server.explain()}"


# --- refusing to start ----------------------------------------------------------------------------------
def test_an_invalid_setting_exits_2_with_the_problem_listed(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_serve(settings: object) -> None:
        pytest.fail(f"kiln serve started serving with invalid settings: {settings}")

    monkeypatch.setattr(api, "serve", must_not_serve)
    monkeypatch.chdir(tmp_path)
    args = ["serve", str(tiny_bundle), "--max-batch-size", "0", "--port", str(free_port())]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.splitlines() == [
        "error: The serve settings are invalid (1 problem(s)):",
        "  - 'max_batch_size': Input should be greater than or equal to 1. Got 0.",
        "Fix the value in the serve YAML, the KILN_SERVE_* environment variable or the kiln serve option; "
        "docs/serving.md lists every setting.",
    ], result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # it stopped before it created anything (no prediction log)


# --- several workers ------------------------------------------------------------------------------------
# What each gunicorn worker does at boot: open the shared prediction log, creating it the first time. The
# workers boot within milliseconds of each other; here two processes do it at the same instant, a few
# rounds on fresh SQLite files, so a race shows every time instead of once in a while. A barrier makes the
# instant: each process says "ready" on stdout, then blocks on stdin until the test releases both together.
OPEN_LOG_TOGETHER = """
import sys
from torchkiln.serve.predlog import PredictionLog

folder, rounds = sys.argv[1], int(sys.argv[2])
for k in range(rounds):
    log = PredictionLog(f"sqlite:///{folder}/{k}.db")
    print(f"ready {k}", flush=True)
    if sys.stdin.readline() != "go\\n":
        sys.exit(f"round {k}: the test stopped before releasing this round")
    try:
        log.start()
    except Exception as exc:
        sys.exit(f"round {k}: {type(exc).__name__}: {exc}")
    log.close()
"""


def test_workers_that_start_together_all_open_the_prediction_log(tmp_path: Path) -> None:
    rounds = 4
    logs = tmp_path / "logs"
    logs.mkdir()
    args = [sys.executable, "-c", OPEN_LOG_TOGETHER, str(tmp_path), str(rounds)]
    procs, lines = [], []
    for i in range(2):
        stderr = (logs / f"{i}.stderr").open("w")
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
        stderr.close()
        procs.append(proc)
        lines.append(line_queue(proc))

    def explain() -> str:
        return "\n".join(f"process {i} stderr:\n{(logs / f'{i}.stderr').read_text()}" for i in range(2))

    try:
        for k in range(rounds):
            for i, q in enumerate(lines):  # both have imported and are waiting for the go
                try:
                    said = q.get(timeout=READY_TIMEOUT_S)
                except queue.Empty:
                    pytest.fail(f"process {i} did not get ready for round {k} in {READY_TIMEOUT_S} s")
                if said != f"ready {k}\n":
                    for p in procs:
                        p.kill()
                        p.wait(timeout=30)
                    pytest.fail(f"process {i} said {said!r} instead of 'ready {k}'\n{explain()}")
            for p in procs:  # the go for both, back to back: they open their logs at the same moment
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert codes == [0, 0], explain()


def line_queue(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``proc`` writes to stdout, as they come; ``""`` once it closes stdout."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def predict_200s_per_worker(server: Server) -> dict[str, float]:
    """Each gunicorn worker's own count of predict 200s, read from its prometheus multiprocess file."""
    counts: dict[str, float] = {}
    for path in (server.folder / "tmp").glob("kiln-serve-*/metrics/counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if (
                sample == "kiln_requests_total"
                and labels["route"] == PREDICT_ROUTE
                and labels["status"] == "200"
            ):
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def wait_for_workers(server: Server, n: int = 2) -> None:
    """Until ``n`` workers have loaded the model: /readyz speaks only for the worker that answered it."""
    server.wait_ready()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while server.stderr().count(f"'{NAME}' champion now serves version") < n:
        assert time.monotonic() < deadline, f"{n} workers did not load the model:\n{server.explain()}"
        time.sleep(0.1)


async def fresh_wave(server: Server, k: int, image: str) -> list[httpx.Response]:
    """``k`` predictions at once, each on a new connection, so that any worker may take each."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=fresh) as client:
        return await asyncio.gather(*(client.post(PREDICT, json={"image": image}) for _ in range(k)))


def test_two_workers_serve_and_metrics_add_up_across_them(servers: dict[str, Server]) -> None:
    """Requests on fresh connections spread over both workers; every /metrics answer has the sum of both."""
    server = servers["workers"]
    wait_for_workers(server)
    image, sent, per_worker = b64(shape_png(1)), 0, {}

    async def wave(k: int) -> list[int]:
        return [r.status_code for r in await fresh_wave(server, k, image)]

    for _ in range(8):  # until both workers have answered some (almost always the first wave)
        assert asyncio.run(wave(16)) == [200] * 16
        sent += 16
        per_worker = predict_200s_per_worker(server)
        if sum(v > 0 for v in per_worker.values()) >= 2:
            break
    assert sum(v > 0 for v in per_worker.values()) == 2, f"{sent} requests, 200s per worker: {per_worker}"
    assert sum(per_worker.values()) == sent, per_worker
    for _ in range(4):  # each scrape is answered by either worker, and must count both
        got = total(scrape(server.url), "kiln_requests_total", model=NAME, route=PREDICT_ROUTE, status="200")
        assert got == sent, f"/metrics counts {got} of {sent} predict 200s; per worker: {per_worker}"


def test_a_reload_reaches_every_worker_before_it_answers(
    servers: dict[str, Server], tiny_bundle: Path, variant_bundle: Any
) -> None:
    server = servers["reload"]
    wait_for_workers(server)
    image, admin = b64(shape_png(2)), {"authorization": f"Bearer {ADMIN_TOKEN}"}
    old = load_predictor(tiny_bundle).version
    assert {r.json()["version"] for r in asyncio.run(fresh_wave(server, 8, image))} == {old}
    # A new version in the served folder, then one reload, answered by one of the two workers.
    new = variant_bundle(tiny_bundle, server.folder / "v2", seed=7)
    for name in ("model.safetensors", "bundle.json"):
        shutil.copy(new / name, server.folder / "bundle" / name)
    version = load_predictor(new).version
    r = httpx.post(f"{server.url}/admin/reload", headers=admin, timeout=60)
    assert (r.status_code, r.json()) == (
        200,
        {"results": {NAME: {"champion": f"loaded {version}"}}, "workers": {"total": 2, "serving": 2}},
    )
    answers = asyncio.run(fresh_wave(server, 40, image))
    assert [a.status_code for a in answers] == [200] * 40
    assert [a.json()["version"] for a in answers] == [version] * 40
    # The model-info gauge has one current version, though each worker kept the old one's sample.
    info = {
        dict(labels)["version"]: value
        for (sample, labels), value in scrape(server.url).items()
        if sample == "kiln_model_info"
    }
    assert info == {old: 0.0, version: 1.0}
    # Each multi-worker server has its own gunicorn control socket, in its own folder.
    sockets = [
        list((s.folder / "tmp").glob("kiln-serve-*/gunicorn.ctl")) for s in (server, servers["workers"])
    ]
    assert [len(found) for found in sockets] == [1, 1], sockets
    assert all(found[0].is_socket() for found in sockets)


# --- connections that never finish ----------------------------------------------------------------------
def held_open(server: Server, sent: bytes) -> bytes:
    """Open a connection, send ``sent``, and return what the server sends before it closes the connection.

    The server must close it by itself: waiting on the socket fails the test after 60 s.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(sent)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize("name", ["steady", "reload"])  # one uvicorn process; gunicorn with two workers
def test_a_connection_without_a_whole_request_head_is_closed(servers: dict[str, Server], name: str) -> None:
    server = servers[name]
    wait_for_workers(server, 2 if name == "reload" else 1)
    assert held_open(server, b"") == b""  # connected, never sent a byte
    assert held_open(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Ty".encode()) == b""


def test_a_body_that_stops_arriving_gets_408(servers: dict[str, Server]) -> None:
    server = servers["steady"]
    server.wait_ready()
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    answer = held_open(server, head.encode() + b'{"image": "')
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body) == {
        "detail": f"The request body did not arrive whole within {READ_TIMEOUT_S:g} s (Content-Length: 100). "
        "Send the whole body without pauses, or raise body_timeout_s for slow links.",
        "type": "body_timeout",
        "request_id": None,
    }
