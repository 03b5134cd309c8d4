"""Live drift signals in the prediction log: per input, the embedding and output signals the bundle's
reference profile records, computed in the same model call as the answer (serve/live_signals.py).

The app runs in process inside its real lifespan, so the prediction log's writer process is the real one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from PIL import Image

from torchkiln import load_predictor
from torchkiln.artifacts.predictor import Predictor
from torchkiln.serve.app import create_app
from torchkiln.serve.live_signals import rounded
from torchkiln.serve.predlog import PredictionLog, read_predictions
from torchkiln.serve.predlog_db import PredictionRecord, present_columns
from torchkiln.serve.settings import load_settings

from ..conftest import running

URL = "/v1/models/shapes/predict"


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
    img[4 : 12 - seed % 3, 4 + seed % 4 : 12] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@asynccontextmanager
async def serving(tmp_path: Path, bundle: Path, **model: Any) -> AsyncIterator[httpx.AsyncClient]:
    s = load_settings(models=[{"uri": str(bundle), "name": "shapes"} | model], log_url=db_url(tmp_path))
    app = create_app(s)
    async with running(app) as client:
        yield client


def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/p.db"


async def predict(client: httpx.AsyncClient, images: list[bytes]) -> dict[str, Any]:
    body = {"images": [base64.b64encode(i).decode() for i in images]}
    r = await client.post(URL, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def serve_and_log(tmp_path: Path, bundle: Path, requests: list[list[bytes]], **model: Any) -> list[Any]:
    """Serve ``bundle``, send ``requests`` at once (so they share batches), stop; (answers, log rows)."""

    async def go() -> list[dict[str, Any]]:
        async with serving(tmp_path, bundle, **model) as client:
            return list(await asyncio.gather(*(predict(client, r) for r in requests)))

    answers = asyncio.run(go())
    return [answers, read_predictions(db_url(tmp_path))]


def assert_signals_match(
    predictor: Predictor, images: list[bytes], answer: dict[str, Any], entries: Any
) -> None:
    """Each entry: the embedding Predictor.embed gives the image alone, the answer's class and score."""
    k = predictor.reference.arrays["embedding"].shape[1]
    assert len(entries) == len(images) == len(answer["predictions"])
    for image, prediction, entry in zip(images, answer["predictions"], entries, strict=True):
        assert set(entry) == {"embedding", "predicted", "confidence"}
        expected = predictor.embed(predictor.preprocess([image]))[0].numpy()
        assert len(entry["embedding"]) == k
        np.testing.assert_allclose(entry["embedding"], expected, rtol=1e-4, atol=1e-4)
        assert entry["embedding"] == [rounded(float(v)) for v in entry["embedding"]]  # 5 digits at most
        assert isinstance(entry["predicted"], int)
        assert predictor.labels[entry["predicted"]] == prediction["label"]
        assert entry["confidence"] == pytest.approx(prediction["score"], rel=1e-4)


def test_rounded_keeps_five_significant_digits_and_nulls_what_json_cannot_hold() -> None:
    assert rounded(0.123456789) == 0.12346
    assert rounded(-12345.678) == -12346.0
    assert rounded(1.234567e-7) == 1.2346e-7
    assert rounded(0.0) == 0.0
    assert rounded(float("nan")) is None and rounded(float("inf")) is None


def test_a_bundle_with_a_reference_logs_each_inputs_embedding_class_and_confidence(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    requests = [[png(0), png(1)], [png(2)], [png(3), png(4), png(5)]]
    answers, rows = serve_and_log(tmp_path, tiny_bundle, requests)
    predictor = load_predictor(tiny_bundle, device="cpu")
    by_id = {r.request_id: r for r in rows}
    assert len(rows) == 3
    for images, answer in zip(requests, answers, strict=True):
        row = by_id[answer["request_id"]]
        assert_signals_match(predictor, images, answer, row.signals)
        assert all("signals" not in s for s in row.input_summary)  # a column of its own


def test_a_shadow_arm_logs_its_own_signals(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path]
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=3)
    requests = [[png(i)] for i in range(6)]
    answers, rows = serve_and_log(tmp_path, tiny_bundle, requests, challenger=str(challenger), shadow=True)
    champion, shadow = load_predictor(tiny_bundle, device="cpu"), load_predictor(challenger, device="cpu")
    for images, answer in zip(requests, answers, strict=True):
        mine = [r for r in rows if r.request_id == answer["request_id"]]
        served, mirrored = (next(r for r in mine if r.shadow is s) for s in (False, True))
        assert_signals_match(champion, images, answer, served.signals)
        shadow_answer = {"predictions": mirrored.outputs}
        assert_signals_match(shadow, images, shadow_answer, mirrored.signals)
        assert mirrored.signals != served.signals  # another model's features, not a copy


def test_a_bundle_without_a_reference_logs_no_signals(tmp_path: Path, tiny_bundle: Path) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    profile = json.loads((bundle / "profile.json").read_text())
    del profile["reference"]
    (bundle / "profile.json").write_text(json.dumps(profile))
    (bundle / "reference.safetensors").unlink()
    answers, rows = serve_and_log(tmp_path, bundle, [[png(0), png(1)]])
    assert len(rows) == 1 and rows[0].signals is None
    assert rows[0].outputs == answers[0]["predictions"]


def test_a_failure_computing_signals_costs_no_answer(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("signals broke")

    async def go() -> list[dict[str, Any]]:
        async with serving(tmp_path, tiny_bundle) as client:
            good = await predict(client, [png(0)])
            monkeypatch.setattr(Predictor, "output_signals", broken)  # after the load's warm-up
            no_signals = await predict(client, [png(1)])
            monkeypatch.undo()
            monkeypatch.setattr(Predictor, "forward_embed", broken)
            no_embedding = await predict(client, [png(2)])
            return [good, no_signals, no_embedding]

    answers = asyncio.run(go())
    rows = {r.request_id: r for r in read_predictions(db_url(tmp_path))}
    signals = [rows[a["request_id"]].signals for a in answers]
    assert signals[0] is not None and signals[1] is None and signals[2] is None
    expected = load_predictor(tiny_bundle, device="cpu").predict([png(2)])[0]
    assert answers[2]["predictions"][0]["label"] == expected["label"]  # the plain forward pass answered
    assert "computing live drift signals failed" in caplog.text
    assert "computing embeddings failed" in caplog.text


def test_an_onnx_bundle_logs_class_and_confidence_without_an_embedding(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from torchkiln import api

    run_dir = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    variant = api.export(run_dir, bench_seconds=0.01).variant
    assert variant is not None
    images = [png(0), png(1)]
    answers, rows = serve_and_log(tmp_path, variant, [images])
    assert len(rows) == 1 and len(rows[0].signals) == 2
    for prediction, entry in zip(answers[0]["predictions"], rows[0].signals, strict=True):
        assert set(entry) == {"predicted", "confidence"}  # the exported graph gives outputs only
        assert load_predictor(variant).labels[entry["predicted"]] == prediction["label"]
        assert entry["confidence"] == pytest.approx(prediction["score"], rel=1e-4)


# An old log: the predictions table as the first release created it, without the signals column.
OLD_TABLE = """CREATE TABLE predictions (
    id INTEGER NOT NULL {pk}, request_id VARCHAR NOT NULL, time TIMESTAMP WITH TIME ZONE NOT NULL,
    model VARCHAR NOT NULL, version VARCHAR NOT NULL, arm VARCHAR NOT NULL, shadow BOOLEAN NOT NULL,
    latency_ms FLOAT NOT NULL, route VARCHAR NOT NULL, items INTEGER NOT NULL, outputs JSON NOT NULL,
    input_summary JSON NOT NULL, payload {blob}, payload_type VARCHAR{tail})"""
OLD_ROW = """INSERT INTO predictions (request_id, time, model, version, arm, shadow, latency_ms, route, items,
    outputs, input_summary) VALUES ('old', '2025-03-01 12:00:00+00:00', 'shapes', '1', 'champion', {false},
    1.0, '/v1/models/shapes/predict', 1, '[{{"label": "dot", "score": 0.75}}]', '[{{"mean": 0.5}}]')"""


@pytest.fixture(params=["sqlite", "postgresql"])
def old_log(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a prediction log written before the signals column, holding one row."""
    if request.param == "sqlite":
        with sqlite3.connect(tmp_path / "old.db") as conn:
            conn.execute(OLD_TABLE.format(pk="PRIMARY KEY", blob="BLOB", tail=""))
            conn.execute(OLD_ROW.format(false=0))
        return f"sqlite:///{tmp_path}/old.db"
    server = request.getfixturevalue("postgres_url")  # a database of its own: other tests' tables differ
    name = f"kiln_old_{uuid.uuid4().hex[:8]}"
    info = sa.make_url(server)
    with psycopg.connect(host=info.host, port=info.port, user=info.username, dbname="postgres") as conn:
        conn.autocommit = True
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(host=info.host, port=info.port, user=info.username, dbname=name) as conn:
        conn.execute(
            OLD_TABLE.format(pk="", blob="BYTEA", tail=", PRIMARY KEY (id)").replace(
                "INTEGER NOT NULL", "SERIAL", 1
            )
        )
        conn.execute(OLD_ROW.format(false="false"))
    return info.set(database=name).render_as_string(hide_password=False)


def test_an_old_log_gains_the_new_columns_and_keeps_its_rows(old_log: str) -> None:
    engine = sa.create_engine(old_log)
    assert "signals" not in present_columns(engine)
    [old] = read_predictions(old_log)  # read before any migration: the missing column reads as null
    assert old.request_id == "old" and old.signals is None

    entries = [{"embedding": [0.12346, -1.5], "predicted": 2, "confidence": 0.875}]
    new = PredictionRecord(
        request_id="new", time=datetime.now(UTC), model="shapes", version="1", arm="champion", shadow=False,
        latency_ms=2.0, route=URL, items=1, outputs=[{"label": "vbar"}], input_summary=[{"mean": 0.4}],
        signals=entries,
    )  # fmt: skip
    for _ in range(2):  # the second start finds the column there and changes nothing
        plog = PredictionLog(old_log)
        plog.start()
        plog.close()
    plog = PredictionLog(old_log)
    plog.start()
    plog.log(new)
    assert plog.flush()
    plog.close()
    assert {"signals", "top_label", "top_score"} <= present_columns(engine)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("predictions")}
    assert {"ix_predictions_top_label", "ix_predictions_top_score"} <= indexes
    with engine.connect() as conn:  # the old row's top-1 filled in from its outputs when the columns came
        tops = dict(conn.execute(sa.text("SELECT request_id, top_label FROM predictions")).all())
        score = conn.execute(sa.text("SELECT top_score FROM predictions WHERE request_id = 'old'")).scalar()
    assert tops == {"old": "dot", "new": "vbar"} and score == 0.75
    engine.dispose()
    rows = {r.request_id: r for r in read_predictions(old_log)}
    assert rows["old"].signals is None and rows["old"].outputs == [{"label": "dot", "score": 0.75}]
    assert rows["new"].signals == entries
