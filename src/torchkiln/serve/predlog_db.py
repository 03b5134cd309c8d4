"""The prediction log's tables (predictions, feedback) and the code both of its processes share: the record,
the database engine, the inserts, and the JSON-lines codec of the pipe and the spool file.

The server (``predlog``) creates the tables, replays the spool file and reads; the writer process
(``predlog_writer``) inserts. Nothing here imports torch: the writer process stays light.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import operator
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import URL

from torchkiln.core.errors import ServeError
from torchkiln.core.io import fsync_dir

# Errors that mean "the database is unavailable right now": keep the records and retry. Any other error
# means the database refuses the records themselves, which retrying cannot fix.
TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError)
BACKOFF_S = (0.05, 5.0)  # first and longest wait between retries
_BUSY_TIMEOUT_MS = 5000
_URL_HINT = "Expected sqlite:///path/to/predictions.db or postgresql+psycopg://user@host/db."


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction as the server answered it (or mirrored it to the shadow arm)."""

    request_id: str
    time: datetime  # timezone-aware UTC (a naive time is taken as UTC)
    model: str
    version: str
    arm: str  # "champion" | "challenger": the arm that answered, or the shadowed arm
    shadow: bool  # True for a mirrored request whose answer was not returned
    latency_ms: float
    route: str
    items: int
    outputs: list[dict[str, Any]]  # JSON-ready, one per input
    input_summary: list[dict[str, Any]]  # JSON-ready, one per input
    payload: bytes | None = None  # only when sampled
    payload_type: str | None = None
    # JSON-ready, one per input: the live drift signals (serve/live_signals.py); None without a reference.
    signals: list[dict[str, Any]] | None = None


class _UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware column that always hands back UTC-aware datetimes (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else utc(value)


metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String, nullable=False, index=True),
    sa.Column("time", _UTCDateTime, nullable=False, index=True),
    sa.Column("model", sa.String, nullable=False, index=True),
    sa.Column("version", sa.String, nullable=False),
    sa.Column("arm", sa.String, nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("route", sa.String, nullable=False),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("input_summary", sa.JSON, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.Column("payload_type", sa.String, nullable=True),
    # Added after the first release: migrate() adds it to an older log (null in its old rows).
    sa.Column("signals", sa.JSON, nullable=True),
    # The first input's top-1 label and score, copied out of ``outputs`` at insert so that a filter on them
    # (the dashboard's class and confidence filters) uses an index instead of parsing JSON row by row.
    # Null when the answer has none (a forecast). migrate() adds them to an older log and fills them in.
    sa.Column("top_label", sa.String, nullable=True, index=True),
    sa.Column("top_score", sa.Float, nullable=True, index=True),
)
DERIVED = ("top_label", "top_score")  # computed from a record's outputs; not fields of PredictionRecord
FIELDS = [c.name for c in predictions.columns if c.name not in ("id", *DERIVED)]
ADDED_COLUMNS = ("signals", *DERIVED)  # predictions columns an older log may lack; migrate() adds them
# One row per labelled input (``POST /v1/feedback``). It holds what the answering arm predicted, so live
# accuracy needs no join; a shadow arm's answer to the same input is joined from ``predictions`` when read.
# ``create_all`` adds it to a log written before it existed: the table is new, the others are unchanged.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String, nullable=False),
    sa.Column("item", sa.Integer, nullable=False),  # the input's index in the request
    sa.Column("model", sa.String, nullable=False, index=True),
    sa.Column("version", sa.String, nullable=False),  # of the arm that answered
    sa.Column("arm", sa.String, nullable=False),
    sa.Column("predicted", sa.String, nullable=True),  # the answer's top-1 label
    sa.Column("label", sa.String, nullable=False),  # the true label
    sa.Column("predicted_at", _UTCDateTime, nullable=False, index=True),  # the prediction's time
    sa.Column("time", _UTCDateTime, nullable=False),  # when the label arrived
    sa.UniqueConstraint("request_id", "item", name="uq_feedback_input"),  # one label per input
)


def migrate(engine: sa.Engine) -> list[str]:
    """Add the :data:`ADDED_COLUMNS` an existing ``predictions`` table lacks (its rows get null there).

    ``create_all`` creates missing tables but never changes an existing one, so a log written by an older
    server needs this ``ALTER TABLE`` (SQLite and PostgreSQL alike). Two workers starting at once may
    both try: the loser's ALTER fails, and its caller's retry finds the column there.

    Returns:
        The columns added.
    """
    missing = [name for name in ADDED_COLUMNS if name not in present_columns(engine)]
    if missing:
        with engine.begin() as conn:
            for name in missing:
                column = predictions.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
            if set(DERIVED) & set(missing):  # once, when the columns arrive: the old rows' values
                p = predictions.c
                conn.execute(
                    predictions.update().values(
                        top_label=p.outputs[(0, "label")].as_string(),
                        top_score=p.outputs[(0, "score")].as_float(),
                    )
                )
            for index in predictions.indexes:
                if any(c.name in missing for c in index.columns):
                    index.create(conn, checkfirst=True)
    return missing


def present_columns(engine: sa.Engine) -> set[str]:
    """The columns the database's ``predictions`` table has now (empty when there is no table)."""
    inspector = sa.inspect(engine)
    if not inspector.has_table("predictions"):
        return set()
    return {c["name"] for c in inspector.get_columns("predictions")}


def open_existing(url: str, *, check: str = "the path") -> tuple[sa.Engine, URL]:
    """:func:`make_engine` for a reader: a SQLite log must already exist (``check`` says where its URL
    came from, e.g. ``--log-url``), so a typo is not read as an empty log.

    Raises:
        ServeError: the URL is invalid, or names a SQLite file that does not exist.
    """
    engine, parsed = make_engine(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        engine.dispose()
        raise ServeError(
            f"There is no prediction log at {parsed.database}. Expected the database file `kiln serve` "
            f"writes; check {check}, or serve some predictions first."
        )
    return engine, parsed


def make_engine(url: str) -> tuple[sa.Engine, URL]:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ServeError(f"The prediction log URL '{url}' cannot be parsed ({exc}). {_URL_HINT}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ServeError(
            f"The prediction log URL '{url}' is an in-memory SQLite database, which loses every prediction "
            f"when the server stops. {_URL_HINT}"
        )
    try:
        # pydantic-core's JSON encoder is ~10x faster than json.dumps; NaN/inf become null, which every
        # database accepts.
        options: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": _json_column}
        if backend == "postgresql":
            options["connect_args"] = {"connect_timeout": 5}
        engine = sa.create_engine(parsed, **options)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ServeError(
            f"The prediction log URL '{shown(parsed)}' is not a database URL SQLAlchemy knows ({exc}). "
            f"{_URL_HINT}"
        ) from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine, parsed


def _json_column(value: Any) -> str:
    return pydantic_core.to_json(value, inf_nan_mode="null").decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the monitor and dashboard read while the server writes; NORMAL is durable enough in WAL.
    cursor = dbapi_conn.cursor()
    for pragma in (f"busy_timeout={_BUSY_TIMEOUT_MS}", "journal_mode=WAL", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def insert(engine: sa.Engine, records: list[PredictionRecord]) -> None:
    """Insert ``records`` in one transaction: one DBAPI ``executemany`` of plain tuples.

    The writer thread shares the GIL with the event loop. SQLAlchemy's ``execute(insert, dicts)`` spends
    ~25 us of Python per row building and processing parameters; converting each row with the columns'
    own bind processors (the same conversions) and handing tuples to the driver takes a fraction of it.
    """
    with engine.begin() as conn:
        _insert_rows(conn, records)


def _insert_rows(conn: sa.Connection, records: list[PredictionRecord]) -> None:
    sql, processors = _insert_plan(conn.dialect)
    rows = []
    for record in records:
        row = [*_VALUES(record), *top_of(record.outputs)]
        for i, process in processors:
            row[i] = process(row[i])
        rows.append(tuple(row))
    conn.exec_driver_sql(sql, rows)


@functools.cache
def _insert_plan(dialect: sa.Dialect) -> tuple[str, list[tuple[int, Any]]]:
    """The positional INSERT for ``dialect`` and the columns' bind processors, as (position, function)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"  # sqlite3: qmark; psycopg: format/pyformat
    names = [*FIELDS, *DERIVED]
    sql = f"INSERT INTO predictions ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"
    processors = [predictions.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
    return sql, [(i, f) for i, f in enumerate(processors) if f is not None]


_VALUES = operator.attrgetter(*FIELDS)  # a record's column values, in FIELDS order


def top_of(outputs: Any) -> tuple[str | None, float | None]:
    """The first answer's top-1 label and score, as the ``top_label``/``top_score`` columns hold them."""
    first = outputs[0] if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict) else {}
    label, score = first.get("label"), first.get("score")
    return (
        None if label is None else str(label),
        float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
    )


def insert_new(engine: sa.Engine, records: list[PredictionRecord]) -> None:
    """Insert the records not yet in the table, so a replay interrupted after its insert is harmless."""
    c = predictions.c
    with engine.begin() as conn:
        ids = list({r.request_id for r in records})
        query = sa.select(c.request_id, c.model, c.arm, c.shadow, c.time).where(c.request_id.in_(ids))
        seen = {_key(row) for row in conn.execute(query)}
        fresh = [r for r in records if _key(r) not in seen]
        if fresh:
            _insert_rows(conn, fresh)


def _key(r: Any) -> tuple[Any, ...]:
    """What tells two logged predictions apart (a record or a row)."""
    return (r.request_id, r.model, r.arm, bool(r.shadow), utc(r.time))


def from_json(line: str | bytes) -> PredictionRecord:
    """A record from its JSON line: as ``log()`` writes it, or as older spool files hold it."""
    data = json.loads(line)
    data["time"] = utc(datetime.fromisoformat(data["time"]))
    # pydantic-core writes URL-safe base64, older spool files the standard alphabet: this reads both.
    data["payload"] = None if data["payload"] is None else base64.urlsafe_b64decode(data["payload"])
    return PredictionRecord(**data)


def append_spool(spool: Path, lines: list[bytes]) -> None:
    """Append JSON lines to the spool file, durably; several processes may share it."""
    spool.parent.mkdir(parents=True, exist_ok=True)
    with spool_lock(spool), open(spool, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:  # a crash mid-append may have left half a line: never glue a record to it
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(b"".join(line + b"\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(spool.parent)


@contextmanager
def spool_lock(spool: Path) -> Iterator[None]:
    # A separate lock file that is never deleted: server workers sharing a spool take turns appending and
    # replaying, and nobody appends to a spool file another worker has just removed.
    with open(spool.with_name(spool.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def default_spool(url: URL) -> Path:
    if url.get_backend_name() == "sqlite":
        return Path(f"{url.database}.spool.jsonl")
    return Path("runs/serve/predictions.spool.jsonl")


def shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip()


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
