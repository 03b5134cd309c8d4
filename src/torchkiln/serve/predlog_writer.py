"""The prediction log's writer process: JSON lines in from the server, rows out to the database.

``PredictionLog.start()`` runs ``python -m torchkiln.serve.predlog_writer DATA_FD STATUS_FD`` (through
:class:`WriterProcess`, the server's handle on it) so that the inserts' Python (SQLAlchemy, the driver,
JSON) runs under this process's GIL, not the server's. It imports sqlalchemy and ``predlog_db``, never torch.

On DATA_FD: one JSON line of settings, then one JSON line per record (as ``PredictionLog.log`` wrote it),
and at close ``!stop SECONDS``, then end of file. On STATUS_FD: ``ready`` once started, then after each
batch ``WRITTEN REJECTED FAILED``: the rows inserted, the records refused, and 1 when the batch failed
because the database was unavailable. Records are done in order, so ``WRITTEN + REJECTED`` also says how
many of the oldest unconfirmed lines the server may forget.

When the database is unavailable the records stay here and the batch is retried with backoff. After
``!stop`` it tries until the deadline and exits; the server spools what it did not confirm. At end of file
without ``!stop`` the server is gone: it tries for ``_ORPHAN_S``, then spools what is left itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from torchkiln.core.errors import ServeError
from torchkiln.serve.predlog_db import (
    BACKOFF_S,
    TRANSIENT,
    append_spool,
    from_json,
    insert,
    insert_new,
    make_engine,
    reason,
)

logger = logging.getLogger("torchkiln.serve.predlog_writer")  # also when run as __main__
_ORPHAN_S = 10.0  # how long to keep trying once the server is gone, before spooling
_SRC = str(Path(__file__).resolve().parents[2])  # the folder holding this torchkiln: the writer runs it too
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class Writer:
    """Reads lines from ``data_fd``, inserts them in batches, and reports on ``status_fd``."""

    def __init__(self, data_fd: int, status_fd: int, settings: dict[str, Any]) -> None:
        self.data_fd, self.status_fd = data_fd, status_fd
        self.engine, _ = make_engine(settings["url"])
        self.batch_size: int = settings["batch_size"]
        self.spool = Path(settings["spool"])
        self.resent: int = settings["resent"]  # the first lines, which a dead writer may have inserted
        self.buffer: list[bytes] = []  # received lines, oldest first, not yet done
        self.partial = b""  # the start of a line whose end has not arrived
        self.failures, self.due = 0, 0.0  # due: when to retry after a failure
        self.stop_at, self.eof, self.stopped = float("inf"), False, False

    def run(self) -> None:
        self.report(b"ready")
        while not (self.eof and (not self.buffer or time.monotonic() >= self.stop_at)):
            self.receive(self.wait_s())
            if self.buffer and time.monotonic() >= self.due:
                self.write_all()
        if self.buffer and not self.stopped:  # the server is gone: nobody else can keep them
            append_spool(self.spool, self.buffer)
            logger.warning(
                "Prediction log writer: spooled %d predictions to %s", len(self.buffer), self.spool
            )
        self.engine.dispose()

    def wait_s(self) -> float | None:
        """How long to wait for more lines: until the next retry, or for ever when idle."""
        if not self.buffer:
            return None if not self.eof else 0.0
        return max(0.0, min(self.due, self.stop_at) - time.monotonic())

    def receive(self, timeout: float | None) -> None:
        if self.eof:
            time.sleep(timeout or 0.0)
            return
        if not select.select([self.data_fd], [], [], timeout)[0]:
            return
        chunk = _read_available(self.data_fd)  # lines, then b"" on the next call at end of file
        if chunk == b"":
            self.end_of_file()
            return
        *lines, self.partial = (self.partial + (chunk or b"")).split(b"\n")
        for line in lines:
            if line.startswith(b"!stop "):
                self.stopped, self.stop_at = True, time.monotonic() + float(line[6:])
            elif line:
                self.buffer.append(line)

    def end_of_file(self) -> None:
        self.eof = True
        if not self.stopped:
            self.stop_at = time.monotonic() + _ORPHAN_S
            logger.error("Prediction log writer: the server closed the pipe without stopping; finishing")
        if self.partial:
            logger.error(
                "Prediction log writer: dropped an incomplete last line (%d bytes)", len(self.partial)
            )
            self.partial = b""

    def write_all(self) -> None:
        while self.buffer:
            # A batch is either all resent lines (inserted only when not in the table) or all new ones.
            size = min(self.batch_size, self.resent) if self.resent else self.batch_size
            batch = self.buffer[:size]
            written, rejected = self.write(batch, dedupe=self.resent > 0)
            done = written + rejected
            del self.buffer[:done]
            self.resent = max(0, self.resent - done)
            failed = done < len(batch)
            self.report(f"{written} {rejected} {int(failed)}".encode())
            if failed:
                self.failures += 1
                self.due = time.monotonic() + min(BACKOFF_S[0] * 2 ** (self.failures - 1), BACKOFF_S[1])
                return
        self.failures, self.due = 0, 0.0

    def write(self, batch: list[bytes], *, dedupe: bool) -> tuple[int, int]:
        """Insert ``batch`` in one transaction: (written, rejected), a prefix if the database is down."""
        write_rows = insert_new if dedupe else insert
        try:
            write_rows(self.engine, [from_json(line) for line in batch])
            return len(batch), 0
        except TRANSIENT as exc:
            logger.warning("Prediction log: database unavailable, will retry (%s)", reason(exc))
            return 0, 0
        except Exception:  # a record the database refuses must not block the ones behind it
            return self.write_one_by_one(batch, write_rows)

    def write_one_by_one(self, batch: list[bytes], write_rows: Any) -> tuple[int, int]:
        written = rejected = 0
        for line in batch:
            try:
                write_rows(self.engine, [from_json(line)])
                written += 1
            except TRANSIENT:
                break
            except Exception:
                logger.exception("Prediction log: the database refused prediction %s", line[:80])
                rejected += 1
        return written, rejected

    def report(self, line: bytes) -> None:
        with contextlib.suppress(BrokenPipeError):  # the server is gone; keep writing rows
            os.write(self.status_fd, line + b"\n")


class WriterProcess:
    """The writer process, seen from the server: its pipes and what is waiting to go down the data pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], data_fd: int, status_fd: int) -> None:
        self.proc, self.data_fd, self.status_fd = proc, data_fd, status_fd
        self.outbox = bytearray()  # JSON lines not yet written into the pipe (it was full)
        self.stopping = self.exited = False
        self._status = b""  # an incomplete status line

    @classmethod
    def spawn(cls, config: dict[str, Any]) -> WriterProcess:
        # A fresh interpreter (fork + exec), safe in a process with threads; it imports sqlalchemy, not torch.
        data_r, data_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(AttributeError, OSError):  # more room: fewer wake-ups under load (Linux)
            fcntl.fcntl(data_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        path = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "torchkiln.serve.predlog_writer", str(data_r), str(status_w)]
        try:
            proc = subprocess.Popen(
                command,
                pass_fds=(data_r, status_w),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        except BaseException:
            os.close(data_w)
            os.close(status_r)
            raise
        finally:
            os.close(data_r)
            os.close(status_w)
        os.write(data_w, json.dumps(config).encode() + b"\n")  # the pipe is empty: this does not block
        os.set_blocking(data_w, False)
        os.set_blocking(status_r, False)
        return cls(proc, data_w, status_r)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the writer's "ready" line.

        Raises:
            ServeError: It exited or did not answer in time.
        """
        deadline = time.monotonic() + timeout_s
        while not self._status.startswith(b"ready\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.status_fd], [], [], left)[0]:
                self.stop(0)
                self.close()
                raise ServeError(
                    f"The prediction log's writer process did not report ready within {timeout_s:g} s. "
                    "Expected it to start in a few seconds; check the server log for its errors."
                )
            chunk = _read_available(self.status_fd)
            if chunk == b"":
                code = self.proc.wait()
                self.close()
                raise ServeError(
                    f"The prediction log's writer process exited with code {code} before it was ready. "
                    "Expected it to run until the server stops; its error is in the server log above."
                )
            self._status += chunk or b""
        self._status = self._status.removeprefix(b"ready\n")

    def send(self) -> None:
        """Write what fits of the outbox into the pipe, without blocking; after the stop line, close it."""
        if self.outbox and self.data_fd >= 0:
            try:
                sent = os.write(self.data_fd, self.outbox)
            except (BlockingIOError, BrokenPipeError):  # full, or it died (read_status() sees that)
                return
            del self.outbox[:sent]
        if self.stopping and not self.outbox and self.data_fd >= 0:
            os.close(self.data_fd)
            self.data_fd = -1

    def queue_stop(self, seconds: float) -> None:
        """Tell the writer, after the lines before it, to write what it has for up to ``seconds`` and exit."""
        self.outbox += f"!stop {max(0.0, seconds):.3f}\n".encode()
        self.stopping = True

    def read_status(self) -> tuple[int, int, int]:
        """The rows written, records rejected and batches failed that it reported since the last call."""
        if self.status_fd < 0:
            return 0, 0, 0
        chunk = _read_available(self.status_fd)
        if chunk == b"":
            self.exited = True
        self._status += chunk or b""
        *lines, self._status = self._status.split(b"\n")
        total = [0, 0, 0]
        for line in lines:
            if line == b"ready":  # a restarted writer's first line
                continue
            for i, n in enumerate(line.split()[:3]):
                total[i] += int(n)
        return total[0], total[1], total[2]

    def stop(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for it to exit after its stop line, then kill it."""
        if self.data_fd >= 0:  # the stop line is not through: it is stuck (the database stalls)
            self.proc.kill()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("Prediction log: the writer process %d did not stop in time; killed", self.proc.pid)
            self.proc.kill()
            self.proc.wait()

    def close(self) -> int:
        """Close the pipes, kill the process if it still runs; its exit code."""
        for fd in (self.data_fd, self.status_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.status_fd = -1
        self.exited = True
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def _read_available(fd: int) -> bytes | None:
    """What the pipe holds now; b"" at end of file (the other side exited), None when it holds nothing."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return b"".join(chunks) if chunks else None
        if not chunk:
            return b"".join(chunks) if chunks else b""
        chunks.append(chunk)


def main(argv: list[str]) -> int:
    # The server coordinates shutdown: a Ctrl-C or a SIGTERM sent to the whole process group must not kill
    # this process with records in hand. It stops at "!stop" or at end of file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    if len(argv) != 2 or not all(a.isdigit() for a in argv):
        print(
            f"predlog_writer takes two file descriptors (data, status); got {argv}. It is started by "
            "PredictionLog.start(), not by hand.",
            file=sys.stderr,
        )
        return 2
    data_fd, status_fd = int(argv[0]), int(argv[1])
    settings = json.loads(_read_line(data_fd))
    os.set_blocking(data_fd, False)
    Writer(data_fd, status_fd, settings).run()
    return 0


def _read_line(fd: int) -> bytes:
    """The first line, a byte at a time: what follows it is records, for the writer to read."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
