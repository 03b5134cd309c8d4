"""The Overview page over a real log: requests, latency percentiles, the class mix against the training
reference, live accuracy, the error rate from the server's /metrics, and bad parameters."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.serve.metrics import ServeMetrics
from torchkiln.serve.performance import wilson


def charts(page: str) -> dict[str, dict[str, Any]]:
    """Each chart's spec by its id ("requests", "latency", "classes", "accuracy")."""
    found = re.findall(r'<div class="chart" id="chart-(\w+)" data-series="([^"]*)"', page)
    return {name: json.loads(html.unescape(spec)) for name, spec in found}


def series(chart: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each series by its label, its values one per bucket (a step chart gives each value twice)."""
    out = {}
    for s in chart["series"]:
        assert s["values"][::2] == s["values"][1::2]
        out[s["label"]] = s | {"values": s["values"][::2]}
    return out


def text(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">(.*?)</', page, re.S)
    assert m, f"no #{element_id}"
    return " ".join(html.unescape(m.group(1)).split())


def logged_rows(url: str, model: str) -> list[tuple[float, str]]:
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        rows = db.execute(
            "SELECT latency_ms, json_extract(outputs, '$[0].label') FROM predictions "
            "WHERE model = ? AND NOT shadow",
            (model,),
        ).fetchall()
    finally:
        db.close()
    return rows


def test_requests_latency_classes_and_accuracy_of_a_model(
    dashboard: Any, logged: dict[str, Any], tiny_bundle: Path
) -> None:
    with dashboard(runs_dir=str(tiny_bundle.parents[2])) as client:
        r = client.get("/overview?model=shapes&window=1h")
    assert r.status_code == 200, r.text
    page, figures = r.text, charts(r.text)
    rows = logged_rows(logged["url"], "shapes")
    assert len(rows) == 30
    # Requests: 30 answered requests of one image each, in the cards and in the chart's buckets.
    assert text(page, "requests") == "30"
    traffic = series(figures["requests"])
    assert sum(v or 0 for v in traffic["requests"]["values"]) == 30
    assert sum(v or 0 for v in traffic["inputs"]["values"]) == 30
    # Latency: the window's percentiles in the card; each bucket's p50 <= p95 <= p99.
    p50, p95, p99 = np.percentile([latency for latency, _ in rows], (50, 95, 99))
    assert text(page, "latency") == f"{p50:,.1f} / {p95:,.1f} / {p99:,.1f}"
    lat = series(figures["latency"])
    for a, b, c in zip(lat["p50"]["values"], lat["p95"]["values"], lat["p99"]["values"], strict=True):
        assert (a, b, c) == (None, None, None) or a <= b <= c
    # Classes: each bucket's shares, weighted by its inputs, give back the answered labels' counts.
    mix, inputs = series(figures["classes"]), traffic["inputs"]["values"]
    answered = Counter(label for _, label in rows)
    solid = {label: s for label, s in mix.items() if not s.get("dash")}
    assert set(solid) == set(answered)
    for label, s in solid.items():
        weighted = sum((share or 0) * (n or 0) for share, n in zip(s["values"], inputs, strict=True))
        assert round(weighted) == answered[label]
    # The training reference: each class's share of the bundle's reference predictions, dashed, in the
    # colour of the class's own line.
    ref = load_bundle(tiny_bundle)
    labels = list(ref.meta["labels"])
    predicted = np.bincount(ref.reference().arrays["predicted"], minlength=len(labels))
    for label in solid:
        line = mix[f"{label} (reference)"]
        expected = round(float(predicted[labels.index(label)] / predicted.sum()), 4)
        assert line["dash"] is True and line["color"] == solid[label]["color"]
        assert set(line["values"]) == {expected}
    # Live accuracy: ten labelled answers, five of them right.
    estimate = wilson(5, 10)
    assert text(page, "accuracy") == "50.0 %"
    assert (
        f"95 % interval {estimate.low * 100:.1f} % – {estimate.high * 100:.1f} %, 10 labelled inputs" in page
    )
    assert "accuracy" in figures
    # No --server: the error rate says what it needs.
    assert "The error rate needs the running server: start the dashboard with --server URL." in page


def test_a_version_whose_bundle_is_not_found_says_where_to_look(dashboard: Any, tmp_path: Path) -> None:
    with dashboard(runs_dir=str(tmp_path)) as client:
        page = client.get("/overview?model=reviews&window=24h").text
    assert text(page, "requests") == "2"
    assert "no bundle under" in text(page, "reference-problem")
    assert "start the dashboard with --runs-dir" in text(page, "reference-problem")
    assert not [s for s in charts(page)["classes"]["series"] if s.get("dash")]


@pytest.fixture
def metrics_server() -> Iterator[str]:
    """A stand-in for kiln serve's /metrics: shapes answered 200 seven times, 429 once and 500 twice."""
    metrics = ServeMetrics()
    route = "/v1/models/{name}/predict"
    for status, n in (("200", 7), ("429", 1), ("500", 2)):
        metrics.requests.labels("shapes", "1", route, status).inc(n)
    metrics.requests.labels("reviews", "1", route, "500").inc(5)
    body = metrics.render()[0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_error_rate_comes_from_the_servers_metrics(dashboard: Any, metrics_server: str) -> None:
    with dashboard(server=metrics_server) as client:
        page = client.get("/overview?model=shapes").text
    assert text(page, "error-rate") == "20.0 %"
    assert "of 10 requests since the server started; refused (4xx): 10.0 %" in page
    statuses = re.findall(r"<tr><td>(\d+)</td><td class=\"num\">(\d+)</td></tr>", page)
    assert statuses == [("200", "7"), ("429", "1"), ("500", "2")]


def test_the_first_model_is_the_default_and_bad_parameters_are_refused(client: Any) -> None:
    page = client.get("/overview").text
    assert "<h1>Overview: reviews</h1>" in page  # the first of the log's models, sorted
    r = client.get("/overview?window=2h")
    assert r.status_code == 422 and "The window must be one of 1h, 24h, 7d; got &#39;2h&#39;." in r.text
    r = client.get("/overview?model=nope")
    assert r.status_code == 404 and "Expected one of: reviews, shapes." in r.text
