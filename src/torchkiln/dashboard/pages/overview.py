"""Overview: one model's traffic over a time window: requests, latency percentiles, errors, the predicted
classes against the training reference, and the live accuracy of the feedback labels.

Every figure comes from a bounded read, so the page costs the same with a thousand rows or millions:

- **answered rows**: the newest ``MAX_ROWS`` answered (not shadow) rows of the model predicted in the
  window, newest first by primary key. The window's first row id is found on the time index and bounds
  the walk down the model index (``model = ? AND id >= first``); only the time, latency, items, version
  and the first answer's label are read (the whole answer only for requests of several inputs).
- **feedback**: the newest ``MAX_ROWS`` labels of the model predicted in the window, among the last
  ``FEEDBACK_SCAN`` labels of the log.
- **errors**: the running server's ``kiln_requests_total`` by status (``--server``), since it started.

Times are folded into buckets in numpy (:mod:`torchkiln.dashboard.charts`). When the window holds more
than ``MAX_ROWS`` rows the charts start at the oldest row read, and the page says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.parser import text_string_to_metric_families
from starlette.concurrency import run_in_threadpool

from torchkiln.core.errors import KilnError, ServeError
from torchkiln.dashboard.app import DashboardDep, Nav, PageError
from torchkiln.dashboard.charts import PALETTE, Buckets, Chart, Series, ratio, seconds, values
from torchkiln.dashboard.drift_history import HistoryDep, ReferenceInfo
from torchkiln.dashboard.log import LogReader
from torchkiln.dashboard.server import Server
from torchkiln.serve.performance import Estimate, wilson
from torchkiln.serve.predlog_db import feedback, predictions, reason, shown

router = APIRouter()
NAV = Nav("Overview", "/overview", 20)

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"
MAX_ROWS = 20_000
# Rows turned into arrays at a time, so that their objects die young. Holding all 20,000 rows as objects
# pushed them into the GC's oldest generation, whose collection (~150 ms with torch loaded) then ran on
# every other render; in chunks of 250 it runs about once in a hundred.
CHUNK = 250
FEEDBACK_SCAN = 200_000
MAX_CLASSES = 8  # the most frequent classes get a line each; the rest are "other"
QUANTILES = (50, 95, 99)


class Codes:
    """Strings (versions, class labels) as small integers: code ``i`` is ``names[i]``."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def code(self, name: str) -> int:
        return self.index.setdefault(name, len(self.index))

    @property
    def names(self) -> list[str]:
        return list(self.index)


@dataclass(frozen=True)
class Answered:
    """The bounded sample of answered rows, newest first, and the top-1 label of each of their inputs."""

    times: np.ndarray  # (N,) Unix seconds of each request
    latency_ms: np.ndarray  # (N,)
    items: np.ndarray  # (N,) inputs per request
    version: np.ndarray  # (N,) codes of version_names
    version_names: list[str]
    label_times: np.ndarray  # (M,) the request time of each input with a label
    label: np.ndarray  # (M,) codes of label_names
    label_names: list[str]
    truncated: bool  # the window holds more than MAX_ROWS rows: these are the newest

    @property
    def newest_version(self) -> str | None:
        return self.version_names[self.version[0]] if len(self.version) else None


@dataclass(frozen=True)
class Labelled:
    times: np.ndarray  # (K,) prediction times of the labelled inputs
    right: np.ndarray  # (K,) bool: the answer was the label


def read_answered(log: LogReader, model: str, since: datetime) -> Answered:
    """The newest MAX_ROWS answered rows of ``model`` predicted since ``since`` (see the module docstring)."""
    p = predictions.c
    first = sa.select(p.id).where(p.time >= since).order_by(p.time).limit(1).scalar_subquery()
    several = sa.case((p["items"] > 1, p.outputs), else_=sa.null())  # the whole answer only when needed
    query = (
        sa.select(
            sa.type_coerce(p.time, sa.String),  # SQLite's text, parsed by numpy in one call
            p.latency_ms,
            p["items"],
            p.version,
            p.outputs[(0, "label")].as_string(),
            several,
        )
        .where(p.model == model, p.shadow == sa.false(), p.time >= since, p.id >= first)
        .order_by(p.id.desc())
        .limit(MAX_ROWS)
    )
    versions, labels = Codes(), Codes()

    def build(conn: sa.Connection) -> list[tuple[np.ndarray, ...]]:
        result = conn.execution_options(yield_per=CHUNK).execute(query)
        return [_answered_chunk(rows, versions, labels) for rows in result.partitions()]

    chunks = _run(log, build)
    times, latency, items, version, label_times, label = (
        np.concatenate([c[k] for c in chunks]) if chunks else np.zeros(0) for k in range(6)
    )
    return Answered(
        times=times,
        latency_ms=latency,
        items=items.astype(np.int64),
        version=version.astype(np.int64),
        version_names=versions.names,
        label_times=label_times,
        label=label.astype(np.int64),
        label_names=labels.names,
        truncated=len(times) == MAX_ROWS,
    )


def _answered_chunk(rows: Sequence[Any], versions: Codes, labels: Codes) -> tuple[np.ndarray, ...]:
    """One chunk of rows as arrays: (times, latency, items, version codes, label times, label codes)."""
    n = len(rows)
    times = seconds([r[0] for r in rows])
    label_times, label = [], []
    for t, r in zip(times, rows, strict=True):
        if r[5] is None:  # one input: its label came from SQL
            if r[4] is not None:
                label_times.append(t)
                label.append(labels.code(r[4]))
            continue
        for o in r[5] if isinstance(r[5], list) else []:
            if isinstance(o, dict) and o.get("label") is not None:
                label_times.append(t)
                label.append(labels.code(str(o["label"])))
    return (
        times,
        np.fromiter((r[1] for r in rows), np.float64, n),
        np.fromiter((r[2] for r in rows), np.int64, n),
        np.fromiter((versions.code(r[3]) for r in rows), np.int64, n),
        np.asarray(label_times, np.float64),
        np.asarray(label, np.int64),
    )


def read_labelled(log: LogReader, model: str, since: datetime) -> Labelled | None:
    """The feedback labels of ``model``'s predictions since ``since``; None for a log without feedback."""
    f = feedback.c
    newest = sa.select(sa.func.max(f.id)).scalar_subquery()
    query = (
        sa.select(sa.type_coerce(f.predicted_at, sa.String), f.predicted == f.label)
        .where(f.model == model, f.predicted_at >= since, f.id > newest - FEEDBACK_SCAN)
        .order_by(f.id.desc())
        .limit(MAX_ROWS)
    )

    def build(conn: sa.Connection) -> list[tuple[np.ndarray, np.ndarray]] | None:
        if not sa.inspect(conn).has_table("feedback"):
            return None
        result = conn.execution_options(yield_per=CHUNK).execute(query)
        return [
            (seconds([r[0] for r in rows]), np.fromiter((bool(r[1]) for r in rows), bool, len(rows)))
            for rows in result.partitions()
        ]

    chunks = _run(log, build)
    if chunks is None:
        return None
    if not chunks:
        return Labelled(np.zeros(0), np.zeros(0, bool))
    return Labelled(np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))


def _run(log: LogReader, build: Any) -> Any:
    try:
        with log.engine.connect() as conn:
            return build(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise ServeError(f"Cannot read the prediction log {shown(log.parsed)} ({reason(exc)}).") from exc


@dataclass(frozen=True)
class Errors:
    """The server's answers to the model by HTTP status, since it started; or why they are unknown."""

    statuses: dict[str, int]
    problem: str = ""

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def share(self, first_digit: str) -> float | None:
        n = sum(v for k, v in self.statuses.items() if k.startswith(first_digit))
        return n / self.total if self.total else None


def read_errors(server: Server, model: str) -> Errors:
    """``kiln_requests_total{model}`` of the server's /metrics, summed by status."""
    if not server.configured:
        return Errors({}, "The error rate needs the running server: start the dashboard with --server URL.")
    try:
        text = server.metrics()
    except KilnError as exc:
        return Errors({}, str(exc))
    statuses: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kiln_requests_total" and s.labels.get("model") == model:
                statuses[s.labels.get("status", "?")] += int(s.value)
    return Errors(dict(sorted(statuses.items())))


def _parse_window(window: str) -> str:
    if window not in WINDOWS:
        choices = ", ".join(WINDOWS)
        raise PageError(422, "Invalid window", f"The window must be one of {choices}; got '{window[:20]}'.")
    return window


def pick_model(log: LogReader, model: str) -> tuple[str, list[str]]:
    """``model`` (default: the first of the log's recent models) and the recent models, for a page's form.

    Raises:
        PageError: the log is empty, or its recent rows have no such model (404).
    """
    models = log.models()
    if not models:
        raise PageError(404, "No predictions", "The prediction log holds no predictions yet.")
    model = model.strip() or models[0]
    if model not in models:
        listed = ", ".join(models)
        message = f"The log's recent predictions have no model '{model[:60]}'. Expected one of: {listed}."
        raise PageError(404, "Unknown model", message)
    return model, models


@router.get("/overview", include_in_schema=False)
async def overview(
    request: Request, dash: DashboardDep, history: HistoryDep, model: str = "", window: str = DEFAULT_WINDOW
) -> Response:
    window = _parse_window(window)
    model, models = await run_in_threadpool(pick_model, dash.log, model)
    now = datetime.now(UTC)
    since = now - WINDOWS[window]
    answered = await run_in_threadpool(read_answered, dash.log, model, since)
    labelled = await run_in_threadpool(read_labelled, dash.log, model, since)
    errors = await run_in_threadpool(read_errors, Server(dash.settings), model)
    reference: ReferenceInfo | str | None = None
    version = answered.newest_version
    if version is not None:
        reference = await run_in_threadpool(history.references.get, model, version)
    start = since.timestamp()
    if answered.truncated:
        start = float(answered.times.min())
    buckets = Buckets.cover(start, now.timestamp())
    return dash.render(
        request,
        "overview.html.j2",
        model=model,
        models=models,
        window=window,
        windows=list(WINDOWS),
        answered=answered,
        buckets=buckets,
        cards=_cards(answered, labelled, errors),
        errors=errors,
        charts=_charts(buckets, answered, labelled, reference),
        reference=reference,
        version=version,
        labelled=labelled,
        max_rows=MAX_ROWS,
    )


@dataclass(frozen=True)
class Cards:
    """The figures at the top of the page, over the whole window."""

    requests: int
    inputs: int
    latency: dict[int, float | None]  # percentile -> ms
    server_errors: float | None  # the share of 5xx answers since the server started
    refused: float | None  # of 4xx
    accuracy: Estimate | None


def _cards(answered: Answered, labelled: Labelled | None, errors: Errors) -> Cards:
    lat = answered.latency_ms
    pct = [float(v) for v in np.percentile(lat, QUANTILES)] if len(lat) else [None] * len(QUANTILES)
    accuracy = None
    if labelled is not None and len(labelled.right):
        accuracy = wilson(int(labelled.right.sum()), len(labelled.right))
    return Cards(
        requests=len(answered.times),
        inputs=int(answered.items.sum()),
        latency=dict(zip(QUANTILES, pct, strict=True)),
        server_errors=errors.share("5"),
        refused=errors.share("4"),
        accuracy=accuracy,
    )


def _charts(
    b: Buckets, answered: Answered, labelled: Labelled | None, reference: ReferenceInfo | str | None
) -> dict[str, Chart]:
    per = f"per {b.label}"
    t = answered.times
    out = {
        "requests": Chart.steps(
            f"Requests {per}",
            "count",
            b.spans,
            [
                Series("requests", values(b.counts(t))),
                Series("inputs", values(b.counts(t, answered.items.astype(np.float64)))),
            ],
        ),
        "latency": Chart.steps(
            f"Latency percentiles {per}",
            "ms",
            b.spans,
            [
                Series(f"p{q}", values(row, 2))
                for q, row in zip(QUANTILES, b.percentiles(t, answered.latency_ms, QUANTILES), strict=True)
            ],
        ),
    }
    if len(answered.label):
        out["classes"] = _class_mix(b, answered, reference)
    if labelled is not None and len(labelled.right):
        right = b.counts(labelled.times, labelled.right.astype(np.float64))
        total = b.counts(labelled.times)
        out["accuracy"] = Chart.steps(
            f"Live accuracy {per} (by prediction time)",
            "share right",
            b.spans,
            [Series("accuracy", values(ratio(right, total)))],
        )
    return out


def _class_mix(b: Buckets, answered: Answered, reference: ReferenceInfo | str | None) -> Chart:
    """Each class's share of the inputs per bucket; the reference's shares as dashed lines of its colour."""
    names = answered.label_names
    ranked = np.argsort(-np.bincount(answered.label, minlength=len(names)), kind="stable")
    shown = [names[i] for i in ranked[:MAX_CLASSES]]
    lines = shown + (["other"] if len(names) > MAX_CLASSES else [])
    place = np.full(len(names), len(shown), np.int64)  # a class's line; the rest share "other"
    place[ranked[:MAX_CLASSES]] = np.arange(len(shown))
    line = place[answered.label]
    total = b.counts(answered.label_times)
    series = []
    for i, name in enumerate(lines):
        share = ratio(b.counts(answered.label_times[line == i]), total)
        series.append(Series(name, values(share), PALETTE[i % len(PALETTE)]))
    shares = reference.class_shares() if isinstance(reference, ReferenceInfo) else {}
    if shares:
        shares["other"] = 1.0 - sum(shares.get(n, 0.0) for n in shown)
    for i, name in enumerate(lines):
        if name in shares:
            color = PALETTE[i % len(PALETTE)]
            series.append(Series(f"{name} (reference)", [round(shares[name], 4)] * b.count, color, dash=True))
    title = f"Predicted classes per {b.label} (dashed: the training reference)"
    return Chart.steps(title, "share", b.spans, series)
