"""The durable prediction log of ``kiln serve``: one row per answered (or shadowed) prediction.

``log()`` only puts the record on an in-memory queue, so the event loop never waits on the database. A
daemon thread inserts the records in batches, one transaction each. When the database is down it keeps
them and retries with backoff; what is still unwritten at ``close()`` goes to a JSON-lines spool file,
which the next ``start()`` replays (skipping rows already there) before anything else is written.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import logging
import operator
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import URL

from torchkiln.errors import ServeError
from torchkiln.io import fsync_dir

logger = logging.getLogger(__name__)

# Errors that mean "the database is unavailable right now": keep the records and retry. Any other error
# means the database refuses the records themselves, which retrying cannot fix.
_TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError)
_BACKOFF_S = (0.05, 5.0)  # first and longest wait between retries
_BUSY_TIMEOUT_MS = 5000
_REPLAY_CHUNK = 500
_CREATE_ATTEMPTS = 5
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


@dataclass(frozen=True)
class LogStats:
    """Counters for Prometheus. ``logged == written + pending + spooled + rejected``."""

    logged: int  # records handed to log() by this process
    written: int  # of those, rows inserted
    pending: int  # in memory, not yet written
    failed_batches: int  # write attempts that failed because the database was unavailable
    spooled: int  # records written to the spool file at close
    replayed: int = 0  # records read back from the spool at start (not part of `logged`)
    rejected: int = 0  # records the database refused (e.g. outputs not JSON-ready); logged as errors


class _UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware column that always hands back UTC-aware datetimes (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc(value)


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
)
_FIELDS = [c.name for c in predictions.columns if c.name != "id"]
_WAKE, _STOP = object(), object()  # queue sentinels: "write now" and "write now, then stop"


class PredictionLog:
    """Batched, non-blocking, durable writer of :class:`PredictionRecord` rows.

    Example:
        >>> plog = PredictionLog("sqlite:///runs/serve/predictions.db")
        >>> plog.start(); plog.log(record); plog.close()
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        spool_path: str | Path | None = None,
    ) -> None:
        if batch_size < 1 or not flush_interval_s > 0:
            raise ServeError(
                "The prediction log needs batch_size >= 1 and flush_interval_s > 0. "
                f"Got batch_size={batch_size} and flush_interval_s={flush_interval_s}."
            )
        self._engine, self._url = _engine(url)
        self._batch_size, self._flush_interval = batch_size, flush_interval_s
        self._spool = Path(spool_path) if spool_path is not None else _default_spool(self._url)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The writer sleeps a flush interval at a time and is woken early only for a full batch, a flush
        # or a stop. Waking it per record would cost a thread switch and a GIL hand-off per request.
        self._signal = threading.Event()
        self._buffer: list[PredictionRecord] = []  # taken off the queue, not yet written
        self._lock = threading.Lock()  # guards the counters, the buffer and the closed flags; held briefly
        self._done = threading.Condition(self._lock)
        self._logged = self._written = self._failed = self._spooled = self._replayed = self._rejected = 0
        self._closed = self._abandoned = self._stop_seen = False
        self._stop_at = float("inf")
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Create the table if missing, replay the spool file, and start the writer thread.

        Raises:
            ServeError: The database cannot be reached, or the log was closed already.
        """
        if self._closed:
            raise ServeError("This prediction log was closed. Create a new PredictionLog to log again.")
        if self._thread is not None:
            return
        try:
            if self._url.get_backend_name() == "sqlite":
                Path(self._url.database or "").parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    metadata.create_all(self._engine)
                    break
                except sa.exc.DBAPIError:  # e.g. another worker creating the table at the same moment
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.05 * 2**attempt)
        except (*_TRANSIENT, OSError) as exc:
            raise ServeError(
                f"Cannot reach the prediction log database {_shown(self._url)} ({_reason(exc)}). "
                "Expected a running database that accepts connections; check the URL, the credentials "
                "and that the database server is up."
            ) from exc
        try:
            self._replay_spool()
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise ServeError(
                f"Cannot replay the prediction spool file {self._spool} into {_shown(self._url)} "
                f"({_reason(exc)}). Expected a reachable database that accepts these rows; fix the "
                "database, or move the spool file aside to start without it."
            ) from exc
        self._thread = threading.Thread(target=self._run, name="kiln-predlog", daemon=True)
        self._thread.start()

    def log(self, record: PredictionRecord) -> None:
        """Queue ``record`` for writing; never waits on the database (safe on the event loop).

        Raises:
            ServeError: The log was closed: stop taking requests before closing it.
        """
        with self._lock:
            if self._closed:
                raise ServeError(
                    f"Prediction {record.request_id} came after the prediction log was closed. "
                    "Expected close() only once the server takes no more requests."
                )
            self._queue.put(record)
            self._logged += 1
        if self._queue.qsize() >= self._batch_size:
            self._signal.set()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record logged so far is written.

        Returns:
            True when they are all in the database, False on timeout or when the writer is not running.
        """
        with self._lock:
            target = self._logged
            running = self._thread is not None and not self._closed
        if running:
            self._queue.put(_WAKE)
            self._signal.set()
        with self._done:  # records are written in order, so a count is enough
            written = lambda: self._written + self._rejected >= target  # noqa: E731
            return self._done.wait_for(written, timeout_s if running else 0)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending, stop the writer, and spool what the database did not take. Idempotent.

        Raises:
            ServeError: Records could be written neither to the database nor to the spool file.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True  # log() now refuses, so the queue only shrinks from here
        if self._thread is not None:
            self._stop_at = time.monotonic() + timeout_s * 0.8  # leave time to spool after the last retry
            self._queue.put(_STOP)
            self._signal.set()
            self._thread.join(timeout_s)
        with self._lock:
            self._abandoned = True  # a writer still stuck in the database must not count its batch
            rest = self._buffer + [r for r in _drain(self._queue) if r is not _WAKE and r is not _STOP]
            self._buffer = []
        if rest:
            try:
                self._append_spool(rest)
            except OSError as exc:
                raise ServeError(
                    f"{len(rest)} predictions could not be written to the database nor to the spool file "
                    f"{self._spool} ({exc}). Expected a writable folder; set spool_path to one."
                ) from exc
            with self._lock:
                self._spooled += len(rest)
            logger.warning("Spooled %d unwritten predictions to %s", len(rest), self._spool)
        self._engine.dispose()

    @property
    def stats(self) -> LogStats:
        """A snapshot of the counters."""
        with self._lock:
            pending = self._logged - self._written - self._spooled - self._rejected
            counts = (self._logged, self._written, pending, self._failed, self._spooled, self._replayed)
            return LogStats(*counts, rejected=self._rejected)

    # The writer thread.

    def _run(self) -> None:
        failures, due = 0, float("inf")  # due: when to retry the buffered records after a failure
        while True:
            now = time.monotonic()
            until = due if self._buffer else now + self._flush_interval
            self._collect(max(0.0, min(until, self._stop_at) - now))
            now = time.monotonic()
            if self._buffer and failures == 0:
                due = now  # what was collected has waited up to one flush interval: write it
            if self._buffer and now >= due:
                while self._buffer and self._write_batch():
                    pass
                if self._buffer:
                    failures += 1
                    due = now + min(_BACKOFF_S[0] * 2 ** (failures - 1), _BACKOFF_S[1])
            if not self._buffer:
                failures, due = 0, float("inf")
            if self._stop_seen and (not self._buffer or time.monotonic() >= self._stop_at):
                return

    def _collect(self, timeout: float) -> None:
        """Sleep up to ``timeout`` (less when signalled), then move the queued records into the buffer."""
        self._signal.wait(timeout)
        self._signal.clear()
        items = _drain(self._queue)
        records = [r for r in items if r is not _WAKE and r is not _STOP]
        self._stop_seen |= any(r is _STOP for r in items)  # all records logged before close() are in
        with self._lock:
            self._buffer += records

    def _write_batch(self) -> bool:
        """Insert the first batch of the buffer; False when the database is unavailable."""
        batch, rejected = self._buffer[: self._batch_size], []
        try:
            _insert(self._engine, batch)
            done = len(batch)
        except _TRANSIENT as exc:
            logger.warning("Prediction log: database unavailable, will retry (%s)", _reason(exc))
            done = 0
        except Exception:  # a record the database refuses must not block the ones behind it
            done, rejected = self._insert_one_by_one(batch)
        with self._lock:
            if self._abandoned:
                return False
            del self._buffer[:done]
            self._written += done - len(rejected)
            self._rejected += len(rejected)
            self._failed += done < len(batch)
            self._done.notify_all()
        return done == len(batch)

    def _insert_one_by_one(self, batch: list[PredictionRecord]) -> tuple[int, list[PredictionRecord]]:
        rejected = []
        for i, record in enumerate(batch):
            try:
                _insert(self._engine, [record])
            except _TRANSIENT:
                return i, rejected
            except Exception:
                logger.exception("Prediction log: the database refused prediction %s", record.request_id)
                rejected.append(record)
        return len(batch), rejected

    # The spool file.

    def _append_spool(self, records: list[PredictionRecord]) -> None:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        with _spool_lock(self._spool), open(self._spool, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:  # a crash mid-append may have left half a line: never glue a record to it
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write("".join(_to_json(r) + "\n" for r in records).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self._spool.parent)

    def _replay_spool(self) -> None:
        if not self._spool.exists():
            return
        with _spool_lock(self._spool):
            if not self._spool.exists():  # another worker replayed it while we waited for the lock
                return
            records, unreadable = [], ""
            for line in self._spool.read_text("utf-8", errors="replace").splitlines(keepends=True):
                try:
                    records.append(_from_json(line))
                except (ValueError, TypeError, KeyError, AttributeError):
                    unreadable += line if line.strip() else ""
            for i in range(0, len(records), _REPLAY_CHUNK):
                _insert_new(self._engine, records[i : i + _REPLAY_CHUNK])
            if unreadable:  # e.g. half a line from a crash: keep it for a human, out of the way
                with open(f"{self._spool}.unreadable", "a", encoding="utf-8") as fh:
                    fh.write(unreadable)
                logger.error("Prediction log: unreadable lines of %s kept in *.unreadable", self._spool)
            self._spool.unlink()
            fsync_dir(self._spool.parent)
        with self._lock:
            self._replayed += len(records)
        logger.info("Prediction log: replayed %d predictions from %s", len(records), self._spool)


def read_predictions(
    url: str, *, model: str | None = None, limit: int | None = None, since: datetime | None = None
) -> list[PredictionRecord]:
    """Read logged predictions, oldest first.

    Args:
        url: The database URL the server logs to.
        model: Only this model's predictions.
        limit: Only the most recent ``limit`` predictions (still returned oldest first).
        since: Only predictions at or after this time.

    Returns:
        The records, with UTC-aware times.

    Raises:
        ServeError: The URL is invalid, the database unreachable, or it holds no prediction log.
    """
    engine, parsed = _engine(url)
    try:
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise ServeError(
                f"There is no prediction log at {parsed.database}. Expected the database file `kiln serve` "
                "writes; check the path, or serve some predictions first."
            )
        query = sa.select(predictions).order_by(predictions.c.time.desc(), predictions.c.id.desc())
        if model is not None:
            query = query.where(predictions.c.model == model)
        if since is not None:
            query = query.where(predictions.c.time >= _utc(since))
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
    except sa.exc.DBAPIError as exc:  # unreachable, or no 'predictions' table
        raise ServeError(
            f"Cannot read the prediction log {_shown(parsed)} ({_reason(exc)}). Expected a reachable "
            "database written by `kiln serve`; check the URL and that the server is up."
        ) from exc
    finally:
        engine.dispose()
    return [PredictionRecord(**{k: row[k] for k in _FIELDS}) for row in reversed(rows)]


def _engine(url: str) -> tuple[sa.Engine, URL]:
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
            f"The prediction log URL '{_shown(parsed)}' is not a database URL SQLAlchemy knows ({exc}). "
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


def _insert(engine: sa.Engine, records: list[PredictionRecord]) -> None:
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
        row = list(_VALUES(record))
        for i, process in processors:
            row[i] = process(row[i])
        rows.append(tuple(row))
    conn.exec_driver_sql(sql, rows)


@functools.cache
def _insert_plan(dialect: sa.Dialect) -> tuple[str, list[tuple[int, Any]]]:
    """The positional INSERT for ``dialect`` and the columns' bind processors, as (position, function)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"  # sqlite3: qmark; psycopg: format/pyformat
    sql = f"INSERT INTO predictions ({', '.join(_FIELDS)}) VALUES ({', '.join([mark] * len(_FIELDS))})"
    processors = [predictions.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _FIELDS]
    return sql, [(i, f) for i, f in enumerate(processors) if f is not None]


_VALUES = operator.attrgetter(*_FIELDS)  # a record's column values, in _FIELDS order


def _insert_new(engine: sa.Engine, records: list[PredictionRecord]) -> None:
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
    return (r.request_id, r.model, r.arm, bool(r.shadow), _utc(r.time))


def _to_json(record: PredictionRecord) -> str:
    data = asdict(record)
    data["time"] = _utc(record.time).isoformat()
    data["payload"] = None if record.payload is None else base64.b64encode(record.payload).decode("ascii")
    return json.dumps(data, separators=(",", ":"), default=repr)  # repr: better a string than a lost record


def _from_json(line: str) -> PredictionRecord:
    data = json.loads(line)
    data["time"] = _utc(datetime.fromisoformat(data["time"]))
    data["payload"] = None if data["payload"] is None else base64.b64decode(data["payload"])
    return PredictionRecord(**data)


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


@contextmanager
def _spool_lock(spool: Path) -> Iterator[None]:
    # A separate lock file that is never deleted: server workers sharing a spool take turns appending and
    # replaying, and nobody appends to a spool file another worker has just removed.
    with open(spool.with_name(spool.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _default_spool(url: URL) -> Path:
    if url.get_backend_name() == "sqlite":
        return Path(f"{url.database}.spool.jsonl")
    return Path("runs/serve/predictions.spool.jsonl")


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
