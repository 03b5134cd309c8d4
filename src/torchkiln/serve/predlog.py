"""The durable prediction log of ``kiln serve``: one row per answered (or shadowed) prediction.

The rows are inserted by a writer process of its own (``predlog_writer``), so that SQLAlchemy's and the
driver's Python does not take the server's GIL from the event loop and the model thread. ``log()`` turns
the record into one JSON line and keeps it in memory; a feeder thread, awake once per flush interval (or
per full batch), hands the new lines down a pipe and reads back what the writer confirmed. The server keeps
every line until it is confirmed: a writer that dies is replaced and gets them again (the first ones only
inserted when not in the table yet). When the database is down the writer keeps the records and retries
with backoff; what is still unconfirmed at ``close()`` goes to a JSON-lines spool file, which the next
``start()`` replays (skipping rows already there) before anything else is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydantic_core
import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.core.io import fsync_dir
from torchkiln.serve.predlog_db import (
    BACKOFF_S,
    FIELDS,
    TRANSIENT,
    PredictionRecord,
    append_spool,
    default_spool,
    from_json,
    insert_new,
    make_engine,
    metadata,
    migrate,
    open_existing,
    predictions,
    present_columns,
    reason,
    shown,
    spool_lock,
    utc,
)
from torchkiln.serve.predlog_writer import WriterProcess

__all__ = ["LogStats", "PredictionLog", "PredictionRecord", "read_predictions"]

logger = logging.getLogger(__name__)

_REPLAY_CHUNK = 500
_CREATE_ATTEMPTS = 5
_READY_TIMEOUT_S = 30.0  # for the writer process to start (imports included)


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


class PredictionLog:
    """Batched, non-blocking, durable writer of :class:`PredictionRecord` rows, in a process of its own.

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
        self._engine, self._url = make_engine(url)
        self._batch_size, self._flush_interval = batch_size, flush_interval_s
        self._spool = Path(spool_path) if spool_path is not None else default_spool(self._url)
        self._fresh: list[bytes] = []  # JSON lines logged, not yet handed to the writer process
        self._unacked: deque[bytes] = deque()  # handed to the writer, not yet confirmed written or rejected
        self._lock = threading.Lock()  # guards the lines, the counters and the closed flag; held briefly
        self._done = threading.Condition(self._lock)
        self._logged = self._written = self._failed = self._spooled = self._replayed = self._rejected = 0
        self._closed = False
        self._stop_at = float("inf")
        self._wake_r = self._wake_w = -1  # a self-pipe that wakes the feeder thread early
        self._child: WriterProcess | None = None
        self._thread: threading.Thread | None = None

    @property
    def writer_pid(self) -> int | None:
        """The process id of the writer process, or None when it does not run."""
        child = self._child
        return child.proc.pid if child is not None and child.proc.poll() is None else None

    def start(self) -> None:
        """Create the table if missing, replay the spool file, and start the writer process.

        Raises:
            ServeError: The database cannot be reached, the writer process cannot start, or the log was
                closed already.
        """
        if self._closed:
            raise ServeError("This prediction log was closed. Create a new PredictionLog to log again.")
        if self._thread is not None:
            return
        self._create_table()
        try:
            self._replay_spool()
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise ServeError(
                f"Cannot replay the prediction spool file {self._spool} into {shown(self._url)} "
                f"({reason(exc)}). Expected a reachable database that accepts these rows; fix the "
                "database, or move the spool file aside to start without it."
            ) from exc
        self._engine.dispose()  # the writer process has its own connections
        child = self._spawn(resent=0)
        child.wait_ready(_READY_TIMEOUT_S)
        self._child = child
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="kiln-predlog-feeder", daemon=True)
        self._thread.start()

    def log(self, record: PredictionRecord) -> None:
        """Hand ``record`` to the writer; never waits on the database (safe on the event loop).

        The record becomes one JSON line here (a few microseconds); a record that cannot be written as JSON
        is counted as rejected and logged as an error, as the database would refuse it.

        Raises:
            ServeError: The log was closed: stop taking requests before closing it.
        """
        try:
            # The instance dict holds the fields in order; pydantic-core writes a dict ~30 % faster than it
            # writes the dataclass, same JSON.
            line = pydantic_core.to_json(vars(record), bytes_mode="base64", inf_nan_mode="null")
        except pydantic_core.PydanticSerializationError as exc:
            line, error = b"", exc
        with self._lock:
            if self._closed:
                raise ServeError(
                    f"Prediction {record.request_id} came after the prediction log was closed. "
                    "Expected close() only once the server takes no more requests."
                )
            self._logged += 1
            if not line:
                self._rejected += 1
            else:
                self._fresh.append(line)
            waiting = len(self._fresh)
        if not line:
            logger.error(
                "Prediction log: prediction %s cannot be written as JSON (%s); it is counted as rejected. "
                "Expected JSON-ready outputs and input summaries.",
                record.request_id,
                error,
            )
        elif waiting % self._batch_size == 0:
            self._wake()

    def pending(self, request_id: str) -> list[PredictionRecord]:
        """The records of ``request_id`` logged by this process and not yet confirmed written.

        With :meth:`flush`'s ordering (a record leaves memory only once its row is committed), looking here
        first and then in the database finds every prediction this process logged.
        """
        prefix = b'{"request_id":' + pydantic_core.to_json(request_id) + b","  # log() writes it first
        with self._lock:
            lines = [line for line in (*self._unacked, *self._fresh) if line.startswith(prefix)]
        return [from_json(line) for line in lines]

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record logged so far is written.

        Returns:
            True when they are all in the database, False on timeout or when the writer is not running.
        """
        with self._lock:
            target = self._logged
            running = self._thread is not None and not self._closed
        if running:
            self._wake()
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
            self._closed = True  # log() now refuses, so the lines only shrink from here
        start = time.monotonic()
        if self._thread is not None:
            self._stop_at = start + timeout_s * 0.8  # leave time to spool after the last retry
            self._wake()
            self._thread.join(timeout_s * 0.9)
            if not self._thread.is_alive():
                with self._lock:
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
        if self._child is not None:  # normally it has exited by now; if not, it is killed
            self._child.stop(max(0.0, start + timeout_s * 0.9 - time.monotonic()))
            self._apply(self._child.read_status())  # what it confirmed before it exited
            self._child.close()
        with self._lock:
            rest = [*self._unacked, *self._fresh]
            self._unacked.clear()
            self._fresh = []
        if rest:
            try:
                append_spool(self._spool, rest)
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

    # The feeder thread: hands the lines to the writer process and reads back what it wrote. It sleeps in
    # select() a flush interval at a time, so it holds this process's GIL only for a join and a write.

    def _run(self) -> None:
        try:
            self._feed()
        except Exception:  # a bug here must not go unseen: the lines stay in memory, and close() spools them
            logger.exception("Prediction log: the feeder thread failed; predictions are spooled at close")

    def _feed(self) -> None:
        restarts = 0
        while True:
            child, closing = self._child, self._stop_at < float("inf")
            if child is None or child.exited:
                if closing:
                    return  # close() spools what was not confirmed
                self._sleep(min(BACKOFF_S[0] * 2**restarts, BACKOFF_S[1]))
                restarts += 1
                self._restart(child)
                continue
            wait_to_send = [child.data_fd] if child.outbox and child.data_fd >= 0 else []
            readable, _, _ = select.select([self._wake_r, child.status_fd], wait_to_send, [], self._timeout())
            if self._wake_r in readable:
                _drain_pipe(self._wake_r)
            if self._apply(child.read_status()):
                restarts = 0
            if not child.exited:
                self._hand_over(child, closing=closing)
            if closing and time.monotonic() >= self._stop_at:
                return

    def _timeout(self) -> float:
        return max(0.0, min(self._flush_interval, self._stop_at - time.monotonic()))

    def _sleep(self, seconds: float) -> None:
        """Sleep, woken early by close()."""
        select.select([self._wake_r], [], [], max(0.0, min(seconds, self._stop_at - time.monotonic())))

    def _hand_over(self, child: WriterProcess, *, closing: bool) -> None:
        with self._lock:
            fresh, self._fresh = self._fresh, []
            self._unacked.extend(fresh)
        if fresh:
            child.outbox += b"\n".join(fresh) + b"\n"
        if closing and not child.stopping:  # log() refuses by now: these were the last lines
            child.queue_stop(self._stop_at - time.monotonic())
        child.send()

    def _apply(self, confirmed: tuple[int, int, int]) -> bool:
        """Count what the writer confirmed and forget those lines; True when it confirmed any."""
        written, rejected, failed = confirmed
        with self._lock:
            for _ in range(written + rejected):
                self._unacked.popleft()
            self._written += written
            self._rejected += rejected
            self._failed += failed
            if written or rejected:
                self._done.notify_all()
        return written + rejected > 0

    def _restart(self, dead: WriterProcess | None) -> None:
        """Start a new writer process and hand it every line the dead one did not confirm."""
        if dead is not None:
            code = dead.close()
            pid = dead.proc.pid
            logger.error("Prediction log: writer process %d exited with code %s; starting another", pid, code)
        with self._lock:
            resent = list(self._unacked)
        try:
            child = self._spawn(resent=len(resent))
        except (OSError, ServeError) as exc:
            logger.error("Prediction log: cannot start a new writer process (%s); retrying", exc)
            self._child = None
            return
        child.outbox += b"".join(line + b"\n" for line in resent)
        self._child = child
        logger.warning(
            "Prediction log: writer process %d started, %d predictions resent", child.proc.pid, len(resent)
        )

    def _spawn(self, *, resent: int) -> WriterProcess:
        config = {
            "url": self._url.render_as_string(hide_password=False),
            "batch_size": self._batch_size,
            "spool": str(self._spool),
            "resent": resent,  # these first lines may be in the table already: skip those
        }
        return WriterProcess.spawn(config)

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # full: the feeder has wake-ups waiting
            if self._wake_w >= 0:  # under the lock: close() cannot close it (and the number be reused) now
                os.write(self._wake_w, b"\0")

    # The table and the spool file (the writer process only inserts).

    def _create_table(self) -> None:
        try:
            if self._url.get_backend_name() == "sqlite":
                Path(self._url.database or "").parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    metadata.create_all(self._engine)
                    added = migrate(self._engine)
                    break
                except sa.exc.DBAPIError:  # e.g. another worker creating the table at the same moment
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.05 * 2**attempt)
            if added:
                logger.info("Prediction log: added column(s) %s to %s", ", ".join(added), shown(self._url))
        except (*TRANSIENT, OSError) as exc:
            raise ServeError(
                f"Cannot reach the prediction log database {shown(self._url)} ({reason(exc)}). "
                "Expected a running database that accepts connections; check the URL, the credentials "
                "and that the database server is up."
            ) from exc

    def _replay_spool(self) -> None:
        if not self._spool.exists():
            return
        with spool_lock(self._spool):
            if not self._spool.exists():  # another worker replayed it while we waited for the lock
                return
            records, unreadable = [], ""
            for line in self._spool.read_text("utf-8", errors="replace").splitlines(keepends=True):
                try:
                    records.append(from_json(line))
                except (ValueError, TypeError, KeyError, AttributeError):
                    unreadable += line if line.strip() else ""
            for i in range(0, len(records), _REPLAY_CHUNK):
                insert_new(self._engine, records[i : i + _REPLAY_CHUNK])
            if unreadable:  # e.g. half a line from a crash: keep it for a human, out of the way
                with open(f"{self._spool}.unreadable", "a", encoding="utf-8") as fh:
                    fh.write(unreadable)
                logger.error("Prediction log: unreadable lines of %s kept in *.unreadable", self._spool)
            self._spool.unlink()
            fsync_dir(self._spool.parent)
        with self._lock:
            self._replayed += len(records)
        logger.info("Prediction log: replayed %d predictions from %s", len(records), self._spool)


def _drain_pipe(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


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
    engine, parsed = open_existing(url)
    try:
        # A log written before a column was added (and not served since) lacks it: read it as null.
        present = present_columns(engine) or set(FIELDS)
        query = sa.select(*(c for c in predictions.columns if c.name in present or c.name == "id"))
        query = query.order_by(predictions.c.time.desc(), predictions.c.id.desc())
        if model is not None:
            query = query.where(predictions.c.model == model)
        if since is not None:
            query = query.where(predictions.c.time >= utc(since))
        if limit is not None:
            query = query.limit(limit)
        with engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
    except sa.exc.DBAPIError as exc:  # unreachable, or no 'predictions' table
        raise ServeError(
            f"Cannot read the prediction log {shown(parsed)} ({reason(exc)}). Expected a reachable "
            "database written by `kiln serve`; check the URL and that the server is up."
        ) from exc
    finally:
        engine.dispose()
    return [PredictionRecord(**{k: row[k] for k in FIELDS if k in row}) for row in reversed(rows)]
