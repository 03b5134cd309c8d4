"""kiln monitor watch: webhook delivery (retries, one alert per incident, no storm), gauges, and the CLI."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from torchkiln.cli.main import app
from torchkiln.monitor.alerts import AlertPolicy
from torchkiln.monitor.watch import Gauges, WatchConfig, deliver, load_states, run_check, watch

from .conftest import DARK, ServedLog


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with ``codes`` in turn (then 200), records each body."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.bodies, self.attempts = list(codes), [], 0
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                code = receiver.codes.pop(0) if receiver.codes else 200
                if code == 200:
                    receiver.bodies.append(body)
                    receiver.got.set()
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(codes: list[int] | None = None) -> Receiver:
        made.append(Receiver(codes or []))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def test_delivery_retries_a_500_then_succeeds(receiver: Any) -> None:
    r, waits = receiver([500, 503]), []
    assert deliver(r.url, {"event": "alert"}, attempts=5, backoff_s=0.5, sleep=waits.append)
    assert (r.attempts, r.bodies, waits) == (3, [{"event": "alert"}], [0.5, 1.0])


def test_delivery_gives_up_without_raising(receiver: Any) -> None:
    r, waits = receiver([500] * 10), []
    assert not deliver(r.url, {"event": "alert"}, attempts=3, backoff_s=1.0, sleep=waits.append)
    assert (r.attempts, waits) == (3, [1.0, 2.0])
    assert not deliver(
        "http://127.0.0.1:9/none", {}, attempts=2, backoff_s=0, timeout_s=1
    )  # refused: no raise
    r4 = receiver([404])
    assert not deliver(r4.url, {}, attempts=5, backoff_s=0) and r4.attempts == 1  # a 4xx is not retried


def config(served_log: ServedLog, tmp_path: Path, **kw: Any) -> WatchConfig:
    base: dict[str, Any] = {
        "target": "shapes",
        "log_url": served_log.url,
        "state_path": tmp_path / "state.json",
        "window": str(DARK),
        "bundles": [served_log.bundle],
        "policy": AlertPolicy(raise_after=2, clear_after=2, cooldown_s=3600),
        "backoff_s": 0.0,
    }
    return WatchConfig(**(base | kw))


def test_one_alert_per_incident_across_checks_and_runs(
    served_log: ServedLog, tmp_path: Path, receiver: Any
) -> None:
    r = receiver([500])
    hook_out = tmp_path / "hook.json"
    argv = [
        "python",
        "-c",
        f"import sys, pathlib; pathlib.Path({str(hook_out)!r}).write_text(sys.stdin.read())",
    ]
    cfg = config(served_log, tmp_path, webhook=r.url, on_alert=argv, out=tmp_path / "out")
    events = [[e["event"] for e in run_check(cfg, now=1000.0 + 60 * i).events] for i in range(5)]
    assert events == [[], ["alert"], [], [], []]  # the 2nd drifted check opens the incident; one alert
    assert r.attempts == 2 and len(r.bodies) == 1  # a 500, then delivered
    body = r.bodies[0]
    assert (body["event"], body["model"], body["version"], body["shadow"], body["verdict"]) == (
        "alert", "shapes", served_log.version, False, "drift")  # fmt: skip
    assert {"input/mean/ks", "input/mean/psi"} <= set(body["drifted"]) and body["items"] == DARK
    assert body["report"] == str(tmp_path / "out" / "report.json") and body["source"] == "kiln monitor watch"
    assert json.loads(hook_out.read_text()) == body  # the command got the same JSON on stdin
    state = load_states(cfg.state_path)[f"shapes/{served_log.version}"]
    assert (state.status, state.alerted, state.last_alert_at) == ("incident", True, 1060.0)


def test_no_alert_storm_within_the_cooldown(served_log: ServedLog, tmp_path: Path, receiver: Any) -> None:
    r = receiver()
    drift = config(served_log, tmp_path, webhook=r.url)
    clean = config(served_log, tmp_path, webhook=r.url, log_url=served_log.clean_url)
    times = iter(range(0, 100_000, 60))
    seen = []
    for cfg in [drift] * 2 + [clean] * 2 + [drift] * 2 + [clean] * 2 + [drift] * 2:  # flapping
        seen += [e["event"] for e in run_check(cfg, now=float(next(times))).events]
    assert seen == ["alert", "resolved", "suppressed", "resolved", "suppressed"]
    assert [b["event"] for b in r.bodies] == ["alert", "resolved", "resolved"]  # suppressed is never sent


def test_gauges_on_the_metrics_endpoint(served_log: ServedLog, tmp_path: Path) -> None:
    gauges = Gauges()
    port, stop_metrics = gauges.serve(0)  # a free port
    try:
        done, stop = threading.Event(), threading.Event()

        def on_check(result: Any) -> None:
            stop.set()
            done.set()

        cfg = config(served_log, tmp_path)
        kwargs = {"every_s": 3600, "gauges": gauges, "stop": stop, "on_check": on_check}
        threading.Thread(target=watch, args=(cfg,), kwargs=kwargs, daemon=True).start()
        assert done.wait(120)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        stop_metrics()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    scores = {s.labels["signal"]: s.value for s in families["kiln_drift_score"].samples}
    assert scores["input/mean"] > 1
    (acc,) = families["kiln_live_accuracy"].samples
    assert acc.labels == {"model": "shapes", "version": served_log.version} and 0 <= acc.value <= 1
    assert {s.labels["version"] for s in families["kiln_drift_score"].samples} == {served_log.version}


def test_cli_report_and_watch_once(served_log: ServedLog, tmp_path: Path, receiver: Any) -> None:
    runner = CliRunner()
    common = ["--log-url", served_log.url, "--window", str(DARK)]
    report = ["monitor", "report", "shapes", *common, "--bundle", str(served_log.bundle), "--out"]
    res = runner.invoke(app, [*report, str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith(f"shapes {served_log.version}: drift (")
    assert res.stdout.splitlines()[1:] == [
        str(tmp_path / "rep" / "report.json"),
        str(tmp_path / "rep" / "report.html"),
    ]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["versions"][0]["verdict"] == "drift"
    r = receiver()
    state = ["--state", str(tmp_path / "s.json")]
    args = [
        "monitor",
        "watch",
        str(served_log.bundle),
        *common,
        "--once",
        *state,
        "--webhook",
        r.url,
        "--raise-after",
        "1",
    ]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 and second.exit_code == 0, (first.output, second.output)
    assert first.stdout.splitlines()[-1].startswith(f"alert: shapes {served_log.version} (")
    assert "alert" not in second.stdout  # the state file de-duplicates across runs
    assert [b["event"] for b in r.bodies] == ["alert"]
    bad = runner.invoke(app, ["monitor", "watch", "shapes", "--log-url", served_log.url, "--every", "5x"])
    assert bad.exit_code == 2 and "The duration '5x' is not N followed by s, m, h or d." in bad.output
