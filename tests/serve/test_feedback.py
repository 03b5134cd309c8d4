"""Feedback labels: joined to the logged prediction, scored per version with Wilson intervals, and every
bad input refused with its own status and exact message, storing nothing.

The app runs in process inside its real lifespan (as in test_app.py), so the prediction log's writer
process and its batching are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from torchkiln.core.errors import ServeError
from torchkiln.serve import predlog_db
from torchkiln.serve.app import create_app
from torchkiln.serve.feedback import Answered, FeedbackStore, Label
from torchkiln.serve.performance import live_performance, parse_window, wilson
from torchkiln.serve.predlog import read_predictions
from torchkiln.serve.predlog_db import PredictionRecord
from torchkiln.serve.settings import load_settings

from ..conftest import running

TOKEN = "a-feedback-token-0123456789"
URL = "/v1/models/shapes/predict"
FEEDBACK = "/v1/feedback"
PERFORMANCE = "/v1/models/shapes/performance"
CLASSES = ["dot", "hbar", "vbar"]  # the tiny bundle's (tests/conftest.py)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def png(seed: int = 0, size: int = 16) -> str:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@asynccontextmanager
async def serving(
    tmp_path: Path, bundle: Path, *, hold_log: bool = False, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app with its model loaded; yields (client, app). ``hold_log``: the prediction log keeps its
    records in memory until the app stops (no flush interval passes during a test)."""
    settings = {"log_url": f"sqlite:///{tmp_path}/p.db"} | settings
    app = create_app(load_settings(models=[{"uri": str(bundle), "name": "shapes"}], **settings))
    if hold_log:  # before the feeder thread starts: it sleeps an hour and is never woken by a full batch
        plog = app.state.kiln.predlog
        plog._flush_interval, plog._batch_size = 3600.0, 1_000_000
    async with running(app) as client:
        yield client, app


async def predict(client: httpx.AsyncClient, n: int = 1, rid: str | None = None) -> tuple[str, list[str]]:
    """Predict ``n`` images; (request id, predicted labels)."""
    headers = {"x-request-id": rid} if rid else {}
    r = await client.post(URL, json={"images": [png(i) for i in range(n)]}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["request_id"], [p["label"] for p in r.json()["predictions"]]


def other(label: str) -> str:
    return next(c for c in CLASSES if c != label)


def stored(tmp_path: Path) -> list[tuple[str, int, str, str | None]]:
    with sqlite3.connect(tmp_path / "p.db") as conn:
        query = "SELECT request_id, item, label, predicted FROM feedback ORDER BY id"
        return [tuple(row) for row in conn.execute(query)]


def samples(text: str, family: str) -> dict[tuple[str, ...], float]:
    found = {f.name: f for f in text_string_to_metric_families(text)}
    names = ("model", "version", "outcome" if family == "kiln_feedback" else "correct")
    return {
        tuple(s.labels[n] for n in names): s.value
        for s in found[family].samples
        if s.name == f"{family}_total"
    }


def test_labels_join_their_predictions_single_and_batch(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> tuple[str, list[str], dict[str, Any]]:
        async with serving(tmp_path, tiny_bundle) as (client, app):
            one, [p] = await predict(client)
            r = await client.post(FEEDBACK, json={"request_id": one, "label": p})
            assert r.status_code == 201, r.text
            version = app.state.kiln.manager.deployments["shapes"].models["champion"].version
            assert r.json() == {
                "request_id": one,
                "model": "shapes",
                "version": version,
                "arm": "champion",
                "items": [{"index": 0, "label": p, "predicted": p, "correct": True}],
            }
            _, batch = await predict(client, 3, rid="batch-1")
            r = await client.post(
                FEEDBACK, json={"request_id": "batch-1", "labels": [other(batch[0]), None, batch[2]]}
            )
            assert r.status_code == 201, r.text
            assert [(x["index"], x["correct"]) for x in r.json()["items"]] == [(0, False), (2, True)]
            r = await client.post(FEEDBACK, json={"request_id": "batch-1", "index": 1, "label": batch[1]})
            assert r.status_code == 201, r.text
            perf = await client.get(PERFORMANCE)
            assert perf.status_code == 200, perf.text
            return version, batch, perf.json() | {"metrics": (await client.get("/metrics")).text}

    version, batch, report = asyncio.run(go())
    assert stored(tmp_path)[1:] == [
        ("batch-1", 0, other(batch[0]), batch[0]),
        ("batch-1", 2, batch[2], batch[2]),
        ("batch-1", 1, batch[1], batch[1]),
    ]
    metrics = report.pop("metrics")
    assert samples(metrics, "kiln_feedback") == {("shapes", version, "accepted"): 3.0}
    assert samples(metrics, "kiln_feedback_labels") == {
        ("shapes", version, "true"): 3.0,
        ("shapes", version, "false"): 1.0,
    }
    [scored] = report["versions"]
    assert (report["window"], report["since"], report["labelled"]) == ("1000", None, 4)
    assert (scored["version"], scored["shadow"], scored["labelled"]) == (version, False, 4)
    accuracy = scored["accuracy"]
    assert (accuracy["successes"], accuracy["total"], accuracy["value"]) == (3, 4, 0.75)
    assert (round(accuracy["low"], 4), round(accuracy["high"], 4)) == (0.3006, 0.9544)  # Wilson, 95 %


def test_each_bad_input_gets_its_own_4xx_and_stores_nothing(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle) as (client, _):
            _, [p] = await predict(client, rid="one")
            await predict(client, 2, rid="two")
            await predict(client, rid="twice")
            await predict(client, rid="twice")
            assert (await client.post(FEEDBACK, json={"request_id": "one", "label": p})).status_code == 201
            ok = await client.post(FEEDBACK, json={"request_id": "two", "index": 0, "label": "dot"})
            assert ok.status_code == 201
            with sqlite3.connect(tmp_path / "p.db") as conn:
                [(received,)] = conn.execute("SELECT time FROM feedback WHERE request_id = 'one'")
            at = f"{datetime.fromisoformat(received):%Y-%m-%d %H:%M:%S}"
            for body, status, kind, detail in bad_inputs(p, at):
                r = await client.post(FEEDBACK, json=body)
                assert (r.status_code, r.json()["type"]) == (status, kind), (body, r.text)
                if detail.endswith("..."):
                    assert r.json()["detail"].startswith(detail[:-3]), r.text
                else:
                    assert r.json()["detail"] == detail
            r = await client.post(FEEDBACK, content=b"\xff{", headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["type"]) == (422, "invalid_json")
            r = await client.post(FEEDBACK, content=b"request_id=one", headers={"content-type": "text/plain"})
            assert (r.status_code, r.json()["detail"]) == (
                415,
                "Content-Type 'text/plain' is not accepted. Send application/json, e.g. "
                '{"request_id": "d1effbebb1dd4070867ef4270efef780", "label": "Sneaker"}.',
            )
            text = (await client.get("/metrics")).text
            outcomes = {k[2]: v for k, v in samples(text, "kiln_feedback").items()}
            assert outcomes == {
                "accepted": 2.0,
                "unknown_request": 1.0,
                "unknown_label": 2.0,
                "duplicate": 2.0,
                "invalid_feedback": 4.0,
                "ambiguous_request": 1.0,
            }

    asyncio.run(go())
    assert [row[:3] for row in stored(tmp_path)] == [("one", 0, stored(tmp_path)[0][2]), ("two", 0, "dot")]


FIX = (
    'Expected a JSON object like {"request_id": "d1effbebb1dd4070867ef4270efef780", "label": "Sneaker"}, '
    "with 'index' for one input of several."
)


def bad_inputs(p: str, at: str) -> list[tuple[dict[str, Any], int, str, str]]:
    """(body, status, type, detail); a detail ending in ... is the start of the message."""
    return [
        (
            {"request_id": "nope", "label": "dot"},
            404,
            "unknown_request",
            "No prediction with request id 'nope' is in the prediction log. Expected the request_id (or "
            "X-Request-ID header) of a prediction this server answered; check the id, and send feedback only "
            "after the prediction's answer came back.",
        ),
        (
            {"request_id": "two", "index": 1, "label": "hbr"},
            422,
            "unknown_label",
            "label 'hbr' is not a class of model 'shapes'. Did you mean 'hbar'? Valid classes: dot, hbar, "
            "vbar. Send one of them, spelled exactly.",
        ),
        (
            {"request_id": "two", "labels": ["Dot", "vbar "]},
            422,
            "unknown_label",
            "labels[0] 'Dot' is not a class of model 'shapes'. Did you mean 'dot'? labels[1] 'vbar ' is not "
            "a class of model 'shapes'. Did you mean 'vbar'? Valid classes: dot, hbar, vbar. Send one of "
            "them, spelled exactly.",
        ),
        (
            {"request_id": "one", "label": other(p)},
            409,
            "duplicate_feedback",
            f"Request 'one' already has feedback (input 0: '{p}' at {at} UTC). Each input takes one label, "
            "the first, so nothing of this request was stored. Send labels only for inputs without one.",
        ),
        (  # input 1 has no label yet, but input 0 has: none of the two is stored
            {"request_id": "two", "labels": ["dot", "hbar"]},
            409,
            "duplicate_feedback",
            "Request 'two' already has feedback (input 0: 'dot' at ...",
        ),
        (
            {"request_id": "two", "label": "dot"},
            422,
            "invalid_feedback",
            "Request 'two' had 2 inputs, so 'label' needs an 'index' (0 to 1) saying which input it is for. "
            "Or send 'labels', one per input.",
        ),
        (
            {"request_id": "two", "index": 2, "label": "dot"},
            422,
            "invalid_feedback",
            "'index' 2 is out of range: request 'two' had 2 input(s), index 0 to 1.",
        ),
        (
            {"request_id": "two", "labels": ["dot"]},
            422,
            "invalid_feedback",
            "'labels' has 1 label(s), but request 'two' had 2 input(s). Send one label per input, in input "
            "order (null for an input without a label).",
        ),
        (
            {"request_id": "two", "labels": [None, None]},
            422,
            "invalid_feedback",
            "'labels' holds only nulls, so there is nothing to store. Send a label.",
        ),
        (
            {"request_id": "twice", "label": "dot"},
            409,
            "ambiguous_request",
            "Request id 'twice' names 2 answered predictions (shapes ...",
        ),
        (
            {"request_id": "one"},
            422,
            "invalid_input",
            "The feedback body is invalid (1 problem(s)):\n"
            "  - '(top level)': give exactly one of 'label' (one input) or 'labels' (one per input).\n" + FIX,
        ),
        (
            {"request_id": "one two", "lable": "dot"},
            422,
            "invalid_input",
            "The feedback body is invalid (2 problem(s)):\n"
            "  - 'request_id': String should match pattern '^[A-Za-z0-9._:-]{1,64}$'. Got 'one two'.\n"
            "  - unknown key 'lable'. Did you mean 'label'? Valid keys here: index, label, labels, "
            "request_id.\n" + FIX,
        ),
    ]


def test_feedback_right_after_the_prediction_is_not_lost(tmp_path: Path, tiny_bundle: Path) -> None:
    """The label comes while the prediction is still in the log's memory, not in the database."""
    url = f"sqlite:///{tmp_path}/p.db"

    async def go() -> str:
        async with serving(tmp_path, tiny_bundle, hold_log=True) as (client, _):
            rid, [p] = await predict(client)
            assert read_predictions(url) == []  # not written yet
            r = await client.post(FEEDBACK, json={"request_id": rid, "label": other(p)})
            assert r.status_code == 201, r.text
            assert r.json()["items"] == [{"index": 0, "label": other(p), "predicted": p, "correct": False}]
            again = await client.post(FEEDBACK, json={"request_id": rid, "label": p})
            assert (again.status_code, again.json()["type"]) == (409, "duplicate_feedback")
            assert read_predictions(url) == []
            return rid

    rid = asyncio.run(go())
    assert [r.request_id for r in read_predictions(url)] == [rid]  # written at shutdown
    perf = live_performance(url, "shapes")
    assert perf.labelled == 1 and perf.versions[0].accuracy.successes == 0


def test_feedback_answered_by_another_worker_is_found_once_it_writes(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    """Two workers share the log; the prediction is still in worker A's memory when B gets the label."""

    async def go() -> None:
        async with (
            serving(tmp_path, tiny_bundle, hold_log=True, workers=2) as (a, app_a),
            serving(tmp_path, tiny_bundle, workers=2) as (b, _),
        ):
            rid, [p] = await predict(a)
            posted = asyncio.create_task(b.post(FEEDBACK, json={"request_id": rid, "label": p}))
            assert await asyncio.to_thread(app_a.state.kiln.predlog.flush, 5)
            r = await posted
            assert r.status_code == 201, r.text

    asyncio.run(go())


def test_the_feedback_token(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, feedback_token=TOKEN) as (client, _):
            rid, [p] = await predict(client)
            body = {"request_id": rid, "label": p}
            r = await client.post(FEEDBACK, json=body)
            assert (r.status_code, r.headers["www-authenticate"], r.json()["detail"]) == (
                401,
                "Bearer",
                "This endpoint needs 'Authorization: Bearer <feedback token>'.",
            )
            r = await client.post(FEEDBACK, json=body, headers={"authorization": "Bearer wrong"})
            assert (r.status_code, r.json()["detail"]) == (403, "The feedback token is wrong.")
            r = await client.post(FEEDBACK, json=body, headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 201, r.text
            assert (await client.get(PERFORMANCE)).status_code == 200  # reading needs no token

    asyncio.run(go())
    with pytest.raises(ServeError, match="the feedback token must have at least 16 characters"):
        load_settings(models=[{"uri": "x"}], feedback_token="short")


def test_without_a_log_feedback_is_off(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, log_url="off") as (client, _):
            expected = (
                404,
                "Feedback is off: it is stored beside the prediction log, and this server's log_url is off. "
                "Set log_url to a database to take feedback labels.",
            )
            r = await client.post(FEEDBACK, json={"request_id": "x", "label": "dot"})
            assert (r.status_code, r.json()["detail"]) == expected
            r = await client.get(PERFORMANCE)
            assert (r.status_code, r.json()["detail"]) == expected
            r = await client.get("/v1/models/nope/performance")
            assert (r.status_code, r.json()["detail"]) == (
                404,
                "No model named 'nope' is served here. Served: shapes.",
            )
            r = await client.get(PERFORMANCE, params={"window": "1w"})
            assert r.status_code == 422 and r.json()["type"] == "invalid_input"

    asyncio.run(go())


# The window metrics, on rows written straight into the log's tables (SQLite and PostgreSQL).


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/predictions.db"


def write_log(url: str, model: str, pairs: list[tuple[str, str, str]]) -> None:
    """Per labelled input (label, champion's answer, shadow's answer): a request of two inputs every
    fifth, else one; champion version "1", shadow version "2"; predicted one minute apart from T0."""
    engine, _ = predlog_db.make_engine(url)
    predlog_db.metadata.create_all(engine)
    store = FeedbackStore(url)
    i = 0
    while i < len(pairs):
        group = pairs[i : i + (2 if i % 5 == 0 else 1)]
        rid = f"{model}-{i}"
        when = T0 + timedelta(minutes=i)
        for version, shadow, answers in (
            ("1", False, [g[1] for g in group]),
            ("2", True, [g[2] for g in group]),
        ):
            record = PredictionRecord(
                request_id=rid,
                time=when,
                model=model,
                version=version,
                arm="challenger" if shadow else "champion",
                shadow=shadow,
                latency_ms=1.0,
                route="/v1/models/m/predict",
                items=len(group),
                outputs=[{"label": a, "score": 0.9} for a in answers],
                input_summary=[{}] * len(group),
            )
            predlog_db.insert(engine, [record])
        answer = Answered(model, "1", "champion", when, [{"label": g[1]} for g in group])
        store.add(rid, answer, [Label(k, g[0], g[1]) for k, g in enumerate(group)], when)
        i += len(group)
    store.close()
    engine.dispose()


def test_window_metrics_and_their_wilson_intervals(db_url: str) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by the whole session
    # 10 labelled inputs. Champion: 8 right (a->a x5, b->b x3), a->b, b->a. Shadow: "a" for everything.
    pairs = [("a", "a", "a")] * 5 + [("b", "b", "a")] * 3 + [("a", "b", "a"), ("b", "a", "a")]
    write_log(db_url, model, pairs)

    perf = live_performance(db_url, model, window="10")
    assert (perf.labelled, [(v.version, v.shadow) for v in perf.versions]) == (
        10,
        [("1", False), ("2", True)],
    )
    champion, shadow = perf.versions
    acc = champion.accuracy
    assert (acc.successes, acc.total, round(acc.low, 4), round(acc.high, 4)) == (8, 10, 0.4902, 0.9433)
    a, b = champion.classes
    assert (a.label, a.support, a.predicted, b.label, b.support, b.predicted) == ("a", 6, 6, "b", 4, 4)
    # precision a = 5/6 (5 of 6 predicted a), recall a = 5/6; b: 3/4 both.
    assert [(round(e.value, 4), round(e.low, 4), round(e.high, 4)) for e in (a.precision, a.recall)] == [
        (0.8333, 0.4365, 0.9699)
    ] * 2
    assert (round(b.recall.low, 4), round(b.recall.high, 4)) == (0.3006, 0.9544)
    acc = shadow.accuracy
    assert (acc.successes, acc.total, round(acc.low, 4), round(acc.high, 4)) == (6, 10, 0.3127, 0.8318)
    sa_, sb = shadow.classes
    assert (sa_.precision.successes, sa_.precision.total, sa_.recall.value) == (6, 10, 1.0)
    assert sb.precision is None  # never predicted
    assert (sb.recall.successes, sb.recall.total, round(sb.recall.high, 4)) == (0, 4, 0.4899)

    # The last 3 labelled inputs: b->b, a->b, b->a (the pair of inputs predicted at minute 5 comes before).
    last = live_performance(db_url, model, window="3")
    assert (last.labelled, last.versions[0].accuracy.successes) == (3, 1)
    # Predicted in the 3 minutes before T0 + 10 min: minutes 7, 8, 9 -- the same three.
    recent = live_performance(db_url, model, window="3m", now=T0 + timedelta(minutes=10))
    assert recent.since == T0 + timedelta(minutes=7)
    assert [(v.version, v.labelled, v.accuracy.successes) for v in recent.versions] == [
        ("1", 3, 1),
        ("2", 3, 1),
    ]
    assert live_performance(db_url, "no-such-model").versions == []


def test_wilson_and_windows() -> None:
    # Worked by hand from the closed form (z = 1.96); k = 0 has low 0 and k = n has high 1.
    for k, n, low, high in [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 2, 0.0945, 0.9055),
    ]:
        e = wilson(k, n)
        assert e is not None and (round(e.low, 4), round(e.high, 4)) == (low, high)
    assert wilson(0, 0) is None
    assert parse_window("1h").span == timedelta(hours=1) and parse_window("500").last == 500
    with pytest.raises(ServeError) as info:
        parse_window("1w")
    assert str(info.value) == (
        "The window '1w' is neither a count nor a duration. Expected N (the last N labelled inputs, 1 to "
        "9999999) or N followed by s, m, h or d (predicted in the last N seconds, minutes, hours or days), "
        "e.g. 1000 or 1h."
    )


def test_an_old_log_without_the_feedback_table_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    predlog_db.predictions.create(engine)  # a log from before feedback existed
    engine.dispose()
    with pytest.raises(ServeError, match="which adds the feedback table when it starts"):
        live_performance(url, "m")
