"""Run the server: one process under uvicorn, or several uvicorn workers under gunicorn.

Both stop gracefully on SIGTERM: no new connections, requests in flight finish (up to
``shutdown_timeout_s``), then the app's lifespan drains the batchers and flushes the prediction log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from torchkiln.serve.settings import ServeSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run(settings: ServeSettings) -> None:
    """Serve until SIGTERM or Ctrl-C.

    Example:
        >>> run(load_settings(models=[{"uri": "runs/fashion/latest/bundle"}], port=8000))
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # One intra-op thread per model call by default: the event loop needs a core, and a second ONNX Runtime
    # thread spinning between calls cost a third of the throughput (docs/benchmarks.md). Set per process,
    # so it is here and not in create_app, which tests build inside the pytest process.
    torch.set_num_threads(settings.model_threads)
    if settings.workers == 1:
        import uvicorn

        from torchkiln.serve.app import create_app

        # uvicorn re-raises a caught SIGTERM/SIGINT after its graceful shutdown, which with the default
        # handlers kills the process (exit -15) or raises KeyboardInterrupt. A clean drain exits 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            http=head_deadline_protocol(settings.header_timeout_s),
            timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
            access_log=settings.access_log,
            log_level="info",
        )
        return
    _run_gunicorn(settings)


def _run_gunicorn(settings: ServeSettings) -> None:
    from gunicorn.app.base import BaseApplication

    from torchkiln.serve.workers import WorkerSync

    # This server's own folder: the workers' prometheus files, their shared model state (a reload reaches
    # every worker through it), and gunicorn's control socket, which would otherwise be one path per user
    # (~/.gunicorn/gunicorn.ctl) that a second server on the host takes over.
    folder = Path(tempfile.mkdtemp(prefix="kiln-serve-"))
    # Each worker process keeps its own counters; prometheus-client's multiprocess mode merges them. It
    # must be switched on before prometheus_client is first imported, hence the imports inside functions.
    (folder / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    sync_dir = folder / "sync"
    WorkerSync(sync_dir, settings.workers)  # makes the folder before any worker starts

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
        WorkerSync(sync_dir, settings.workers).forget(worker.pid)

    class KilnGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{settings.host}]:{settings.port}"
                if ":" in settings.host
                else f"{settings.host}:{settings.port}",
                "workers": settings.workers,
                "worker_class": _worker_class(settings.header_timeout_s),
                "graceful_timeout": int(settings.shutdown_timeout_s),
                "timeout": max(60, int(settings.request_timeout_s * 3)),
                "accesslog": "-" if settings.access_log else None,
                "child_exit": child_exit,
                "control_socket": str(folder / "gunicorn.ctl"),
            }
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from torchkiln.serve.app import create_app

            torch.set_num_threads(settings.model_threads)  # in the worker, after the fork
            # In each worker, after the fork: no model state is shared, only the folder that syncs reloads.
            return create_app(settings, WorkerSync(sync_dir, settings.workers))

    try:
        KilnGunicorn().run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def head_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose request head is not whole ``timeout_s`` after
    the connection opened or the head's first byte came.

    uvicorn has no such timeout of its own: a connection that sends nothing, or half a request line,
    would stay open for ever (and a few thousand of them exhaust the file descriptors). Between requests
    on a kept-alive connection, uvicorn's own keep-alive timeout applies; the body has ``body_timeout_s``
    in the app's middleware.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeadDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._waiting_for_head():
                self._arm()  # from the first byte of a head, not the last
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                logging.getLogger("torchkiln.serve").info(
                    "Closed a connection whose request head did not arrive within %g s", timeout_s
                )
                self.transport.close()

    return HeadDeadline


def _worker_class(header_timeout_s: float) -> type:
    from uvicorn_worker import UvicornWorker

    class KilnWorker(UvicornWorker):  # type: ignore[misc]
        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            **UvicornWorker.CONFIG_KWARGS,
            "http": head_deadline_protocol(header_timeout_s),
        }

    return KilnWorker
