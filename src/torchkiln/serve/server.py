"""Run the server: one process under uvicorn, or several uvicorn workers under gunicorn.

Both stop gracefully on SIGTERM: no new connections, requests in flight finish (up to
``shutdown_timeout_s``), then the app's lifespan drains the batchers and flushes the prediction log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from typing import Any

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
            timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
            access_log=settings.access_log,
            log_level="info",
        )
        return
    _run_gunicorn(settings)


def _run_gunicorn(settings: ServeSettings) -> None:
    from gunicorn.app.base import BaseApplication

    # Each worker process keeps its own counters; prometheus-client's multiprocess mode merges them. It
    # must be switched on before prometheus_client is first imported, hence the imports inside functions.
    metrics_dir = tempfile.mkdtemp(prefix="kiln-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    class KilnGunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{settings.host}]:{settings.port}"
                if ":" in settings.host
                else f"{settings.host}:{settings.port}",
                "workers": settings.workers,
                "worker_class": "uvicorn_worker.UvicornWorker",
                "graceful_timeout": int(settings.shutdown_timeout_s),
                "timeout": max(60, int(settings.request_timeout_s * 3)),
                "accesslog": "-" if settings.access_log else None,
                "child_exit": _mark_dead,
            }
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from torchkiln.serve.app import create_app

            torch.set_num_threads(settings.model_threads)  # in the worker, after the fork
            return create_app(settings)  # in each worker, after the fork: no model state is shared

    try:
        KilnGunicorn().run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
