"""The prediction log: nothing lost under load or outage, log() never blocks, rows round-trip exactly."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.serve import predlog, predlog_db
from torchkiln.serve.predlog import PredictionLog, PredictionRecord, read_predictions

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x00\xff"


@contextmanager
def bound_port() -> Iterator[int]:
    """A loopback port that is bound (so nothing else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def record(i: int, model: str = "fashion", **changes: Any) -> PredictionRecord:
    base = PredictionRecord(
        request_id=f"req-{i:05d}",
        time=T0 + timedelta(milliseconds=i),
        model=model,
        version="3",
        arm="challenger" if i % 5 == 0 else "champion",
        shadow=i % 7 == 0,
        latency_ms=1.5 + i,
        route=f"/v1/models/{model}/predict",
        items=2,
        outputs=[{"label": "Bag", "score": 0.5 + i / 10_000}, {"label": f"c{i}", "score": 0.25}],
        input_summary=[{"sha256": f"{i:064x}", "mean": 0.5, "shape": [28, 28]}] * 2,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/runs/serve/predictions.db"  # a folder that does not exist yet


def test_concurrent_loggers_lose_nothing(db_url: str, tmp_path: Path) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by the whole session
    plog = PredictionLog(db_url, batch_size=64, flush_interval_s=0.02, spool_path=tmp_path / "spool.jsonl")
    plog.start()
    sent = [record(i, model) for i in range(500)]

    def send(part: list[PredictionRecord]) -> None:
        for r in part:
            plog.log(r)

    threads = [threading.Thread(target=send, args=(sent[k::5],)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plog.close()

    got = read_predictions(db_url, model=model)
    assert len(got) == 500
    assert got == sorted(sent, key=lambda r: r.time)  # every field, JSON included, oldest first
    assert plog.stats == predlog.LogStats(logged=500, written=500, pending=0, failed_batches=0, spooled=0)
    assert not (tmp_path / "spool.jsonl").exists()
    if db_url.startswith("sqlite"):
        with sqlite3.connect(tmp_path / "runs/serve/predictions.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_payload_only_when_given_and_times_are_utc(db_url: str) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    paris = timezone(timedelta(hours=2))
    sent = [
        record(1, model, time=datetime(2025, 6, 1, 14, 30, 0, 123456, tzinfo=paris)),
        record(2, model, time=datetime(2025, 6, 1, 13, tzinfo=UTC), payload=PNG, payload_type="image/png"),
        record(3, model, time=datetime(2025, 6, 1, 11, 0)),  # naive: taken as UTC
    ]
    plog = PredictionLog(db_url)
    plog.start()
    for r in sent:
        plog.log(r)
    assert plog.flush(timeout_s=5)
    plog.close()

    got = read_predictions(db_url, model=model)
    assert [r.request_id for r in got] == ["req-00003", "req-00001", "req-00002"]  # 11:00, 12:30, 13:00 UTC
    assert all(r.time.tzinfo is not None and r.time.utcoffset() == timedelta(0) for r in got)
    assert got[1].time == datetime(2025, 6, 1, 12, 30, 0, 123456, tzinfo=UTC)
    assert got[2].time == datetime(2025, 6, 1, 13, 0, tzinfo=UTC)
    assert got[0].time == datetime(2025, 6, 1, 11, 0, tzinfo=UTC)
    assert [(r.payload, r.payload_type) for r in got] == [(None, None)] * 2 + [(PNG, "image/png")]
    recent = read_predictions(db_url, model=model, since=datetime(2025, 6, 1, 14, 0, tzinfo=paris))
    assert [r.request_id for r in recent] == ["req-00001", "req-00002"]
    assert [r.request_id for r in read_predictions(db_url, model=model, limit=1)] == ["req-00002"]


def test_log_does_not_block_while_the_database_is_locked(tmp_path: Path) -> None:
    db = tmp_path / "predictions.db"
    plog = PredictionLog(f"sqlite:///{db}", flush_interval_s=0.01)
    plog.start()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the writer now waits on SQLite's busy timeout
    try:
        plog.log(record(0))
        assert not plog.flush(timeout_s=0.2)  # the writer is stalled inside the database
        many = [record(i) for i in range(1, 1001)]
        start = time.perf_counter()
        for r in many:
            plog.log(r)
        elapsed = time.perf_counter() - start
        assert plog.stats.pending == 1001
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert elapsed < 0.05, f"1000 log() calls took {elapsed * 1000:.1f} ms"
    plog.close()
    assert len(read_predictions(f"sqlite:///{db}")) == 1001


@contextmanager
def own_database(postgres_url: str) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A fresh PostgreSQL database on the test server, and a switch that takes it down and up again."""
    server, name = sa.make_url(postgres_url), f"outage_{uuid.uuid4().hex[:8]}"
    admin = {"host": server.host, "port": server.port, "user": server.username, "dbname": server.database}
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")

    def available(up: bool) -> None:
        # Down: new connections are refused and the open ones are cut, as when the server goes away.
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if up else 'false'}")
            if not up:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
                )

    yield server.set(database=name).render_as_string(hide_password=False), available


def test_outage_spools_on_close_and_the_next_start_replays_once(postgres_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "predictions.jsonl"
    sent = [record(i, payload=bytes([i % 256]) * 3 if i % 2 else None) for i in range(300)]
    with own_database(postgres_url) as (url, available):
        plog = PredictionLog(url, flush_interval_s=0.01, spool_path=spool)
        plog.start()
        available(False)
        for r in sent:
            plog.log(r)
        assert not plog.flush(timeout_s=0.3)
        plog.close(timeout_s=0.5)
        plog.close()  # idempotent
        stats = plog.stats
        assert (stats.logged, stats.written, stats.pending, stats.spooled) == (300, 0, 0, 300)
        assert stats.failed_batches >= 2  # it retried before giving up
        assert len(spool.read_text().splitlines()) == 300
        with pytest.raises(ServeError, match="came after the prediction log was closed"):
            plog.log(record(999))

        # As if a previous replay crashed after inserting the first 100 rows but before removing the spool.
        available(True)
        predlog_db.insert(sa.create_engine(url), sent[:100])

        again = PredictionLog(url, spool_path=spool)
        again.start()
        assert not spool.exists()
        again.log(record(300))
        again.close()
        assert again.stats.replayed == 300
        assert read_predictions(url) == [*sent, record(300)]  # all of them, exactly once


def test_the_writer_is_a_process_of_its_own_without_torch(tmp_path: Path) -> None:
    plog = PredictionLog(f"sqlite:///{tmp_path}/predictions.db")
    plog.start()
    pid = plog.writer_pid
    assert pid is not None and pid != os.getpid()
    assert b"torchkiln.serve.predlog_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()  # the shared libraries it loaded
    plog.log(record(1))
    plog.close()
    assert plog.writer_pid is None
    assert [r.request_id for r in read_predictions(f"sqlite:///{tmp_path}/predictions.db")] == ["req-00001"]


def test_a_killed_writer_loses_nothing_and_writes_nothing_twice(tmp_path: Path) -> None:
    db, sent = tmp_path / "predictions.db", [record(i) for i in range(400)]
    url = f"sqlite:///{db}"
    plog = PredictionLog(url, batch_size=64, flush_interval_s=0.01)
    plog.start()
    for r in sent[:100]:
        plog.log(r)
    assert plog.flush(timeout_s=5)
    first = plog.writer_pid
    assert first is not None
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the writer now waits on SQLite's busy timeout, records in hand
    for r in sent[100:300]:
        plog.log(r)
    assert not plog.flush(timeout_s=0.3)
    os.kill(first, signal.SIGKILL)
    locker.execute("ROLLBACK")
    locker.close()
    predlog_db.insert(sa.create_engine(url), sent[100:150])  # as if it had inserted these, then died
    for r in sent[300:]:
        plog.log(r)
    assert plog.flush(timeout_s=10)
    assert plog.writer_pid not in (None, first)
    plog.close()
    assert read_predictions(url) == sent  # every record, exactly once, in order
    assert plog.stats == predlog.LogStats(logged=400, written=400, pending=0, failed_batches=0, spooled=0)


def test_close_writes_what_was_logged_without_waiting_for_the_interval(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/predictions.db"
    plog = PredictionLog(url, batch_size=10_000, flush_interval_s=60)  # it would not write on its own
    plog.start()
    sent = [record(i) for i in range(1000)]
    for r in sent:
        plog.log(r)
    start = time.perf_counter()
    plog.close()
    assert time.perf_counter() - start < 5
    assert plog.stats == predlog.LogStats(logged=1000, written=1000, pending=0, failed_batches=0, spooled=0)
    assert read_predictions(url) == sent


def test_a_record_the_database_refuses_does_not_block_the_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/predictions.db"
    plog = PredictionLog(url, batch_size=8)
    plog.start()
    for i in range(10):
        if i == 4:  # not JSON: refused by log() itself
            plog.log(record(i, outputs=[{"label": object()}]))
        elif i == 6:  # JSON (NaN becomes null), refused by the database: latency_ms is NOT NULL
            plog.log(record(i, latency_ms=float("nan")))
        else:
            plog.log(record(i))
    assert plog.flush(timeout_s=5)
    plog.close()
    assert (plog.stats.written, plog.stats.rejected, plog.stats.pending) == (8, 2, 0)
    assert [r.request_id for r in read_predictions(url)] == [
        f"req-{i:05d}" for i in range(10) if i not in (4, 6)
    ]


def test_a_relative_sqlite_path_gets_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plog = PredictionLog("sqlite:///runs/serve/predictions.db")
    plog.log(record(1))  # before start(): kept in memory, written once the writer runs
    plog.start()
    plog.close()
    assert (tmp_path / "runs/serve/predictions.db").is_file()
    assert [r.request_id for r in read_predictions("sqlite:///runs/serve/predictions.db")] == ["req-00001"]


def test_bad_urls_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServeError) as info:
        PredictionLog("foo://x")
    assert str(info.value) == (
        "The prediction log URL 'foo://x' is not a database URL SQLAlchemy knows "
        "(Can't load plugin: sqlalchemy.dialects:foo). "
        "Expected sqlite:///path/to/predictions.db or postgresql+psycopg://user@host/db."
    )
    with pytest.raises(ServeError, match="is an in-memory SQLite database, which loses every prediction"):
        PredictionLog("sqlite://")

    with bound_port() as port:  # nothing listens there
        plog = PredictionLog(f"postgresql+psycopg://kiln:secret@127.0.0.1:{port}/x")
        with pytest.raises(ServeError) as info:
            plog.start()
    message = str(info.value)
    shown = f"postgresql+psycopg://kiln:***@127.0.0.1:{port}/x"  # the password is not printed
    assert message.startswith(f"Cannot reach the prediction log database {shown} (")
    assert message.endswith("check the URL, the credentials and that the database server is up.")

    with pytest.raises(ServeError, match="There is no prediction log at"):
        read_predictions(f"sqlite:///{tmp_path}/missing.db")
